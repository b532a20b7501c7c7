"""Static HTTP server for the measuring page.

One ThreadingHTTPServer per process on 127.0.0.1 (ephemeral port), running in a daemon thread.
Requests are served from a mount table (URL prefix -> directory). Every response carries the
cross-origin-isolation headers ORT's threaded wasm needs (SharedArrayBuffer), and nothing outside
a mount root is ever served: paths are normalised, ``..`` segments are refused and the resolved
real path (symlinks followed) must stay under the mount's real root.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Explicit types: the system mimetypes table may not know .wasm/.mjs, and a wrong type breaks
# WebAssembly.instantiateStreaming and module scripts.
CONTENT_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".bin": "application/octet-stream",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
}

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in CONTENT_TYPES:
        return CONTENT_TYPES[ext]
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/octet-stream"


class _Handler(BaseHTTPRequestHandler):
    server: "StaticServer._Http"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep test/pipeline output quiet
        pass

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _error(self, status: HTTPStatus):
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        for k, v in self.server.owner.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, send_body: bool):
        resolved = self.server.owner.resolve(self.path)
        if not isinstance(resolved, HTTPStatus):
            self.server.owner.served(self.path, resolved)
        if isinstance(resolved, HTTPStatus):
            self._error(resolved)
            return
        try:
            f = open(resolved, "rb")
        except OSError:
            self._error(HTTPStatus.NOT_FOUND)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            for k, v in self.server.owner.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", content_type(resolved))
            self.send_header("Content-Length", str(size))
            # Measurements must see real downloads every time: no HTTP cache reuse between runs.
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if send_body:
                try:
                    while chunk := f.read(1 << 20):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # page closed mid-download (timeout / crash): nothing to do


class StaticServer:
    """Mount-table static server. Thread-safe mount/unmount."""

    class _Http(ThreadingHTTPServer):
        daemon_threads = True
        owner: "StaticServer"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, isolated: bool = True):
        # Cross-origin isolation (COOP/COEP) by default: wasm threads need it. Off: a page as most sites serve it.
        self.headers = dict(ISOLATION_HEADERS) if isolated else {}
        self._mounts: dict[str, str] = {}
        self._recording: dict[str, str] | None = None
        self._lock = threading.Lock()
        self._httpd = self._Http((host, port), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="browser-validate-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mount(self, prefix: str, root: str | os.PathLike) -> None:
        """Serve directory `root` under URL prefix `prefix` (e.g. "/page/")."""
        if not (prefix.startswith("/") and prefix.endswith("/")):
            raise ValueError(f"mount prefix must look like /name/: {prefix!r}")
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise FileNotFoundError(f"mount root is not a directory: {root}")
        with self._lock:
            self._mounts[prefix] = real

    @contextlib.contextmanager
    def recording(self):
        """Collect {URL path: file} of every file served during the block: what a page actually loaded (the
        runtime's JS and wasm included), so that exactly those files can be shipped with what was measured."""
        with self._lock:
            self._recording = {}
            rec = self._recording
        try:
            yield rec
        finally:
            with self._lock:
                self._recording = None

    def served(self, raw_path: str, file: str) -> None:
        with self._lock:
            if self._recording is not None:
                self._recording[urllib.parse.urlsplit(raw_path).path] = file

    def unmount(self, prefix: str) -> None:
        with self._lock:
            self._mounts.pop(prefix, None)

    def resolve(self, raw_path: str) -> str | HTTPStatus:
        """Map a request path to a file path inside a mount, or an HTTP error status."""
        path = urllib.parse.urlsplit(raw_path).path
        path = urllib.parse.unquote(path)
        if "\x00" in path or "\\" in path:
            return HTTPStatus.BAD_REQUEST
        with self._lock:
            mounts = sorted(self._mounts.items(), key=lambda kv: -len(kv[0]))
        for prefix, root in mounts:
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            parts = [p for p in rel.split("/") if p not in ("", ".")]
            if any(p == ".." for p in parts):
                return HTTPStatus.FORBIDDEN
            if not parts:
                return HTTPStatus.NOT_FOUND  # no directory listings
            candidate = os.path.realpath(os.path.join(root, *parts))
            # Symlinks are followed by realpath: the target must still live under the root.
            if os.path.commonpath([candidate, root]) != root:
                return HTTPStatus.FORBIDDEN
            if not os.path.isfile(candidate):
                return HTTPStatus.NOT_FOUND
            return candidate
        return HTTPStatus.NOT_FOUND

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


_server: StaticServer | None = None
_server_pid: int | None = None
_server_lock = threading.Lock()


def get_server() -> StaticServer:
    """The process-wide server (started on first use; restarted in a forked child)."""
    global _server, _server_pid
    with _server_lock:
        if _server is None or _server_pid != os.getpid():
            _server = StaticServer()
            _server_pid = os.getpid()
        return _server


