"""The daemon's answers as typed values (see api/types.go and api/openapi.yaml).

Each type is built from the daemon's JSON by ``from_json``, which ignores
fields it does not know, so a newer daemon stays readable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Mapping

__all__ = [
    "State",
    "BoxInfo",
    "Port",
    "NetworkPolicy",
    "NetworkStats",
    "NetworkDeviceStats",
    "Checkpoint",
    "TerminateResult",
    "ExecExit",
    "ExecResult",
    "ExecOutput",
]


class State(StrEnum):
    """Where a box is in its lifecycle (the wire form of api/lifecycle.State).

    ``BoxInfo.state`` is a plain ``str`` so that a state a newer daemon adds
    stays readable; it compares equal to these members.
    """

    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    SLEEPING = "sleeping"
    FAILED = "failed"
    TERMINATED = "terminated"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(v: Any) -> datetime | None:
    """Parses an RFC 3339 time as Go writes it (nanoseconds, ``Z``); None stays None."""
    if v is None or v == "":
        return None
    # datetime keeps microseconds: drop the digits past them.
    return datetime.fromisoformat(_FRACTION.sub(r"\1", str(v)))


@dataclass(frozen=True, slots=True)
class Port:
    """A host TCP port forwarded to a guest port; a connection to it wakes a sleeping box."""

    host_addr: str
    host_port: int
    guest_port: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Port:
        return cls(host_addr=d.get("host_addr", ""), host_port=int(d.get("host_port", 0)), guest_port=int(d.get("guest_port", 0)))


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A box's egress policy: deny rules win, then allow rules, then ``no_internet``."""

    no_internet: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NetworkPolicy:
        return cls(no_internet=bool(d.get("no_internet")), allow=tuple(d.get("allow") or ()), deny=tuple(d.get("deny") or ()))


@dataclass(frozen=True, slots=True)
class BoxInfo:
    """One box as the daemon last reported it.

    Attributes:
        id: the box's ID.
        state: a :class:`State` value (as a string).
        guest_schema_version: the protocol revision of the box's guest agent.
        created: when the box was created.
        last_checkpoint: when its newest checkpoint was taken; None if none.
        last_checkpoint_id: that checkpoint's ID; "" if none.
        parent_id: the box it was forked from; "" if it was created.
        host_id: the host whose daemon owns the box (its placement).
        pending_upgrade: an upgrade is recorded for the box's next wake.
        memory_mib, vcpus: its VM's size.
        disk_size_bytes: its disk's size as asked; 0 means its image's.
        ports: its exposed ports.
        network: its egress policy; None if it has no network.
        labels: its labels.
        idle_timeout_seconds: it is put to sleep after this long unused; 0 if never.
        ttl_seconds: its time to live; 0 if it has none.
        expires_at: when it is terminated unless extended; None if never.
    """

    id: str
    state: str
    guest_schema_version: int = 0
    created: datetime | None = None
    last_checkpoint: datetime | None = None
    last_checkpoint_id: str = ""
    parent_id: str = ""
    host_id: str = ""
    pending_upgrade: bool = False
    memory_mib: int = 0
    vcpus: int = 0
    disk_size_bytes: int = 0
    ports: tuple[Port, ...] = ()
    network: NetworkPolicy | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    idle_timeout_seconds: int = 0
    ttl_seconds: int = 0
    expires_at: datetime | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BoxInfo:
        net = d.get("network")
        return cls(
            id=d["id"],
            state=str(d.get("state", "")),
            guest_schema_version=int(d.get("guest_schema_version") or 0),
            created=parse_time(d.get("created")),
            last_checkpoint=parse_time(d.get("last_checkpoint")),
            last_checkpoint_id=d.get("last_checkpoint_id") or "",
            parent_id=d.get("parent_id") or "",
            host_id=d.get("host_id") or "",
            pending_upgrade=bool(d.get("pending_upgrade")),
            memory_mib=int(d.get("memory_mib") or 0),
            vcpus=int(d.get("vcpus") or 0),
            disk_size_bytes=int(d.get("disk_size_bytes") or 0),
            ports=tuple(Port.from_json(p) for p in d.get("ports") or ()),
            network=NetworkPolicy.from_json(net) if net else None,
            labels=dict(d.get("labels") or {}),
            idle_timeout_seconds=int(d.get("idle_timeout_seconds") or 0),
            ttl_seconds=int(d.get("ttl_seconds") or 0),
            expires_at=parse_time(d.get("expires_at")),
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint in the daemon's catalog."""

    id: str
    box_id: str
    parent_id: str = ""
    created: datetime | None = None
    completed: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Checkpoint:
        return cls(
            id=d["id"],
            box_id=d.get("box_id", ""),
            parent_id=d.get("parent_id") or "",
            created=parse_time(d.get("created")),
            completed=bool(d.get("completed")),
        )


@dataclass(frozen=True, slots=True)
class NetworkDeviceStats:
    """The counters of a box's network device as its VMM counts them (see api.NetworkDeviceStats).

    ``out`` is from the guest, ``in`` to it.
    """

    frames_out: int = 0
    bytes_out: int = 0
    invalid_out: int = 0
    dropped_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    invalid_in: int = 0
    dropped_in: int = 0
    peer_gone: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NetworkDeviceStats:
        ints = {
            k: int(d.get(k) or 0)
            for k in ("frames_out", "bytes_out", "invalid_out", "dropped_out", "frames_in", "bytes_in", "invalid_in", "dropped_in")
        }
        return cls(peer_gone=bool(d.get("peer_gone")), **ints)


@dataclass(frozen=True, slots=True)
class NetworkStats:
    """The counters of a box's network since its VM last started (see api.NetworkStats).

    ``device`` is the same link counted by the VMM's network device; None
    while the box is down, or from a daemon that does not report it.
    """

    box_id: str
    running: bool = False
    guest_attached: bool = False
    bytes_out: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    frames_in: int = 0
    frames_dropped: int = 0
    connections_out: int = 0
    connections_in: int = 0
    open_connections: int = 0
    refused: int = 0
    refused_lookups: int = 0
    dial_failures: int = 0
    device: NetworkDeviceStats | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NetworkStats:
        ints = {
            k: int(d.get(k) or 0)
            for k in (
                "bytes_out",
                "bytes_in",
                "frames_out",
                "frames_in",
                "frames_dropped",
                "connections_out",
                "connections_in",
                "open_connections",
                "refused",
                "refused_lookups",
                "dial_failures",
            )
        }
        dev = d.get("device")
        return cls(
            box_id=d.get("box_id", ""),
            running=bool(d.get("running")),
            guest_attached=bool(d.get("guest_attached")),
            device=NetworkDeviceStats.from_json(dev) if dev else None,
            **ints,
        )


@dataclass(frozen=True, slots=True)
class TerminateResult:
    """The answer to terminate: the checkpoints whose storage was freed."""

    id: str
    state: str
    freed_checkpoints: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TerminateResult:
        return cls(id=d.get("id", ""), state=d.get("state", ""), freed_checkpoints=tuple(d.get("freed_checkpoints") or ()))


@dataclass(frozen=True, slots=True)
class ExecExit:
    """How an exec'd process ended.

    Attributes:
        exit_code: its exit status; -1 if a signal killed it.
        signal: the signal that killed it; 0 if none.
        timed_out: it was killed because it outran its timeout.
    """

    exit_code: int
    signal: int = 0
    timed_out: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ExecExit:
        return cls(exit_code=int(d.get("exit_code", 0)), signal=int(d.get("signal") or 0), timed_out=bool(d.get("timed_out")))


@dataclass(frozen=True, slots=True)
class ExecResult:
    """A finished exec: the process's whole output and how it ended."""

    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: int = 0
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """The process exited with status 0."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def stdout_text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stderr.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """A piece of an exec'd process's output, as it arrived.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        data: the bytes.
    """

    stream: str
    data: bytes
