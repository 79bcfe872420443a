"""A box's lifecycle on a real sailboxd, through the Python client only.

Run by TestKVMPythonClient (cmd/sailboxd, kvm tier) under pytest
(`python3 -m pytest lifecycle_kvm.py`, the daemon's socket in
$SAILBOX_SOCKET; by hand also `python3 lifecycle_kvm.py SOCKET`), against
a daemon whose default image is the Debian one (it has python3). Every call of the client is made on real
VMs, and a box with an idle timeout falls asleep on its own and is woken
by a connection to its exposed port. Exits non-zero at the first call
that does not answer as it should.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import sailbox  # noqa: E402
from sailbox import Sailbox, State  # noqa: E402

LABELS = {"suite": "python-kvm"}

# How long to wait for what a slow lab may take (a bound, not a measure).
PATIENCE = 600


def step(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)


def serve(box: Sailbox, who: str) -> None:
    """Starts python3's http.server on the box's port 8000, serving /who."""
    box.exec(
        ["sh", "-c", 'mkdir -p /srv && printf %s "$1" > /srv/who && cd /srv && '
         "(setsid python3 -m http.server 8000 </dev/null >/tmp/http.log 2>&1 &)", "start", who],
        check=True,
    )
    probe = "import socket; socket.create_connection(('127.0.0.1', 8000), 1)"
    deadline = time.monotonic() + PATIENCE
    while box.exec(["python3", "-c", probe]).exit_code != 0:
        assert time.monotonic() < deadline, box.files.read("/tmp/http.log")
        time.sleep(0.2)


def fetch(port: sailbox.Port, path: str) -> str:
    """GETs path from the exposed port; the wait allows for a wake."""
    with urllib.request.urlopen(f"http://{port.host_addr}{path}", timeout=PATIENCE) as r:
        assert r.status == 200, r.status
        return r.read().decode()


def wait_for(what: str, cond) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + PATIENCE
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.25)


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

    step("extend")
    before = box.expires_at
    assert box.extend(7200) is box and box.info.ttl_seconds == 7200, box.info
    assert box.expires_at is not None and before is not None and box.expires_at > before, box.info

    step("checkpoint")
    ck = box.checkpoint()
    assert ck.box_id == box.id and ck.completed, ck
    assert box.refresh().info.last_checkpoint_id == ck.id, box.info
    assert box.checkpoints()[0].id == ck.id

    step("fork one")
    one = box.fork()
    assert isinstance(one, Sailbox) and one.state == State.RUNNING and one.info.parent_id == box.id, one
    assert one.files.read("/root/note") == b"written by the python client\n"
    assert one.exec(["hostname"]).stdout_text.strip() == "sbx-" + one.id
    assert one.terminate().state == "terminated"

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

    step("pause and resume")
    assert box.pause() is box and box.state == State.PAUSED, box.info
    try:
        box.exec(["true"])
    except sailbox.InvalidTransition as e:
        assert e.message, e
    else:
        raise AssertionError("exec in a paused box")
    assert box.resume() is box and box.state == State.RUNNING, box.info
    assert box.files.read("/root/note") == b"written by the python client\n"

    step("expose, and a connection wakes the box")
    serve(box, "parent")
    port = box.expose(8000)
    assert port.guest_port == 8000 and port.host_port > 0 and port in box.refresh().ports, port
    assert fetch(port, "/who") == "parent"
    st = box.network()
    assert st.box_id == box.id and st.running and st.connections_in >= 1, st
    assert box.sleep().state == State.SLEEPING
    assert fetch(port, "/who") == "parent"  # the server slept in the box
    assert box.refresh().state == State.RUNNING, box.info
    box.unexpose(port.host_port)
    assert box.refresh().ports == ()

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
    v = box.guest_schema_version
    assert box.id in {b.id for b in Sailbox.list(max_guest_schema_version=v, client=c)}
    assert Sailbox.list(max_guest_schema_version=v - 1, client=c) == [], "boxes on the daemon's agent need no upgrade"

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

    step("an idle box falls asleep on its own; a connection wakes it")
    with Sailbox.create(idle_timeout=10, labels={"suite": "python-kvm-idle"}, client=c) as idle:
        assert idle.info.idle_timeout_seconds == 10, idle.info
        serve(idle, "idle")
        port = idle.expose(8000)
        wait_for("the idle box to fall asleep", lambda: idle.refresh().state == State.SLEEPING)
        assert idle.info.last_checkpoint_id, idle.info
        assert fetch(port, "/who") == "idle"
        assert idle.refresh().state == State.RUNNING, idle.info
        wait_for("the woken box to fall asleep again", lambda: idle.refresh().state == State.SLEEPING)
    assert Sailbox.list(client=c) == []
    step("python client on sailboxd: ok")


def test_lifecycle() -> None:
    """The whole run, as pytest collects it (named on its command line)."""
    main(os.environ["SAILBOX_SOCKET"])


if __name__ == "__main__":
    main(sys.argv[1])
