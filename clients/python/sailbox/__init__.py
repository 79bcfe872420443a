"""Python client of sailboxd, the Sailbox daemon.

Standard library only. It speaks HTTP/JSON to the daemon's Unix socket
(``$SAILBOX_SOCKET``, or the daemon's default path)::

    from sailbox import Sailbox

    with Sailbox.create(labels={"job": "demo"}, ttl=3600) as box:
        print(box.exec(["python3", "-c", "print(6 * 7)"]).stdout_text)
        box.checkpoint()
        children = box.fork(count=3)
        box.sleep()                      # the next exec wakes it
        box.files.write("/tmp/x", "hello")

Errors are typed (:class:`NotFound`, :class:`InvalidTransition`, ...) and
carry the daemon's message.
"""

from .box import Files, Sailbox
from .client import SOCKET_ENV, Client, default_socket
from .errors import (
    BadRequest,
    CapacityExceeded,
    CommandFailed,
    Conflict,
    DaemonUnreachable,
    InternalError,
    InvalidTransition,
    NotFound,
    ProtocolError,
    SailboxError,
    TooLarge,
    Unavailable,
    Unsupported,
    WrongHost,
)
from .execstream import ExecStream
from .models import (
    BoxInfo,
    Checkpoint,
    ExecExit,
    ExecOutput,
    ExecResult,
    NetworkDeviceStats,
    NetworkPolicy,
    NetworkStats,
    Port,
    State,
    TerminateResult,
)

__all__ = [
    "Sailbox",
    "Files",
    "Client",
    "default_socket",
    "SOCKET_ENV",
    "ExecStream",
    "BoxInfo",
    "Checkpoint",
    "ExecExit",
    "ExecOutput",
    "ExecResult",
    "NetworkDeviceStats",
    "NetworkPolicy",
    "NetworkStats",
    "Port",
    "State",
    "TerminateResult",
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
