"""The shipped systemd unit: `systemd-analyze verify`, exposure score, sysusers snippet.

About ExecStart: verify checks that the executable of ExecStart= exists. Ours is
``/usr/bin/env triage-node ...`` so that the unit works wherever pip put the
command on systemd's PATH; verify therefore checks /usr/bin/env, not triage-node
itself (in this test environment triage-node lives in a pyenv directory that is
not on systemd's PATH). ``test_verify_rejects_missing_executable`` shows that
verify does check the path, so a typo in ExecStart's binary would fail here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.peers import REPO, need_tool
from triage_node.node.node import SHUTDOWN_GRACE_SECONDS

UNIT = REPO / "systemd" / "triage-node.service"
SYSUSERS = REPO / "systemd" / "triage-node.sysusers"


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    exe = need_tool("systemd-analyze")
    return subprocess.run(
        [exe, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=unit.parent
    )


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    target = tmp_path / UNIT.name
    shutil.copy(UNIT, target)
    return target


def test_verify_passes_without_warnings(unit_copy: Path) -> None:
    proc = _verify(unit_copy)
    assert proc.returncode == 0, proc.stderr
    # Unknown or misspelt directives are only warnings to verify: treat them as errors.
    problems = [line for line in proc.stderr.splitlines() if "triage-node.service" in line]
    assert problems == [], proc.stderr


def test_verify_rejects_missing_executable(unit_copy: Path) -> None:
    broken = unit_copy.read_text().replace(
        "ExecStart=/usr/bin/env ", "ExecStart=/nonexistent/triage-node-venv/bin/env "
    )
    unit_copy.write_text(broken)
    proc = _verify(unit_copy)
    assert proc.returncode != 0
    assert "/nonexistent/triage-node-venv/bin/env" in proc.stderr


def test_exposure_at_most_3(unit_copy: Path) -> None:
    exe = need_tool("systemd-analyze")
    proc = subprocess.run(
        [exe, "security", "--offline=yes", "--no-pager", str(unit_copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_copy.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 3.0, proc.stdout


def test_unit_matches_the_node() -> None:
    s = _settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"][0].split()[1:3] == ["triage-node", "serve"]
    assert int(s["WatchdogSec"][0]) > 0
    # systemd must not SIGKILL workers still inside their shutdown grace period.
    assert float(s["TimeoutStopSec"][0]) > SHUTDOWN_GRACE_SECONDS + 5
    assert s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["User"] == ["triage-node"] and s["StateDirectory"] == ["triage-node"]


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    exe = need_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [exe, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("triage-node:"))
    fields = entry.split(":")
    assert int(fields[2]) < 1000 and fields[5] == "/var/lib/triage-node"
