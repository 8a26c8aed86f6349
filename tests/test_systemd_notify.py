"""sd_notify over a real unix datagram socket (path and abstract), and the watchdog thread."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage_node.node.systemd import Watchdog, sd_notify, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_notify_sends_assignments(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    assert sd_notify("READY=1", "STATUS=listening\non 11112", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening on 11112"


def test_notify_abstract_socket() -> None:
    name = f"triage-node-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert sd_notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_is_a_noop_without_socket(tmp_path: Path) -> None:
    assert sd_notify("READY=1", environ={}) is False
    # A socket that went away is logged, never raised.
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "bogus"}) is None


def test_watchdog_pings_only_while_healthy(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    healthy = [True]
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
    dog = Watchdog(lambda: healthy[0], environ=env)
    dog.start()
    try:  # the thread pings on its own, period after period
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        dog.stop()
    sock.setblocking(False)
    try:  # drain pings sent before the stop
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
    # Each period decides afresh: an unhealthy node withholds the ping, a healthy one sends it.
    healthy[0] = False
    assert dog.tick() is False
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    healthy[0] = True
    assert dog.tick() is True
    assert sock.recv(4096) == b"WATCHDOG=1"
