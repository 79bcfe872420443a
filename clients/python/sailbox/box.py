"""Sailbox: a handle on one box of a sailboxd."""

from __future__ import annotations

import base64
import builtins
import dataclasses
import json
import math
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Literal, Mapping, Sequence, overload

from .client import Client, box_path
from .errors import CommandFailed, NotFound, ProtocolError
from .execstream import ExecStream
from .models import BoxInfo, Checkpoint, ExecResult, NetworkStats, Port, TerminateResult

__all__ = ["Sailbox", "Files"]

Duration = float | int | timedelta


def _seconds(name: str, d: Duration) -> int:
    """d in whole seconds (rounded up, so that a box never gets less than asked)."""
    s = d.total_seconds() if isinstance(d, timedelta) else float(d)
    if s < 0 or math.isnan(s):
        raise ValueError(f"{name} must not be negative: {d!r}")
    return math.ceil(s)


def _client(client: Client | None) -> Client:
    return client if client is not None else Client()


class Sailbox:
    """A box: a VM that sailboxd runs, checkpoints, forks and puts to sleep.

    Get one from :meth:`create`, :meth:`connect`, :meth:`get`, :meth:`list`
    or :meth:`fork`. Calls that change the box update :attr:`info` with the
    daemon's answer. As a context manager it terminates the box on exit::

        with Sailbox.create(memory_mib=512, labels={"team": "ml"}) as box:
            print(box.exec(["python3", "-c", "print(6 * 7)"]).stdout_text)

    Every call may raise a :class:`sailbox.SailboxError` subclass carrying
    the daemon's message: :class:`NotFound`, :class:`InvalidTransition`,
    :class:`BadRequest`, ...
    """

    def __init__(self, info: BoxInfo, client: Client) -> None:
        self.info = info
        self.client = client
        self.files = Files(self)

    def __repr__(self) -> str:
        return f"Sailbox({self.id!r}, state={self.state!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sailbox) and other.id == self.id and other.client.socket_path == self.client.socket_path

    def __hash__(self) -> int:
        return hash(self.id)

    # What the daemon last reported.

    @property
    def id(self) -> str:
        """The box's ID."""
        return self.info.id

    @property
    def state(self) -> str:
        """The box's state as last reported (a :class:`sailbox.State` value)."""
        return self.info.state

    @property
    def guest_schema_version(self) -> int:
        """The protocol revision of the box's guest agent, as last reported."""
        return self.info.guest_schema_version

    @property
    def labels(self) -> Mapping[str, str]:
        """The box's labels."""
        return self.info.labels

    @property
    def expires_at(self) -> datetime | None:
        """When the box is terminated unless extended; None if it has no TTL."""
        return self.info.expires_at

    @property
    def host_id(self) -> str:
        """The host whose daemon owns the box."""
        return self.info.host_id

    @property
    def ports(self) -> tuple[Port, ...]:
        """The box's exposed ports, as last reported."""
        return self.info.ports

    def _path(self, *rest: str) -> str:
        return box_path(self.id, *rest)

    def _update(self, answer: Any) -> Sailbox:
        self.info = BoxInfo.from_json(answer)
        return self

    # Finding boxes.

    @classmethod
    def create(
        cls,
        *,
        image: str | None = None,
        memory_mib: int | None = None,
        vcpus: int | None = None,
        disk_size_bytes: int | None = None,
        network: bool = True,
        no_internet: bool = False,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        idle_timeout: Duration | None = None,
        ttl: Duration | None = None,
        client: Client | None = None,
    ) -> Sailbox:
        """Creates and boots a new box; returns it running.

        Args:
            image: the box's image (a path under the daemon's image
                directories, an OCI layout or tarball, or a registry
                reference); None: the daemon's default image.
            memory_mib, vcpus: the VM's size; None: the daemon's defaults.
            disk_size_bytes: the box's disk size (at least its image's);
                None: the image's size.
            network: False gives the box no network device.
            no_internet: refuse every outbound connection allow does not name.
            allow, deny: egress rules (CIDR blocks, addresses, domain
                names); deny wins.
            labels: key/value labels, to find the box by with :meth:`list`.
            idle_timeout: seconds (or a timedelta) without exec, file call
                or connection after which the daemon puts the box to sleep.
            ttl: seconds (or a timedelta) after creation at which the daemon
                terminates the box, unless :meth:`extend` pushes it back.
            client: the daemon to ask; None: the one on the default socket.
        """
        req: dict[str, Any] = {}
        for key, v in (("image", image), ("memory_mib", memory_mib), ("vcpus", vcpus), ("disk_size_bytes", disk_size_bytes)):
            if v is not None:
                req[key] = v
        if not network:
            req["no_network"] = True
        if no_internet:
            req["no_internet"] = True
        if allow:
            req["allow"] = list(allow)
        if deny:
            req["deny"] = list(deny)
        if labels:
            req["labels"] = dict(labels)
        if idle_timeout is not None:
            req["idle_timeout_seconds"] = _seconds("idle_timeout", idle_timeout)
        if ttl is not None:
            req["ttl_seconds"] = _seconds("ttl", ttl)
        c = _client(client)
        return cls(BoxInfo.from_json(c.call("POST", "/v1/boxes", expect=201, json_body=req)), c)

    @classmethod
    def get(cls, box_id: str, *, client: Client | None = None) -> Sailbox:
        """Returns box box_id as it is, without waking it."""
        c = _client(client)
        return cls(BoxInfo.from_json(c.call("GET", box_path(box_id))), c)

    @classmethod
    def connect(cls, box_id: str, *, client: Client | None = None) -> Sailbox:
        """Returns box box_id ready for use.

        The daemon checks the box's placement (:class:`WrongHost` if another
        host owns it) and resumes it if it is paused or sleeping.
        """
        c = _client(client)
        return cls(BoxInfo.from_json(c.call("POST", box_path(box_id, "connect"), json_body={})), c)

    @classmethod
    def list(
        cls,
        *,
        max_guest_schema_version: int | None = None,
        labels: Mapping[str, str] | None = None,
        client: Client | None = None,
    ) -> list[Sailbox]:
        """Returns the host's boxes, sorted by ID.

        Args:
            max_guest_schema_version: only boxes whose guest agent reports
                at most this version (those that need an upgrade).
            labels: only boxes that carry every one of these labels.
            client: the daemon to ask; None: the one on the default socket.
        """
        query: list[tuple[str, str | int]] = []
        if max_guest_schema_version is not None:
            query.append(("max_guest_schema_version", max_guest_schema_version))
        for k, v in (labels or {}).items():
            query.append(("label", f"{k}={v}"))
        c = _client(client)
        answer = c.call("GET", "/v1/boxes", query=query)
        return [cls(BoxInfo.from_json(b), c) for b in answer.get("boxes") or ()]

    def refresh(self) -> Sailbox:
        """Reads the box's record again (without waking it); returns self."""
        return self._update(self.client.call("GET", self._path()))

    # Lifecycle.

    def checkpoint(self) -> Checkpoint:
        """Takes a live checkpoint of the running box."""
        return Checkpoint.from_json(self.client.call("POST", self._path("checkpoint"), expect=201, json_body={}))

    def checkpoints(self) -> builtins.list[Checkpoint]:
        """Returns the box's checkpoint chain, newest first."""
        answer = self.client.call("GET", self._path("checkpoints"))
        return [Checkpoint.from_json(c) for c in answer.get("checkpoints") or ()]

    @overload
    def fork(self) -> Sailbox: ...

    @overload
    def fork(self, count: int) -> builtins.list[Sailbox]: ...

    def fork(self, count: int | None = None) -> Sailbox | builtins.list[Sailbox]:
        """Starts new boxes from a checkpoint of this one.

        Without count returns the one new, running child; with count
        returns a list of that many, made from one checkpoint (all of them
        or, if one fails, none).
        """
        body: dict[str, Any] = {} if count is None else {"count": count}
        answer = self.client.call("POST", self._path("fork"), expect=201, json_body=body)
        first = BoxInfo.from_json(answer["box"])
        if count is None:
            return Sailbox(first, self.client)
        infos = [BoxInfo.from_json(b) for b in answer.get("boxes") or ()]
        if first.id not in {i.id for i in infos}:
            infos.insert(0, first)
        return [Sailbox(i, self.client) for i in infos]

    def pause(self) -> Sailbox:
        """Checkpoints the box and powers it down until :meth:`resume`; returns self."""
        return self._update(self.client.call("POST", self._path("pause"), json_body={}))

    def sleep(self) -> Sailbox:
        """Checkpoints the box and powers it down until it is used; returns self.

        An exec, a file call or a connection to an exposed port wakes it.
        """
        return self._update(self.client.call("POST", self._path("sleep"), json_body={}))

    def resume(self) -> Sailbox:
        """Restores the paused or sleeping box; returns self, updated."""
        return self._update(self.client.call("POST", self._path("resume"), json_body={}))

    def upgrade(self) -> bool:
        """Moves the box onto the daemon's current guest agent.

        Returns True when the box runs the current agent now (it was
        rebooted onto it, or already did), False when the upgrade was only
        recorded, to be applied when the box next wakes.
        """
        answer = self.client.call("POST", self._path("upgrade"), json_body={})
        self._update(answer["box"])
        upgraded = answer["upgraded"]
        if not isinstance(upgraded, bool):
            raise ProtocolError(f"upgrade: 'upgraded' is {upgraded!r}, not a boolean")
        return upgraded

    def extend(self, ttl: Duration) -> Sailbox:
        """Sets the box to expire ttl (seconds or a timedelta) from now; returns self."""
        body = {"ttl_seconds": _seconds("ttl", ttl)}
        return self._update(self.client.call("POST", self._path("extend"), json_body=body))

    def terminate(self) -> TerminateResult:
        """Destroys the box and frees the checkpoints no other box's chain uses."""
        res = TerminateResult.from_json(self.client.call("DELETE", self._path()))
        self.info = dataclasses.replace(self.info, state=res.state or "terminated")
        return res

    def __enter__(self) -> Sailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate()
        except NotFound:
            pass  # already gone

    # Using the box.

    def exec_stream(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Duration | None = None,
    ) -> ExecStream:
        """Runs argv in the box and returns its output as it arrives.

        A sleeping box is woken first. Arguments as for :meth:`exec`.
        """
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv is a sequence of strings; for a shell command use ['sh', '-c', command]")
        req: dict[str, Any] = {"argv": list(argv)}
        if env:
            req["env"] = [f"{k}={v}" for k, v in env.items()]
        if cwd:
            req["dir"] = cwd
        if user:
            req["user"] = user
        if timeout is not None:
            s = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
            req["timeout_ms"] = max(1, math.ceil(s * 1000))
        if stdin:
            data = stdin.encode() if isinstance(stdin, str) else stdin
            req["stdin"] = base64.b64encode(data).decode("ascii")
        return ExecStream(self.client.open("POST", self._path("exec"), expect=200, json_body=req))

    def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        timeout: Duration | None = None,
        check: bool = False,
    ) -> ExecResult:
        """Runs argv in the box and waits for it to end.

        A sleeping box is woken first.

        Args:
            argv: the program and its arguments (no shell: use
                ``["sh", "-c", "..."]`` for one).
            stdin: the process's whole input; None: /dev/null.
            env: environment variables added to the image's.
            cwd: the working directory.
            user: who runs it ("user", "user:group", "uid" or "uid:gid").
            timeout: seconds (or a timedelta) after which the process is
                killed (the result then has ``timed_out``).
            check: raise :class:`CommandFailed` if it does not exit with 0.

        Returns:
            its stdout, stderr and exit code.
        """
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        with self.exec_stream(argv, stdin=stdin, env=env, cwd=cwd, user=user, timeout=timeout) as s:
            for piece in s:
                out[piece.stream].append(piece.data)
        assert s.exit is not None
        res = ExecResult(
            stdout=b"".join(out["stdout"]),
            stderr=b"".join(out["stderr"]),
            exit_code=s.exit.exit_code,
            signal=s.exit.signal,
            timed_out=s.exit.timed_out,
        )
        if check and not res.ok:
            how = "timed out" if res.timed_out else f"exited with {res.exit_code}"
            raise CommandFailed(f"{argv[0]} in box {self.id} {how}: {res.stderr_text.strip()[-500:]}", res)
        return res

    def expose(self, guest_port: int, *, host_port: int = 0, host_addr: str | None = None) -> Port:
        """Forwards a host TCP port to guest_port (host_port 0 picks a free one).

        A connection to it wakes the box if it sleeps. host_addr is the
        address to listen on; None means 127.0.0.1.
        """
        req: dict[str, Any] = {"guest_port": guest_port}
        if host_port:
            req["host_port"] = host_port
        if host_addr:
            req["host_addr"] = host_addr
        return Port.from_json(self.client.call("POST", self._path("ports"), expect=201, json_body=req))

    def unexpose(self, host_port: int) -> None:
        """Removes the box's forward of host_port."""
        self.client.call("DELETE", self._path("ports", str(int(host_port))), expect=204)

    def network(self) -> NetworkStats:
        """Returns the counters of the box's network (a sleeping box is not woken)."""
        return NetworkStats.from_json(self.client.call("GET", self._path("network")))


class Files:
    """The files of a box (``box.files``). A sleeping box is woken first."""

    def __init__(self, box: Sailbox) -> None:
        self._box = box

    def read(self, path: str) -> bytes:
        """Returns the whole content of the guest file at path."""
        with self._box.client.open("GET", self._box._path("files"), expect=200, query={"path": path}) as ans:
            return ans.read()

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """Returns the guest file at path decoded as text."""
        return self.read(path).decode(encoding)

    def write(
        self,
        path: str,
        data: bytes | str | BinaryIO,
        *,
        mode: int | None = None,
        append: bool = False,
        create_dirs: bool = False,
    ) -> int:
        """Writes data to the guest file at path; returns the bytes written.

        Args:
            data: bytes, text (written as UTF-8) or a binary file to stream.
            mode: permission bits of a created file (e.g. 0o755); None: 0o644.
            append: add to the end of the file instead of replacing it.
            create_dirs: create missing parent directories.
        """
        query: dict[str, str | int] = {"path": path}
        if mode is not None:
            query["mode"] = format(mode, "o")
        if append:
            query["append"] = "true"
        if create_dirs:
            query["create_dirs"] = "true"
        body = data.encode() if isinstance(data, str) else data
        ans = self._box.client.open(
            "PUT", self._box._path("files"), expect=200, query=query, body=body, content_type="application/octet-stream"
        )
        with ans:
            return int(json.loads(ans.read())["written"])
