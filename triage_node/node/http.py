"""The operations HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` on one loopback port.

Every other path goes to the web console when it is served here (``[web]``
enabled without a port of its own; :mod:`triage_node.web`).

``/metrics`` is the Prometheus text format (OpenMetrics when asked for).
``/healthz`` answers 200 while the process's threads run (liveness: restart me
when not). ``/readyz`` answers 200 when the node can take and process images
(database, spool, disk, model; see :mod:`triage_node.node.health`), else 503;
both bodies are JSON and name the node that answers (see
:func:`triage_node.node.health.node_identity`). Nothing here reads or writes
patient data.

A client that hangs up before its answer is written (``status`` giving up, a
probe with a short timeout) costs one DEBUG line, not an ERROR with a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from triage_node.web.app import Console
from triage_node.web.server import HTTPServer, ThreadedServer, answer

log = logging.getLogger(__name__)

#: Seconds a client may take to send its request before its connection is closed.
REQUEST_TIMEOUT_SECONDS = 30.0


class OpsServer(ThreadedServer):
    """A small threaded HTTP server for the three endpoints, in a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Callable[[], dict[str, Any]],
        readiness: Callable[[], dict[str, Any]],
        console: Console | None = None,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "triage-node"
            timeout = REQUEST_TIMEOUT_SECONDS

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                        self._send(200, encoder(registry), content_type)
                    elif path == "/healthz":
                        server._send_json(self, liveness())
                    elif path == "/readyz":
                        server._send_json(self, readiness())
                    elif console is not None:
                        answer(self, console)
                    else:
                        self._send(
                            404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain"
                        )
                except ConnectionError:  # the client hung up before its answer was written
                    log.debug("ops endpoint client hung up", extra={"path": path})
                    self.close_connection = True
                except Exception:
                    log.exception("ops endpoint failed", extra={"path": path})
                    with contextlib.suppress(OSError):
                        self._send(500, b"internal error\n", "text/plain")

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                if console is None:
                    self._send(405, b"method not allowed\n", "text/plain")
                    return
                try:
                    answer(self, console)
                except ConnectionError:
                    self.close_connection = True

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # one line per scrape would drown the node's own log

        self.host = host
        self._serve_in(HTTPServer((host, port), Handler), "ops-http")

    @staticmethod
    def _send_json(handler: Any, doc: dict[str, Any]) -> None:
        ok = bool(doc.get("ready", doc.get("alive", True)))
        handler._send(200 if ok else 503, (json.dumps(doc) + "\n").encode(), "application/json")
