import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sailbox  # noqa: E402
import stub as stubmod  # noqa: E402


@pytest.fixture
def stub() -> Iterator[stubmod.StubDaemon]:
    s, stop = stubmod.start()
    try:
        yield s
    finally:
        stop()


@pytest.fixture
def client(stub: stubmod.StubDaemon) -> sailbox.Client:
    return sailbox.Client(stub.socket_path)
