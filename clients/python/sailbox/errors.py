"""Typed errors of the Sailbox client.

Every error the daemon answers (an ``ErrorBody``: ``{"error", "code",
"status"}``) becomes an instance of the class its ``code`` names, or, for a
code this client does not know, the class its HTTP status names. Each
carries the daemon's message, the status and the code::

    try:
        box.resume()
    except sailbox.InvalidTransition as e:
        print(e.message, e.status, e.code)
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "SailboxError",
    "BadRequest",
    "NotFound",
    "Conflict",
    "InvalidTransition",
    "WrongHost",
    "TooLarge",
    "CapacityExceeded",
    "Unsupported",
    "Unavailable",
    "InternalError",
    "DaemonUnreachable",
    "ProtocolError",
    "CommandFailed",
]


class SailboxError(Exception):
    """An error from the daemon or from talking to it.

    Attributes:
        message: the daemon's message (or the client's, for errors that
            did not come from the daemon).
        status: the HTTP status the daemon answered; 0 if none.
        code: the daemon's machine-readable kind (``"not_found"``, ...);
            ``""`` if none.
    """

    #: The error code this class stands for, if any.
    default_code: str = ""

    def __init__(self, message: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} ({self.status} {self.code})"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, code={self.code!r})"


class BadRequest(SailboxError):
    """400: the daemon could not accept the request (a malformed field, a bad rule)."""

    default_code = "bad_request"


class NotFound(SailboxError):
    """404: no such box (or port, or checkpoint, or guest file)."""

    default_code = "not_found"


class Conflict(SailboxError):
    """409: the call conflicts with another box, a port, or the box's state."""

    default_code = "conflict"


class InvalidTransition(Conflict):
    """409: the box's state does not allow the call (resuming a running box, ...)."""

    default_code = "invalid_transition"


class WrongHost(SailboxError):
    """421: the box lives on another host; ask that host's daemon."""

    default_code = "wrong_host"


class TooLarge(SailboxError):
    """413: the request body is larger than the daemon takes."""

    default_code = "too_large"


class CapacityExceeded(SailboxError):
    """507: the host is at a configured limit."""

    default_code = "capacity"


class Unsupported(SailboxError):
    """501: the daemon's backend cannot do this (yet)."""

    default_code = "unsupported"


class Unavailable(SailboxError):
    """502/503: something the daemon depends on could not be reached."""

    default_code = "unavailable"


class InternalError(SailboxError):
    """500: a failure of the daemon or of the box's VM."""

    default_code = "internal"


class DaemonUnreachable(SailboxError, ConnectionError):
    """No daemon answered on the socket (it is not running, or the path is wrong)."""


class ProtocolError(SailboxError):
    """The daemon's answer was cut short or could not be understood."""


class CommandFailed(SailboxError):
    """An exec with ``check=True`` whose process did not exit with 0.

    Attributes:
        result: the :class:`sailbox.ExecResult` of the process.
    """

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


_BY_CODE: dict[str, type[SailboxError]] = {
    cls.default_code: cls
    for cls in (
        BadRequest,
        NotFound,
        Conflict,
        InvalidTransition,
        WrongHost,
        TooLarge,
        CapacityExceeded,
        Unsupported,
        Unavailable,
        InternalError,
    )
}

_BY_STATUS: dict[int, type[SailboxError]] = {
    400: BadRequest,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    421: WrongHost,
    500: InternalError,
    501: Unsupported,
    502: Unavailable,
    503: Unavailable,
    507: CapacityExceeded,
}


def error_for(status: int, code: str, message: str) -> SailboxError:
    """Returns the typed error for a daemon's error answer."""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or SailboxError
    return cls(message, status=status, code=code)


def error_from_answer(status: int, body: bytes, what: str) -> SailboxError:
    """Returns the typed error for an answer of status with body.

    A body that is not an ErrorBody (a proxy's page, an empty answer) keeps
    its text in the message, prefixed by what (the call).
    """
    try:
        eb = json.loads(body)
    except ValueError:
        eb = None
    if isinstance(eb, dict) and isinstance(eb.get("error"), str) and eb["error"]:
        code = eb.get("code")
        return error_for(status, code if isinstance(code, str) else "", eb["error"])
    text = body.decode("utf-8", "replace").strip()
    return error_for(status, "", f"{what}: {text or 'no error body'}")
