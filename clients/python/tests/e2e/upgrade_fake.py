"""upgrade() answering False, and a running box's True, through the real API server.

Run by TestPythonClientUpgrade (internal/apiserver): python3
upgrade_fake.py SOCKET ASLEEP RUNNING, where the daemon's agent became
newer (schema 3) after it created box ASLEEP, now sleeping, and box
RUNNING, both on schema 2. Exits non-zero at the first call that does not
answer as the daemon's contract says.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import sailbox  # noqa: E402
from sailbox import Sailbox, State  # noqa: E402


def main(sock: str, asleep_id: str, running_id: str) -> None:
    c = sailbox.Client(sock)
    old = {b.id for b in Sailbox.list(max_guest_schema_version=2, client=c)}
    assert old == {asleep_id, running_id}, old

    # A sleeping box: the upgrade is only recorded, for its next wake.
    asleep = Sailbox.get(asleep_id, client=c)
    assert asleep.upgrade() is False, "a sleeping box was upgraded at once"
    assert asleep.state == State.SLEEPING and asleep.info.pending_upgrade and asleep.guest_schema_version == 2, asleep.info
    assert asleep.resume().state == State.RUNNING
    assert asleep.guest_schema_version == 3 and not asleep.info.pending_upgrade, asleep.info

    # A running box is rebooted onto the new agent: True.
    running = Sailbox.get(running_id, client=c)
    assert running.upgrade() is True
    assert running.state == State.RUNNING and running.guest_schema_version == 3, running.info
    assert Sailbox.list(max_guest_schema_version=2, client=c) == []
    print("python client upgrade against the fake backend: ok")


if __name__ == "__main__":
    main(*sys.argv[1:4])
