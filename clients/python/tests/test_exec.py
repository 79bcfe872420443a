"""exec and exec_stream: the JSON-lines stream of api.ExecEvent."""

from __future__ import annotations

import base64
import threading

import pytest

import sailbox
from sailbox import Sailbox
from stub import Reply, StubDaemon, error
from test_box import running


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


def stream(*events: dict, end: bool = True):  # type: ignore[no-untyped-def]
    def h(req, w):  # type: ignore[no-untyped-def]
        w.start()
        for ev in events:
            w.event(ev)
        if end:
            w.end()
        else:
            w.cut()

    return h


def test_exec_collects_output_and_exit(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on(
        "POST",
        "/v1/boxes/b1/exec",
        stream({"stdout": b64(b"hel")}, {"stderr": b64(b"warn\n")}, {"stdout": b64(b"lo\n")}, {"exit": {"exit_code": 3}}),
    )
    res = box.exec(["sh", "-c", "x"], env={"A": "1", "B": "x=y"}, cwd="/srv", user="nobody", timeout=2.5)
    assert res == sailbox.ExecResult(b"hello\n", b"warn\n", 3)
    assert res.stdout_text == "hello\n" and res.stderr_text == "warn\n" and not res.ok
    assert stub.last().json() == {"argv": ["sh", "-c", "x"], "env": ["A=1", "B=x=y"], "dir": "/srv", "user": "nobody", "timeout_ms": 2500}


def test_exec_minimal_request(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"exit": {"exit_code": 0}}))
    assert box.exec(["true"]).ok
    assert stub.last().json() == {"argv": ["true"]}


def test_exec_signal_and_timeout(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"exit": {"exit_code": -1, "signal": 9, "timed_out": True}}))
    res = box.exec(["sleep", "100"], timeout=0.0001)
    assert (res.exit_code, res.signal, res.timed_out, res.ok) == (-1, 9, True, False)
    assert stub.last().json()["timeout_ms"] == 1


def test_exec_check(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"stderr": b64(b"no such file\n")}, {"exit": {"exit_code": 2}}))
    with pytest.raises(sailbox.CommandFailed, match="exited with 2: no such file") as e:
        box.exec(["ls", "/nope"], check=True)
    assert e.value.result.exit_code == 2
    stub.on("POST", "/v1/boxes/b1/exec", stream({"exit": {"exit_code": 0}}))
    assert box.exec(["true"], check=True).ok


def test_exec_argv_must_be_a_sequence(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    with pytest.raises(TypeError, match="sh"):
        box.exec("echo hi")  # type: ignore[arg-type]


def test_exec_refused_before_it_starts(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", error(409, "invalid_transition", "box b1: exec not allowed in state paused"))
    with pytest.raises(sailbox.InvalidTransition, match="state paused"):
        box.exec(["true"])
    with pytest.raises(sailbox.InvalidTransition):
        box.exec_stream(["true"])


def test_exec_error_mid_stream(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"stdout": b64(b"partial")}, {"error": {"error": "the guest agent went away", "code": "internal", "status": 500}}))
    s = box.exec_stream(["x"])
    assert next(s) == sailbox.ExecOutput("stdout", b"partial")
    with pytest.raises(sailbox.InternalError, match="agent went away") as e:
        next(s)
    assert e.value.status == 500
    with pytest.raises(StopIteration):
        next(s)


def test_exec_stream_cut_without_exit(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"stdout": b64(b"a")}, end=False))
    with pytest.raises(sailbox.ProtocolError):
        box.exec(["x"])
    stub.on("POST", "/v1/boxes/b1/exec", stream({"stdout": b64(b"a")}))
    with pytest.raises(sailbox.ProtocolError, match="without an exit"):
        box.exec(["x"])


@pytest.mark.parametrize("line", [b"not json\n", b'{"stdout": "!!notbase64"}\n', b"[1,2]\n"])
def test_exec_bad_event(stub: StubDaemon, client: sailbox.Client, line: bytes) -> None:
    box = running(stub, client)

    def h(req, w):  # type: ignore[no-untyped-def]
        w.start()
        w.chunk(line)
        w.end()

    stub.on("POST", "/v1/boxes/b1/exec", h)
    with pytest.raises(sailbox.ProtocolError, match="bad event"):
        box.exec(["x"])


def test_exec_stream_yields_output_before_the_process_ends(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    seen_first = threading.Event()

    def h(req, w):  # type: ignore[no-untyped-def]
        w.start()
        w.event({"stdout": b64(b"one\n")})
        # The exit comes only once the client has seen the first line: a
        # client that waited for the whole answer would never see it.
        if not seen_first.wait(60):
            w.event({"error": {"error": "the client did not stream", "code": "internal", "status": 500}})
        else:
            w.event({"stderr": b64(b"two\n")})
            w.event({"exit": {"exit_code": 0}})
        w.end()

    stub.on("POST", "/v1/boxes/b1/exec", h)
    with box.exec_stream(["x"]) as s:
        first = next(s)
        seen_first.set()
        rest = list(s)
    assert first == sailbox.ExecOutput("stdout", b"one\n")
    assert rest == [sailbox.ExecOutput("stderr", b"two\n")]
    assert s.exit == sailbox.ExecExit(0)


def test_exec_stream_wait(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"stdout": b64(b"x" * 100000)}, {"exit": {"exit_code": 7}}))
    s = box.exec_stream(["x"])
    assert s.exit is None
    assert s.wait() == sailbox.ExecExit(7)


def test_exec_stream_close_early(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"stdout": b64(b"a")}, {"stdout": b64(b"b")}, {"exit": {"exit_code": 0}}))
    with box.exec_stream(["x"]) as s:
        assert next(s).data == b"a"
    with pytest.raises(StopIteration):
        next(s)
    assert s.exit is None


def test_exec_stdin_is_base64(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/exec", stream({"exit": {"exit_code": 0}}))
    box.exec(["cat"], stdin="ä\x00")
    assert base64.b64decode(stub.last().json()["stdin"]) == "ä\x00".encode()
    box.exec(["cat"], stdin=b"\xff")
    assert stub.last().json()["stdin"] == "/w=="
