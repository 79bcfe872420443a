"""Error answers become typed exceptions carrying the daemon's message."""

from __future__ import annotations

import os

import pytest

import sailbox
from sailbox import Sailbox
from stub import Reply, StubDaemon, error


@pytest.mark.parametrize(
    "status, code, cls",
    [
        (400, "bad_request", sailbox.BadRequest),
        (404, "not_found", sailbox.NotFound),
        (409, "invalid_transition", sailbox.InvalidTransition),
        (409, "conflict", sailbox.Conflict),
        (421, "wrong_host", sailbox.WrongHost),
        (507, "capacity", sailbox.CapacityExceeded),
        (413, "too_large", sailbox.TooLarge),
        (501, "unsupported", sailbox.Unsupported),
        (502, "unavailable", sailbox.Unavailable),
        (500, "internal", sailbox.InternalError),
        # A code this client does not know: its status decides.
        (404, "gone_fishing", sailbox.NotFound),
        (409, "", sailbox.Conflict),
        (418, "teapot", sailbox.SailboxError),
    ],
)
def test_error_answers_map_to_types(stub: StubDaemon, client: sailbox.Client, status: int, code: str, cls: type[sailbox.SailboxError]) -> None:
    stub.on("GET", "/v1/boxes/b1", error(status, code, f"the daemon says {code}"))
    with pytest.raises(sailbox.SailboxError) as e:
        Sailbox.get("b1", client=client)
    assert type(e.value) is cls
    assert e.value.message == f"the daemon says {code}"
    assert e.value.status == status
    assert e.value.code == (code or cls.default_code)
    assert f"the daemon says {code}" in str(e.value)


def test_an_answer_that_is_not_an_error_body(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("GET", "/v1/boxes/b1", Reply(502, body=b"<html>bad gateway</html>", content_type="text/html"))
    with pytest.raises(sailbox.Unavailable, match="GET /v1/boxes/b1: <html>bad gateway") as e:
        Sailbox.get("b1", client=client)
    assert e.value.status == 502


def test_an_unexpected_success_status_is_an_error(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes", Reply(200, {"id": "b1"}))
    with pytest.raises(sailbox.SailboxError):
        Sailbox.create(client=client)


def test_an_answer_that_is_not_json(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("GET", "/v1/boxes/b1", Reply(200, body=b"{oops", content_type="application/json"))
    with pytest.raises(sailbox.ProtocolError, match="not JSON"):
        Sailbox.get("b1", client=client)


def test_bad_request_from_the_real_routes_table(stub: StubDaemon, client: sailbox.Client) -> None:
    stub.on("POST", "/v1/boxes", error(400, "bad_request", 'malformed request: json: unknown field "colour"'))
    with pytest.raises(sailbox.BadRequest, match="unknown field"):
        Sailbox.create(client=client)


def test_no_daemon(tmp_path: os.PathLike) -> None:
    c = sailbox.Client(os.path.join(str(tmp_path), "none.sock"))
    with pytest.raises(sailbox.DaemonUnreachable, match="no sailboxd answers on .*none.sock") as e:
        Sailbox.list(client=c)
    assert isinstance(e.value, ConnectionError)


def test_default_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAILBOX_SOCKET", "/x/y.sock")
    assert sailbox.default_socket() == "/x/y.sock"
    monkeypatch.delenv("SAILBOX_SOCKET")
    if os.geteuid() == 0:
        assert sailbox.default_socket() == "/run/sailbox/sailboxd.sock"
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
        assert sailbox.default_socket() == "/run/user/7/sailbox/sailboxd.sock"
