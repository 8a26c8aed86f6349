"""Children the tests start: stoppable whatever the suite inherited, never left behind.

A shell that runs the suite in the background (``nohup python3 -m pytest &`` in a
script) starts it with SIGINT and SIGQUIT ignored; children inherit that across exec
unless :func:`tests.peers.start_process` puts them back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import STARTED, start_process, stop_left_running, stop_process

IDLE = "import time; print('up', flush=True); time.sleep(600)"


def ignored_signals(pid: int) -> set[int]:
    """The signals process ``pid`` ignores, from ``/proc/PID/status`` (SigIgn)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    raise AssertionError(f"no SigIgn line for pid {pid}")


def test_a_child_started_while_sigint_is_ignored_stops_on_sigint() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `nohup pytest &` has it
    try:
        proc = start_process([sys.executable, "-c", IDLE], stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        assert not {signal.SIGINT, signal.SIGQUIT} & ignored_signals(proc.pid)
        proc.send_signal(signal.SIGINT)  # Python's KeyboardInterrupt, then death by SIGINT
        assert proc.wait(30) == -signal.SIGINT
    finally:
        stop_process(proc, sig=signal.SIGKILL)


def test_a_child_left_running_is_killed_reaped_and_named() -> None:
    first = len(STARTED)
    proc = start_process([sys.executable, "-c", IDLE], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        left = stop_left_running(first)
        assert left == [f"pid {proc.pid}: {sys.executable} -c {IDLE}"]
        assert proc.returncode == -signal.SIGKILL  # reaped: no zombie left
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
    finally:
        stop_process(proc, sig=signal.SIGKILL)
