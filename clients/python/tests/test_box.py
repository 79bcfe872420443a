"""Every call of the client against a stub daemon: what it sends, what it makes of the answer."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import sailbox
from sailbox import Sailbox, State
from stub import Reply, StubDaemon, error


def box_json(id: str = "b1", state: str = "running", **kw: Any) -> dict[str, Any]:
    d = {
        "id": id,
        "state": state,
        "guest_schema_version": 5,
        "created": "2026-12-06T18:17:01.123456789Z",
        "last_checkpoint": None,
        "host_id": "h1",
        "pending_upgrade": False,
        "memory_mib": 512,
        "vcpus": 2,
        "ports": [],
    }
    d.update(kw)
    return d


def running(stub: StubDaemon, client: sailbox.Client, id: str = "b1", **kw: Any) -> Sailbox:
    stub.on("GET", f"/v1/boxes/{id}", Reply(200, box_json(id, **kw)))
    return Sailbox.get(id, client=client)


def test_create_sends_every_option(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes", Reply(201, box_json(labels={"team": "ml"}, idle_timeout_seconds=300, ttl_seconds=3600, expires_at="2026-12-06T19:17:01Z")))
    box = Sailbox.create(
        image="debian.ext4",
        memory_mib=512,
        vcpus=2,
        disk_size_bytes=1 << 30,
        no_internet=True,
        allow=["10.0.0.0/8", "example.com"],
        deny=["10.1.0.0/16"],
        labels={"team": "ml"},
        idle_timeout=timedelta(minutes=5),
        ttl=3600,
        client=client,
    )
    assert stub.last().json() == {
        "image": "debian.ext4",
        "memory_mib": 512,
        "vcpus": 2,
        "disk_size_bytes": 1 << 30,
        "no_internet": True,
        "allow": ["10.0.0.0/8", "example.com"],
        "deny": ["10.1.0.0/16"],
        "labels": {"team": "ml"},
        "idle_timeout_seconds": 300,
        "ttl_seconds": 3600,
    }
    assert stub.last().headers["Content-Type"] == "application/json"
    assert box.id == "b1" and box.state == State.RUNNING and box.state == "running"
    assert box.guest_schema_version == 5 and box.host_id == "h1"
    assert box.labels == {"team": "ml"}
    assert box.info.idle_timeout_seconds == 300 and box.info.ttl_seconds == 3600
    assert box.expires_at == datetime(2026, 12, 6, 19, 17, 1, tzinfo=timezone.utc)
    assert box.info.created == datetime(2026, 12, 6, 18, 17, 1, 123456, tzinfo=timezone.utc)


def test_create_defaults_send_an_empty_request(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes", Reply(201, box_json()))
    Sailbox.create(client=client)
    assert stub.last().json() == {}


def test_create_without_network_and_fractional_durations(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes", Reply(201, box_json()))
    Sailbox.create(network=False, idle_timeout=0.5, ttl=timedelta(seconds=90.2), client=client)
    assert stub.last().json() == {"no_network": True, "idle_timeout_seconds": 1, "ttl_seconds": 91}
    with pytest.raises(ValueError):
        Sailbox.create(ttl=-1, client=client)


def test_box_info_reads_every_field_and_ignores_unknown_ones(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(
        stub,
        client,
        last_checkpoint="2026-12-06T18:20:00.5Z",
        last_checkpoint_id="c9",
        parent_id="p1",
        pending_upgrade=True,
        disk_size_bytes=4096,
        ports=[{"host_addr": "127.0.0.1:4000", "host_port": 4000, "guest_port": 80}],
        network={"no_internet": True, "allow": ["1.2.3.4"]},
        something_new={"x": 1},
    )
    i = box.info
    assert i.last_checkpoint == datetime(2026, 12, 6, 18, 20, 0, 500000, tzinfo=timezone.utc)
    assert (i.last_checkpoint_id, i.parent_id, i.pending_upgrade, i.disk_size_bytes) == ("c9", "p1", True, 4096)
    assert box.ports == (sailbox.Port("127.0.0.1:4000", 4000, 80),)
    assert i.network == sailbox.NetworkPolicy(no_internet=True, allow=("1.2.3.4",))
    assert i.labels == {} and i.expires_at is None and i.ttl_seconds == 0


def test_get_escapes_the_id(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("GET", "/v1/boxes/a%2Fb", Reply(200, box_json("a/b")))
    assert Sailbox.get("a/b", client=client).id == "a/b"


def test_connect(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes/b1/connect", Reply(200, box_json()))
    box = Sailbox.connect("b1", client=client)
    assert box.state == "running" and stub.last().json() == {}


def test_connect_to_a_box_of_another_host(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes/b1/connect", error(421, "wrong_host", "box b1 lives on host h2"))
    with pytest.raises(sailbox.WrongHost, match="lives on host h2") as e:
        Sailbox.connect("b1", client=client)
    assert e.value.status == 421 and e.value.code == "wrong_host"


def test_list_filters(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("GET", "/v1/boxes", Reply(200, {"boxes": [box_json("b1"), box_json("b2", "sleeping")]}))
    boxes = Sailbox.list(max_guest_schema_version=4, labels={"team": "ml", "env": "a=b"}, client=client)
    assert [(b.id, b.state) for b in boxes] == [("b1", "running"), ("b2", "sleeping")]
    assert all(b.client is client for b in boxes)
    assert stub.last().query == {"max_guest_schema_version": ["4"], "label": ["team=ml", "env=a=b"]}
    Sailbox.list(client=client)
    assert stub.last().query == {}


def test_list_of_none(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("GET", "/v1/boxes", Reply(200, {"boxes": None}))
    assert Sailbox.list(client=client) == []


def test_refresh(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("GET", "/v1/boxes/b1", Reply(200, box_json(state="sleeping")))
    assert box.refresh() is box and box.state == State.SLEEPING


def test_checkpoint_and_checkpoints(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    ck = {"id": "c2", "box_id": "b1", "parent_id": "c1", "created": "2026-12-06T18:20:00Z", "completed": True}
    stub.on("POST", "/v1/boxes/b1/checkpoint", Reply(201, ck))
    got = box.checkpoint()
    assert got == sailbox.Checkpoint("c2", "b1", "c1", datetime(2026, 12, 6, 18, 20, tzinfo=timezone.utc), True)
    assert stub.last().json() == {}
    stub.on("GET", "/v1/boxes/b1/checkpoints", Reply(200, {"checkpoints": [ck, {"id": "c1", "box_id": "b1", "completed": True}]}))
    assert [c.id for c in box.checkpoints()] == ["c2", "c1"]


def test_fork_one(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/fork", Reply(201, {"box": box_json("k1", parent_id="b1"), "checkpoint": {"id": "c1", "box_id": "b1"}}))
    child = box.fork()
    assert isinstance(child, Sailbox) and child.id == "k1" and child.info.parent_id == "b1"
    assert stub.last().json() == {}


def test_fork_count_returns_every_child(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    kids = [box_json(f"k{i}", parent_id="b1") for i in range(3)]
    stub.on("POST", "/v1/boxes/b1/fork", Reply(201, {"box": kids[0], "boxes": kids, "checkpoint": {"id": "c1", "box_id": "b1"}}))
    children = box.fork(count=3)
    assert [c.id for c in children] == ["k0", "k1", "k2"]
    assert stub.last().json() == {"count": 3}


def test_fork_count_when_boxes_lists_only_the_others(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    kids = [box_json(f"k{i}") for i in range(3)]
    stub.on("POST", "/v1/boxes/b1/fork", Reply(201, {"box": kids[0], "boxes": kids[1:], "checkpoint": {"id": "c1", "box_id": "b1"}}))
    assert [c.id for c in box.fork(3)] == ["k0", "k1", "k2"]


def test_fork_all_or_nothing_error(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/fork", error(507, "capacity", "the host runs 10 boxes, its limit"))
    with pytest.raises(sailbox.CapacityExceeded, match="its limit"):
        box.fork(count=30)


@pytest.mark.parametrize("call, state", [("pause", "paused"), ("sleep", "sleeping"), ("resume", "running")])
def test_state_calls_update_the_handle(stub: StubDaemon, client: sailbox.Client, call: str, state: str) -> None:
    box = running(stub, client, state="paused" if call == "resume" else "running")
    stub.on("POST", f"/v1/boxes/b1/{call}", Reply(200, box_json(state=state)))
    assert getattr(box, call)() is box
    assert box.state == state
    assert stub.last().json() == {}


def test_resume_of_a_running_box_is_an_invalid_transition(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/resume", error(409, "invalid_transition", "box b1: resume not allowed in state running"))
    with pytest.raises(sailbox.InvalidTransition) as e:
        box.resume()
    assert isinstance(e.value, sailbox.Conflict)
    assert e.value.message == "box b1: resume not allowed in state running"
    assert box.state == "running"


@pytest.mark.parametrize("upgraded", [True, False])
def test_upgrade_returns_what_the_daemon_says(stub: StubDaemon, client: sailbox.Client, upgraded: bool) -> None:
    box = running(stub, client, guest_schema_version=4)
    after = box_json(guest_schema_version=5 if upgraded else 4, pending_upgrade=not upgraded)
    stub.on("POST", "/v1/boxes/b1/upgrade", Reply(200, {"upgraded": upgraded, "box": after}))
    assert box.upgrade() is upgraded
    assert box.guest_schema_version == (5 if upgraded else 4)
    assert box.info.pending_upgrade is (not upgraded)


def test_upgrade_answer_that_is_not_a_boolean(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/upgrade", Reply(200, {"upgraded": "yes", "box": box_json()}))
    with pytest.raises(sailbox.ProtocolError):
        box.upgrade()


def test_extend(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/extend", Reply(200, box_json(ttl_seconds=7200, expires_at="2026-12-06T20:00:00Z")))
    assert box.extend(timedelta(hours=2)) is box
    assert stub.last().json() == {"ttl_seconds": 7200}
    assert box.expires_at == datetime(2026, 12, 6, 20, tzinfo=timezone.utc)


def test_terminate(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("DELETE", "/v1/boxes/b1", Reply(200, {"id": "b1", "state": "terminated", "freed_checkpoints": ["c1"]}))
    res = box.terminate()
    assert res == sailbox.TerminateResult("b1", "terminated", ("c1",))
    assert box.state == State.TERMINATED


def test_context_manager_terminates_even_on_error(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes", Reply(201, box_json()))
    stub.on("DELETE", "/v1/boxes/b1", Reply(200, {"id": "b1", "state": "terminated"}))
    with pytest.raises(RuntimeError):
        with Sailbox.create(client=client) as box:
            raise RuntimeError("boom")
    assert stub.last().method == "DELETE" and box.state == "terminated"


def test_context_manager_of_a_box_already_gone(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("DELETE", "/v1/boxes/b1", error(404, "not_found", "box b1 not found"))
    with box:
        pass
    assert stub.last().method == "DELETE"


def test_expose_and_unexpose(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("POST", "/v1/boxes/b1/ports", Reply(201, {"host_addr": "127.0.0.1:41000", "host_port": 41000, "guest_port": 8000}))
    assert box.expose(8000) == sailbox.Port("127.0.0.1:41000", 41000, 8000)
    assert stub.last().json() == {"guest_port": 8000}
    box.expose(8000, host_port=9000, host_addr="0.0.0.0")
    assert stub.last().json() == {"guest_port": 8000, "host_port": 9000, "host_addr": "0.0.0.0"}
    stub.on("DELETE", "/v1/boxes/b1/ports/41000", Reply(204))
    box.unexpose(41000)
    assert stub.last().path == "/v1/boxes/b1/ports/41000"
    stub.on("POST", "/v1/boxes/b1/ports", error(409, "conflict", "host port 9000 is in use"))
    with pytest.raises(sailbox.Conflict, match="in use") as e:
        box.expose(8000, host_port=9000)
    assert not isinstance(e.value, sailbox.InvalidTransition)


def test_network(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("GET", "/v1/boxes/b1/network", Reply(200, {"box_id": "b1", "running": True, "guest_attached": True, "bytes_out": 10, "refused": 2, "open_connections": 1}))
    st = box.network()
    assert st.box_id == "b1" and st.running and st.guest_attached
    assert (st.bytes_out, st.refused, st.open_connections, st.bytes_in) == (10, 2, 1, 0)
    assert st.device is None
    device = {"frames_out": 1, "bytes_out": 2, "invalid_out": 3, "dropped_out": 4, "frames_in": 5, "bytes_in": 6, "invalid_in": 7, "dropped_in": 8, "peer_gone": True}
    stub.on("GET", "/v1/boxes/b1/network", Reply(200, {"box_id": "b1", "running": True, "device": device}))
    assert box.network().device == sailbox.NetworkDeviceStats(**device)


def test_files_read(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("GET", "/v1/boxes/b1/files", Reply(200, body=b"\x00bytes\xff", content_type="application/octet-stream"))
    assert box.files.read("/etc/x y") == b"\x00bytes\xff"
    assert stub.last().query == {"path": ["/etc/x y"]}
    stub.on("GET", "/v1/boxes/b1/files", Reply(200, body="héllo".encode(), content_type="application/octet-stream"))
    assert box.files.read_text("/t") == "héllo"


def test_files_read_missing(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("GET", "/v1/boxes/b1/files", error(404, "not_found", "open /nope: no such file"))
    with pytest.raises(sailbox.NotFound, match="no such file"):
        box.files.read("/nope")


def test_files_read_cut_short(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)

    def cut(req, w):  # type: ignore[no-untyped-def]
        w.start(content_type="application/octet-stream")
        w.chunk(b"first half")
        w.cut()

    stub.on("GET", "/v1/boxes/b1/files", cut)
    with pytest.raises(sailbox.ProtocolError, match="cut short"):
        box.files.read("/big")


def test_files_write(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("PUT", "/v1/boxes/b1/files", Reply(200, {"written": 5}))
    assert box.files.write("/tmp/a", b"hello") == 5
    req = stub.last()
    assert req.body == b"hello" and req.query == {"path": ["/tmp/a"]}
    assert req.headers["Content-Type"] == "application/octet-stream"
    box.files.write("/tmp/b", "héllo", mode=0o755, append=True, create_dirs=True)
    req = stub.last()
    assert req.body == "héllo".encode()
    assert req.query == {"path": ["/tmp/b"], "mode": ["755"], "append": ["true"], "create_dirs": ["true"]}


def test_files_write_streams_a_file(stub: StubDaemon, client: sailbox.Client) -> None:
    box = running(stub, client)
    stub.on("PUT", "/v1/boxes/b1/files", Reply(200, {"written": 300000}))
    data = bytes(range(256)) * 1200
    box.files.write("/tmp/big", io.BytesIO(data[:300000]))
    assert stub.last().body == data[:300000]
    assert stub.last().headers.get("Transfer-Encoding") == "chunked"


def test_sailbox_equality(stub: StubDaemon, client: sailbox.Client) -> None:
    a = running(stub, client)
    b = Sailbox.get("b1", client=client)
    assert a == b and len({a, b}) == 1


def test_default_client_uses_the_socket_env(stub: StubDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAILBOX_SOCKET", stub.socket_path)
    stub.on("GET", "/v1/boxes", Reply(200, {"boxes": [box_json()]}))
    assert [b.id for b in Sailbox.list()] == ["b1"]

