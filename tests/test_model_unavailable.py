"""A broken model dependency is reported with its real cause, not as "no model installed".

The node runs as ``python -m triage_node serve`` with a directory first on
PYTHONPATH that holds a fake ``SimpleITK`` whose import fails the way a broken
install does (a shared library that does not load). The receiver works; the
score job waits for a model, and both the job's ``last_error`` and ``status``
name the simulated cause.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.peers import REPO, node_running, run_cli, storescu, wait_for

CAUSE = "libSimpleITKCommon-2.4.so.1: cannot open shared object file (simulated broken install)"
SAMPLE = REPO / "samples" / "02_normal_mono1.dcm"


@pytest.fixture
def broken_simpleitk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Put a SimpleITK that won't import first on PYTHONPATH (inherited by every subprocess
    the test starts); returns the PYTHONPATH without it."""
    shadow = tmp_path / "shadow" / "SimpleITK"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError({CAUSE!r})\n")
    original = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(shadow.parent), original) if p)
    )
    return original


def test_broken_dependency_names_its_cause_in_last_error_and_status(
    tmp_path: Path, broken_simpleitk: str
) -> None:
    with node_running(tmp_path) as node:
        sent = storescu(node.port, SAMPLE)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def waiting_row() -> dict[str, Any] | None:
            out = run_cli("worklist", "--json", config=node.config_path).stdout
            # queued between attempts; briefly scoring while a worker tries again
            rows = [
                r
                for r in json.loads(out)
                if CAUSE in (r.get("last_error") or "") and r["state"] == "queued"
            ]
            return rows[0] if rows else None

        row = wait_for(waiting_row, "the score job's last_error to name the cause", 120, node)
        assert row["state"] == "queued" and row["probability"] is None  # waits for a model
        assert "model unavailable" in row["last_error"]
        assert "no model implementation is installed" not in row["last_error"]

        proc = run_cli("status", "--json", config=node.config_path, check=False)
        assert proc.returncode == 1  # the node answers: not ready without a model
        status = json.loads(proc.stdout)
        assert status["answer"] == "not_ready"
        assert CAUSE in status["endpoint"]["node"]["checks"]["model"]["detail"]
        model = status["model"]
        assert model["available"] is False and CAUSE in model["error"], model
        assert "triage_node.score.model" in model["error"]
        assert CAUSE in status["last_error"]["message"]
        assert status["last_error"]["kind"] == "score"
        text = run_cli("status", config=node.config_path, check=False).stdout
        assert "NOT AVAILABLE" in text and CAUSE in text

    # Without the shadow the same installation describes the demo bundle as available.
    unbroken = {"PYTHONPATH": broken_simpleitk}
    proc = run_cli("status", "--json", config=node.config_path, env=unbroken, check=False)
    assert proc.returncode == 3  # the node has stopped: nothing answers
    status = json.loads(proc.stdout)
    assert status["model"]["available"] is True, status["model"]
