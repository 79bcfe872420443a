"""A box's lifecycle on a real sailboxd, through the Python client only.

Run by TestKVMPythonClient (cmd/sailboxd, kvm tier): python3
lifecycle_kvm.py SOCKET, against a daemon whose default image is the
Debian one (it has python3). Exits non-zero at the first call that does
not answer as it should.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import sailbox  # noqa: E402
from sailbox import Sailbox, State  # noqa: E402

LABELS = {"suite": "python-kvm"}


def step(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)


def main(sock: str) -> None:
    c = sailbox.Client(sock)

    step("create")
    box = Sailbox.create(labels=LABELS, ttl=3600, client=c)
    assert box.state == State.RUNNING and box.host_id == "lab", box.info
    assert box.guest_schema_version > 0 and box.expires_at is not None, box.info

    step("run Python in the box")
    r = box.exec(["python3", "-c", "import sys; print(sum(range(10)), sys.version_info.major)"], check=True)
    assert r.stdout_text == "45 3\n", r
    r = box.exec(["sh", "-c", "read x; echo got $x; echo warn >&2; exit 3"], stdin="line\n")
    assert (r.stdout, r.stderr, r.exit_code) == (b"got line\n", b"warn\n", 3), r
    with box.exec_stream(["sh", "-c", "echo one; echo two >&2; echo three"]) as s:
        pieces = list(s)
    assert b"".join(p.data for p in pieces if p.stream == "stdout") == b"one\nthree\n", pieces
    assert b"".join(p.data for p in pieces if p.stream == "stderr") == b"two\n", pieces
    assert s.exit == sailbox.ExecExit(0), s.exit
    box.files.write("/root/note", "written by the python client\n")
    assert box.exec(["cat", "/root/note"]).stdout == b"written by the python client\n"
    assert box.files.read("/etc/os-release").startswith(b"PRETTY_NAME=\"Debian")

    step("checkpoint")
    ck = box.checkpoint()
    assert ck.box_id == box.id and ck.completed, ck
    assert box.refresh().info.last_checkpoint_id == ck.id, box.info

    step("fork three")
    kids = box.fork(count=3)
    assert len(kids) == 3 and len({k.id for k in kids}) == 3, kids
    for i, k in enumerate(kids):
        assert k.state == State.RUNNING and k.info.parent_id == box.id, k.info
        assert dict(k.labels) == LABELS, k.labels
        assert k.files.read("/root/note") == b"written by the python client\n"
        k.files.write("/root/who", f"kid {i}")
    for i, k in enumerate(kids):
        assert k.files.read("/root/who") == f"kid {i}".encode()
    assert box.exec(["test", "-e", "/root/who"]).exit_code == 1, "a fork's write reached its parent"

    step("sleep, then wake by exec")
    assert box.sleep().state == State.SLEEPING
    assert Sailbox.get(box.id, client=c).state == State.SLEEPING
    r = box.exec(["python3", "-c", "print(open('/root/note').read().strip())"], check=True)
    assert r.stdout_text == "written by the python client\n", r
    assert box.refresh().state == State.RUNNING

    step("upgrade")
    assert box.upgrade() is True, "a box on the daemon's own agent is upgraded already"
    assert box.state == State.RUNNING and not box.info.pending_upgrade, box.info
    assert box.exec(["true"]).ok

    step("connect")
    kids[0].sleep()
    again = Sailbox.connect(kids[0].id, client=c)
    assert again.state == State.RUNNING and again == kids[0], again

    step("list by label")
    mine = {box.id} | {k.id for k in kids}
    assert {b.id for b in Sailbox.list(labels=LABELS, client=c)} == mine
    assert Sailbox.list(labels={"suite": "nobody"}, client=c) == []

    step("terminate")
    with kids[2]:
        pass  # the context manager terminates it
    for b in (kids[0], kids[1], box):
        assert b.terminate().state == "terminated"
    try:
        box.exec(["true"])
    except sailbox.NotFound as e:
        assert box.id in e.message, e
    else:
        raise AssertionError("exec in a terminated box")
    assert Sailbox.list(labels=LABELS, client=c) == []
    step("python client on sailboxd: ok")


if __name__ == "__main__":
    main(sys.argv[1])
