"""An exec's answer as it streams: JSON lines of api.ExecEvent.

Each line carries base64 ``stdout`` or ``stderr`` bytes, or, last,
``exit`` (the process ended) or ``error`` (the exchange failed after the
stream began). A stream that ends without either was cut.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Iterator

from .client import Answer
from .errors import ProtocolError, error_for
from .models import ExecExit, ExecOutput

__all__ = ["ExecStream"]

# The longest event line taken (the daemon's client takes 4 MiB).
_MAX_EVENT_LINE = 4 << 20


class ExecStream(Iterator[ExecOutput]):
    """The output of a running exec, piece by piece as the process writes it.

    Iterate it for :class:`ExecOutput` values; once it is exhausted,
    :attr:`exit` says how the process ended. An error the daemon reports
    mid-stream is raised from the iteration as its typed error. Use it as
    a context manager (or call :meth:`close`) to drop the connection early::

        with box.exec_stream(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"]) as s:
            for out in s:
                print(out.stream, out.data)
        print(s.exit.exit_code)
    """

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._done = False
        #: How the process ended; None until the stream is exhausted.
        self.exit: ExecExit | None = None

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> ExecOutput:
        while not self._done:
            line = self._answer.readline(_MAX_EVENT_LINE + 1)
            if not line:
                self._finish()
                raise ProtocolError(f"{self._answer.what}: the stream ended without an exit")
            if len(line) > _MAX_EVENT_LINE:
                self._finish()
                raise ProtocolError(f"{self._answer.what}: an event line is longer than {_MAX_EVENT_LINE} bytes")
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
                if ev.get("exit") is not None:
                    self.exit = ExecExit.from_json(ev["exit"])
                    self._finish()
                    break
                if ev.get("error") is not None:
                    err = ev["error"]
                    self._finish()
                    raise error_for(int(err.get("status") or 500), err.get("code") or "", err.get("error") or "exec failed")
                for stream in ("stdout", "stderr"):
                    if ev.get(stream):
                        return ExecOutput(stream, base64.b64decode(ev[stream], validate=True))
            except (ValueError, AttributeError, TypeError, binascii.Error) as e:
                self._finish()
                raise ProtocolError(f"{self._answer.what}: bad event {line[:200]!r}: {e}") from e
        raise StopIteration

    def wait(self) -> ExecExit:
        """Reads (and drops) the rest of the output and returns how the process ended."""
        for _ in self:
            pass
        assert self.exit is not None
        return self.exit

    def _finish(self) -> None:
        self._done = True
        self._answer.close()

    def close(self) -> None:
        """Drops the connection before the stream ends."""
        if not self._done:
            self._finish()

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
