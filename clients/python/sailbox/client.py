"""The connection to sailboxd: HTTP/1.1 and JSON over its Unix socket."""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
from typing import Any, BinaryIO, Mapping, Sequence
from urllib.parse import quote, urlencode

from .errors import DaemonUnreachable, ProtocolError, error_from_answer

__all__ = ["Client", "default_socket", "SOCKET_ENV"]

#: The environment variable that overrides the default socket path.
SOCKET_ENV = "SAILBOX_SOCKET"

# The largest error body read from the daemon.
_MAX_ERROR_BODY = 1 << 20


def default_socket() -> str:
    """Where sailboxd listens unless told otherwise (as api.DefaultSocket).

    ``$SAILBOX_SOCKET`` if set; for root ``/run/sailbox/sailboxd.sock``; for
    others ``$XDG_RUNTIME_DIR/sailbox/sailboxd.sock``, or without it
    ``$TMPDIR/sailbox-UID/sailboxd.sock``.
    """
    if p := os.environ.get(SOCKET_ENV):
        return p
    uid = os.geteuid()
    if uid == 0:
        return "/run/sailbox/sailboxd.sock"
    if d := os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(d, "sailbox", "sailboxd.sock")
    return os.path.join(tempfile.gettempdir(), f"sailbox-{uid}", "sailboxd.sock")


class _UnixConnection(http.client.HTTPConnection):
    """An HTTPConnection to a Unix socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("sailboxd", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Answer:
    """An open answer whose status was the one expected; close it when done."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, what: str) -> None:
        self._conn = conn
        self.response = resp
        self.what = what

    def read(self) -> bytes:
        """Reads the whole body; a body cut short raises ProtocolError."""
        try:
            return self.response.read()
        except (http.client.IncompleteRead, OSError, http.client.HTTPException) as e:
            raise ProtocolError(f"{self.what}: the answer was cut short: {e}") from e

    def readline(self, limit: int) -> bytes:
        """Reads one line of the body (b"" at its end)."""
        try:
            return self.response.readline(limit)
        except (http.client.IncompleteRead, OSError, http.client.HTTPException) as e:
            raise ProtocolError(f"{self.what}: the answer was cut short: {e}") from e

    def close(self) -> None:
        self.response.close()
        self._conn.close()

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Query = Mapping[str, str | int] | Sequence[tuple[str, str | int]]


class Client:
    """A connection to one sailboxd, on its Unix socket.

    Each call opens its own connection, so a Client may be shared between
    threads.

    Args:
        socket_path: the daemon's socket; None means :func:`default_socket`.
        timeout: seconds a socket operation may block (None: no limit;
            creating, forking or waking a box can take a while).
    """

    def __init__(self, socket_path: str | None = None, *, timeout: float | None = None) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client({self.socket_path!r})"

    def open(
        self,
        method: str,
        path: str,
        *,
        expect: int,
        query: Query | None = None,
        json_body: Any = None,
        body: bytes | BinaryIO | None = None,
        content_type: str | None = None,
    ) -> Answer:
        """Sends a request and returns its answer if its status is expect.

        Otherwise raises the typed error of the daemon's answer. json_body,
        if not None, is sent as JSON; else body, if not None, as is (a
        file-like body is streamed in chunks).
        """
        url = path
        if query:
            url += "?" + urlencode(query)
        what = f"{method} {path}"
        headers = {"Host": "sailboxd"}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            try:
                conn.request(method, url, body=body, headers=headers, encode_chunked=chunked)
                resp = conn.getresponse()
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise DaemonUnreachable(
                    f"no sailboxd answers on {self.socket_path} ({e.strerror}): start one, "
                    f"or name its socket with ${SOCKET_ENV} or Client(socket_path=...)"
                ) from e
            except PermissionError as e:
                raise DaemonUnreachable(
                    f"sailboxd's socket {self.socket_path}: {e.strerror}: it is its owner's only, "
                    "unless the daemon runs with -socket-group and you are in that group"
                ) from e
            except (OSError, http.client.HTTPException) as e:
                raise ProtocolError(f"{what}: {e}") from e
            if resp.status != expect:
                try:
                    data = resp.read(_MAX_ERROR_BODY)
                except (OSError, http.client.HTTPException):
                    data = b""
                raise error_from_answer(resp.status, data, what)
        except BaseException:
            conn.close()
            raise
        return Answer(conn, resp, what)

    def call(
        self,
        method: str,
        path: str,
        *,
        expect: int = 200,
        query: Query | None = None,
        json_body: Any = None,
    ) -> Any:
        """Sends a JSON call and returns its decoded JSON answer (None if empty)."""
        with self.open(method, path, expect=expect, query=query, json_body=json_body) as ans:
            data = ans.read()
            if not data.strip():
                return None
            try:
                return json.loads(data)
            except ValueError as e:
                raise ProtocolError(f"{ans.what}: the answer is not JSON: {e}") from e


def box_path(box_id: str, *rest: str) -> str:
    """The API path of box_id (escaped), with rest appended."""
    return "/v1/boxes/" + quote(box_id, safe="") + "".join("/" + r for r in rest)
