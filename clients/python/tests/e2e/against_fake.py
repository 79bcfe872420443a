"""Every call of the Python client against the real API server over the fake backend.

Run by TestPythonClient (internal/apiserver): python3 against_fake.py SOCKET.
Standalone (no pytest): it exits non-zero at the first call that does not
answer as the daemon's contract says. The fake backend's exec understands
echo, cat, write, hostname, stderr, exit, stdin and schema.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import sailbox  # noqa: E402
from sailbox import Sailbox, State  # noqa: E402


def expect_error(cls: type[sailbox.SailboxError], fn, *args, **kw) -> sailbox.SailboxError:  # type: ignore[no-untyped-def]
    try:
        fn(*args, **kw)
    except cls as e:
        assert e.message, f"{cls.__name__} without the daemon's message"
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not raise {cls.__name__}")


def main(sock: str) -> None:
    c = sailbox.Client(sock)
    assert Sailbox.list(client=c) == [], "a new daemon has boxes"

    box = Sailbox.create(memory_mib=256, labels={"suite": "py", "role": "parent"}, ttl=3600, idle_timeout=600, client=c)
    assert box.state == State.RUNNING, box
    assert box.host_id == "test-host" and box.guest_schema_version == 2, box.info
    assert dict(box.labels) == {"suite": "py", "role": "parent"}, box.labels
    assert box.info.ttl_seconds == 3600 and box.info.idle_timeout_seconds == 600, box.info
    assert box.expires_at is not None and box.info.created is not None and box.expires_at > box.info.created

    # exec, whole and streamed.
    r = box.exec(["echo", "hello", "python"])
    assert (r.stdout, r.stderr, r.exit_code) == (b"hello python\n", b"", 0), r
    r = box.exec(["stderr", "oops"])
    assert r.stderr == b"oops\n" and r.stdout == b"", r
    assert box.exec(["exit", "3"]).exit_code == 3
    assert box.exec(["stdin"], stdin=b"\x00in\xff").stdout == b"\x00in\xff"
    expect_error(sailbox.CommandFailed, box.exec, ["exit", "4"], check=True)
    with box.exec_stream(["echo", "streamed"]) as s:
        pieces = list(s)
    assert b"".join(p.data for p in pieces) == b"streamed\n" and s.exit == sailbox.ExecExit(0), (pieces, s.exit)
    expect_error(sailbox.BadRequest, box.exec, ["no-such-command"])

    # files.
    assert box.files.write("/note", "from python") == len("from python")
    assert box.files.write("/note", b"!", append=True) == 1
    assert box.files.read("/note") == b"from python!"
    assert box.files.read_text("/note") == "from python!"
    e = expect_error(sailbox.NotFound, box.files.read, "/nope")
    assert "/nope" in e.message and e.status == 404 and e.code == "not_found", e

    # checkpoint and fork.
    ck = box.checkpoint()
    assert ck.box_id == box.id and ck.completed, ck
    assert box.checkpoints()[0].id == ck.id
    child = box.fork()
    assert isinstance(child, Sailbox) and child.info.parent_id == box.id, child.info
    assert dict(child.labels) == dict(box.labels), "a fork keeps its parent's labels"
    assert child.files.read("/note") == b"from python!"
    assert child.exec(["hostname"]).stdout.strip() == child.id.encode()
    kids = box.fork(count=3)
    assert isinstance(kids, list) and len(kids) == 3, kids
    assert len({k.id for k in kids} | {box.id, child.id}) == 5
    for k in kids:
        assert k.state == State.RUNNING and k.info.parent_id == box.id, k.info
        assert k.exec(["cat", "/note"]).stdout == b"from python!"

    # pause, resume, sleep, a wake by exec, connect.
    assert box.pause() is box and box.state == State.PAUSED
    expect_error(sailbox.InvalidTransition, box.exec, ["echo"])
    expect_error(sailbox.InvalidTransition, box.pause)
    assert box.resume().state == State.RUNNING
    expect_error(sailbox.InvalidTransition, box.resume)
    assert box.sleep().state == State.SLEEPING
    assert box.exec(["echo", "awake"]).stdout == b"awake\n"
    assert box.refresh().state == State.RUNNING
    child.sleep()
    assert Sailbox.connect(child.id, client=c).state == State.RUNNING
    assert Sailbox.get(child.id, client=c).state == State.RUNNING

    # upgrade: the box runs the daemon's agent already.
    assert box.upgrade() is True
    assert box.guest_schema_version == 2

    # list.
    everyone = {box.id, child.id} | {k.id for k in kids}
    assert {b.id for b in Sailbox.list(client=c)} == everyone
    assert [b.id for b in Sailbox.list(labels={"role": "parent"}, client=c)] == sorted({box.id, child.id} | {k.id for k in kids})
    assert {b.id for b in Sailbox.list(labels={"suite": "py", "role": "parent"}, client=c)} == everyone
    assert Sailbox.list(labels={"suite": "other"}, client=c) == []
    assert Sailbox.list(max_guest_schema_version=1, client=c) == []
    assert len(Sailbox.list(max_guest_schema_version=2, client=c)) == 5
    expect_error(sailbox.BadRequest, Sailbox.list, labels={"bad key!": "x"}, client=c)

    # extend, expose, network.
    before = box.expires_at
    assert box.extend(7200) is box and box.info.ttl_seconds == 7200, box.info
    assert box.expires_at is not None and before is not None and box.expires_at > before
    port = box.expose(8000)
    assert port.guest_port == 8000 and port.host_port > 0, port
    assert port in box.refresh().ports
    box.unexpose(port.host_port)
    assert box.refresh().ports == ()
    expect_error(sailbox.NotFound, box.unexpose, port.host_port)
    st = box.network()
    assert st.box_id == box.id and st.running, st

    # errors carry the daemon's message.
    e = expect_error(sailbox.NotFound, Sailbox.get, "no-such-box", client=c)
    assert "no-such-box" in e.message and e.status == 404 and e.code == "not_found", e
    expect_error(sailbox.BadRequest, Sailbox.create, memory_mib=-1, client=c)
    expect_error(sailbox.BadRequest, box.extend, 0)

    # the context manager terminates.
    with Sailbox.create(client=c) as tmp:
        assert tmp.exec(["echo", "x"]).ok
    expect_error(sailbox.NotFound, Sailbox.get, tmp.id, client=c)

    for b in [child, *kids, box]:
        assert b.terminate().state == "terminated"
    expect_error(sailbox.NotFound, box.terminate)
    assert Sailbox.list(client=c) == []
    print("python client against the fake backend: ok")


if __name__ == "__main__":
    main(sys.argv[1])
