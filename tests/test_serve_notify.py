"""`serve` under a stand-in service manager: READY once listening, watchdog pings, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.peers import (
    REPO,
    base_config,
    echoscu,
    free_port,
    start_process,
    stop_process,
    write_config,
)


def test_serve_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", base_config(tmp_path / "data", port))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = start_process(
            [sys.executable, "-m", "triage_node", "serve", "--config", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=TRIAGE listening on 127.0.0.1:")
        # READY means the receiver answers now, not eventually.
        assert echoscu(port).returncode == 0
        deadline = time.monotonic() + 10
        pings = 0
        while pings < 2 and time.monotonic() < deadline:
            if sock.recv(4096) == b"WATCHDOG=1":
                pings += 1
        assert pings == 2
        proc.send_signal(signal.SIGTERM)
        messages = []
        while not any(m.startswith("STOPPING=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        assert proc.wait(30) == 0
    finally:
        stop_process(proc, sig=signal.SIGKILL)
        sock.close()
