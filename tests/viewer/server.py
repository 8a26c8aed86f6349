"""A same-origin web server for the OHIF viewer test (stdlib only).

It serves the OHIF build (tests/viewer/ohif.py) with the single-page-app fallback
(any path that is not a file is ``index.html``, as OHIF's own ``_redirects`` asks),
replaces the build's ``/app-config.js`` with ``tests/viewer/app-config.js``, and
proxies ``/dicom-web/...`` to Orthanc's DICOMweb plugin, so the browser talks to
one origin only. The Host header is passed through, so the URLs Orthanc writes
into its answers (bulk data) point back at this server.
"""

from __future__ import annotations

import http.client
import mimetypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

APP_CONFIG = Path(__file__).resolve().parent / "app-config.js"
PROXIED = "/dicom-web"
TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".html": "text/html; charset=utf-8",
}
# Request headers not passed on to Orthanc (hop-by-hop, or the browser's caching).
DROPPED = {"connection", "keep-alive", "accept-encoding", "if-none-match", "if-modified-since"}


class ViewerServer:
    """``dist`` (the OHIF build) and a proxy to Orthanc's HTTP port, on 127.0.0.1."""

    def __init__(self, dist: Path, orthanc_port: int, port: int = 0) -> None:
        self.dist = dist.resolve()
        self.orthanc_port = orthanc_port
        self.failures: list[str] = []  # proxied requests Orthanc answered >= 400
        handler = type("Handler", (_Handler,), {"viewer": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ViewerServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@contextmanager
def viewer_server(dist: Path, orthanc_port: int) -> Iterator[ViewerServer]:
    server = ViewerServer(dist, orthanc_port).start()
    try:
        yield server
    finally:
        server.stop()


class _Handler(BaseHTTPRequestHandler):
    viewer: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # quiet: the test reports what failed

    def end_headers(self) -> None:
        # Cross-origin isolation, as OHIF's deployment docs ask (SharedArrayBuffer).
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def do_POST(self) -> None:
        if self._proxied():
            self._proxy()
        else:
            self.send_error(405)

    def _proxied(self) -> bool:
        path = urlsplit(self.path).path
        return path == PROXIED or path.startswith(PROXIED + "/")

    def _dispatch(self, body: bool) -> None:
        if self._proxied():
            self._proxy()
            return
        path = unquote(urlsplit(self.path).path)
        if path == "/app-config.js":
            self._file(APP_CONFIG, body)
            return
        candidate = (self.viewer.dist / path.lstrip("/")).resolve()
        inside = candidate.is_relative_to(self.viewer.dist)
        if inside and candidate.is_file():
            self._file(candidate, body)
        elif inside and "." in Path(path).name:
            self.send_error(404)  # a missing asset is an error, not the app's page
        else:
            self._file(self.viewer.dist / "index.html", body)  # the SPA's routes

    def _file(self, path: Path, body: bool) -> None:
        data = path.read_bytes()
        kind = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        self.send_response(200)
        self.send_header("Content-Type", kind or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
        upstream = http.client.HTTPConnection("127.0.0.1", self.viewer.orthanc_port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=payload, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        except OSError as exc:
            self.viewer.failures.append(f"{self.command} {self.path}: {exc}")
            self.send_error(502, f"Orthanc on 127.0.0.1:{self.viewer.orthanc_port}: {exc}")
            return
        finally:
            upstream.close()
        if answer.status >= 400:
            self.viewer.failures.append(f"{self.command} {self.path}: HTTP {answer.status}")
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in (
                "connection",
                "keep-alive",
                "transfer-encoding",
                "content-length",
            ):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
