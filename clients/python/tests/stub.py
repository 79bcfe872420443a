"""A stub sailboxd on a Unix socket, for the client's unit tests.

Tests register answers per (method, path) and read back the requests the
client made. An answer is a Reply, or a function of the Request that
returns one (or that writes the answer itself, for exec streams).
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes = b""
    content_type: str = "application/json"


def error(status: int, code: str, message: str) -> Reply:
    """The daemon's error answer."""
    return Reply(status, {"error": message, "code": code, "status": status})


Handler = Callable[[Request, "StreamWriter"], Reply | None]


class StreamWriter:
    """Writes a chunked answer piece by piece (as the daemon streams exec)."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._h = handler
        self.started = False

    def start(self, status: int = 200, content_type: str = "application/x-ndjson") -> None:
        self._h.send_response(status)
        self._h.send_header("Content-Type", content_type)
        self._h.send_header("Transfer-Encoding", "chunked")
        self._h.end_headers()
        self.started = True

    def chunk(self, data: bytes) -> None:
        self._h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self._h.wfile.flush()

    def event(self, ev: dict[str, Any]) -> None:
        self.chunk(json.dumps(ev).encode() + b"\n")

    def end(self) -> None:
        self._h.wfile.write(b"0\r\n\r\n")
        self._h.wfile.flush()

    def cut(self) -> None:
        """Drops the connection without ending the answer."""
        self._h.close_connection = True
        self._h.wfile.flush()
        self._h.connection.shutdown(2)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up early (a closed exec stream) is part of
        # the tests; anything else is printed.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@dataclass
class StubDaemon:
    socket_path: str
    routes: dict[tuple[str, str], Reply | Handler] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def on(self, method: str, path: str, reply: Reply | Handler) -> None:
        self.routes[(method, path)] = reply

    def last(self) -> Request:
        return self.requests[-1]


def start() -> tuple[StubDaemon, Callable[[], None]]:
    """Starts a stub; returns it and the function that stops it."""
    d = tempfile.mkdtemp(prefix="sbxpy")
    stub = StubDaemon(os.path.join(d, "d.sock"))
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            u = urlsplit(self.path)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            req = Request(self.command, u.path, parse_qs(u.query), dict(self.headers), body)
            with lock:
                stub.requests.append(req)
            route = stub.routes.get((self.command, u.path))
            if route is None:
                reply: Reply | None = error(404, "not_found", f"no such endpoint: {self.command} {u.path}")
            elif callable(route):
                w = StreamWriter(self)
                reply = route(req, w)
                if w.started:
                    self.close_connection = True
                    return
            else:
                reply = route
            assert reply is not None
            data = json.dumps(reply.json).encode() + b"\n" if reply.json is not None else reply.body
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read_chunked(self) -> bytes:
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    srv = _Server(stub.socket_path, H)
    t = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    t.start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()
        os.unlink(stub.socket_path)
        os.rmdir(d)

    return stub, stop
