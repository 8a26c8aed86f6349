"""HTTP for the console: on the metrics endpoint, or on a port of its own (HTTPS optional).

:func:`answer` turns one ``http.server`` request into a console
:class:`~triage_node.web.app.Request` and writes the response back; the ops
endpoint (:mod:`triage_node.node.http`) calls it for every path that is not
``/metrics``, ``/healthz`` or ``/readyz``. :class:`ConsoleServer` is the
console's own listener when ``[web] port`` is set, wrapped in TLS when
``[web] certificate`` is.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from triage_node.config import WebSection
from triage_node.web.app import Console, Request

log = logging.getLogger(__name__)

#: Seconds a client may take to send its request before its connection is closed.
REQUEST_TIMEOUT_SECONDS = 30.0
#: The largest request body the console reads (its forms are a few hundred bytes).
MAX_BODY = 64 * 1024


class HTTPServer(ThreadingHTTPServer):
    """A threaded server whose routine client failures cost a DEBUG line, not a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or went silent is routine; anything else is an error."""
        # socketserver calls this from inside the except block of the failed request.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug(
                "HTTP client went away: %s",
                type(exc).__name__,
                extra={"client": client_address[0] if client_address else ""},
            )
            return
        log.error("HTTP request failed", exc_info=exc)


def answer(handler: BaseHTTPRequestHandler, console: Console, *, tls: bool = False) -> None:
    """Read the request ``handler`` holds, let the console answer, write the answer."""
    length = int(handler.headers.get("Content-Length") or 0)
    if length > MAX_BODY:
        handler.send_error(413)
        return
    body = handler.rfile.read(length) if length > 0 else b""
    request = Request.from_target(
        handler.command, handler.path, dict(handler.headers.items()), body, tls
    )
    response = console.handle(request)
    handler.send_response(response.status)
    handler.send_header("Content-Type", response.content_type)
    handler.send_header("Content-Length", str(len(response.body)))
    for key, value in response.headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(response.body)


class ThreadedServer:
    """An ``HTTPServer`` served from a daemon thread: ``start`` returns at once, ``stop`` closes.

    The node's ops endpoint (metrics, health) and the console's own port both run so.
    """

    httpd: HTTPServer
    _thread: threading.Thread

    def _serve_in(self, httpd: HTTPServer, thread_name: str) -> None:
        self.httpd = httpd
        self.port = int(httpd.server_address[1])
        self._thread = threading.Thread(target=httpd.serve_forever, name=thread_name, daemon=True)

    def start(self) -> Self:
        """Serve in the background; returns at once."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


class ConsoleServer(ThreadedServer):
    """The console on ``[web] host:port`` in a daemon thread (HTTPS with a certificate)."""

    def __init__(self, web: WebSection, console: Console) -> None:
        tls = web.tls

        class Handler(BaseHTTPRequestHandler):
            server_version = "triage-node"
            timeout = REQUEST_TIMEOUT_SECONDS

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                answer(self, console, tls=tls)

            do_HEAD = do_POST = do_GET  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # the console logs what matters (logins, resends) itself

        assert web.port is not None
        httpd = HTTPServer((web.host, web.port), Handler)
        if web.certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(
                str(web.certificate), str(web.private_key) if web.private_key else None
            )
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.host = web.host
        self.scheme = "https" if tls else "http"
        self._serve_in(httpd, "console-http")
