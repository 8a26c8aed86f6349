"""Admin views against a running node: worklist (--json, --follow) and status, without PHI."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.dicom_files import PHI_BIRTH_DATE, PHI_ID, PHI_NAME, write_radiograph
from tests.peers import REPO, node_running, run_cli, start_process, storescu

WORKLIST_FIELDS = {
    "sop_instance_uid",
    "study_instance_uid",
    "state",
    "reason",
    "probability",
    "received_at",
    "updated_at",
}
PHI = [PHI_NAME, PHI_NAME.replace("^", " "), "Phiname", "Zebulon", PHI_ID, PHI_BIRTH_DATE]


def _worklist(node: Any, *args: str) -> list[dict[str, Any]]:
    return json.loads(run_cli("worklist", "--json", *args, config=node.config_path).stdout)


class Follower:
    """`triage-node worklist --follow --json` as a subprocess; lines arrive on a queue."""

    def __init__(self, config: Path) -> None:
        self.proc = start_process(
            [
                sys.executable,
                "-m",
                "triage_node",
                "worklist",
                "--follow",
                "--json",
                "--limit",
                "1",
                "--config",
                str(config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_event(self, timeout: float = 60, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            event = json.loads(line)  # every line is one JSON object
            self.seen.append(event)
            if all(event.get(k) == v for k, v in match.items()):
                return event
        raise AssertionError(f"no event {match} in {len(self.seen)} events: {self.seen[-5:]}")

    def stop(self) -> str:
        """Kill it; what it wrote on stderr."""
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)  # reaps it
        return err


def test_worklist_json_lists_instances_with_states_and_reasons(tmp_path: Path) -> None:
    hip = write_radiograph(tmp_path / "hip.dcm", "HIP")
    chest = write_radiograph(tmp_path / "chest.dcm", "CHEST", seed=1)
    with node_running(tmp_path) as node:
        assert storescu(node.port, tmp_path / "hip.dcm", tmp_path / "chest.dcm").returncode == 0
        rows = _worklist(node)
        assert len(rows) == 2
        for row in rows:
            assert WORKLIST_FIELDS <= row.keys()
        by_uid = {r["sop_instance_uid"]: r for r in rows}
        assert by_uid[hip.SOPInstanceUID]["study_instance_uid"] == hip.StudyInstanceUID
        assert by_uid[hip.SOPInstanceUID]["state"] in {
            "queued",
            "scoring",
            "scored",
            "not_assessable",
            "failed",
        }
        skipped = by_uid[chest.SOPInstanceUID]
        assert skipped["state"] == "skipped"
        assert "CHEST" in skipped["reason"]
        assert skipped["probability"] is None

        only_skipped = _worklist(node, "--state", "skipped")
        assert [r["sop_instance_uid"] for r in only_skipped] == [chest.SOPInstanceUID]
        assert len(_worklist(node, "--limit", "1")) == 1

        table = run_cli("worklist", config=node.config_path).stdout
        assert "skipped" in table and "CHEST" in table
        assert hip.StudyInstanceUID[-8:] in table  # shortened UIDs keep their tail


def test_status_json_counts_queue_disk_and_model(tmp_path: Path) -> None:
    for i in range(3):
        write_radiograph(tmp_path / f"hip{i}.dcm", "HIP", seed=i)
    write_radiograph(tmp_path / "chest.dcm", "CHEST", seed=9)
    with node_running(tmp_path) as node:
        files = sorted(tmp_path.glob("*.dcm"))
        assert storescu(node.port, *files).returncode == 0
        status = json.loads(run_cli("status", "--json", config=node.config_path).stdout)
        assert status["instances_total"] == 4
        assert status["instances"]["skipped"] == 1
        assert sum(status["instances"].values()) == 4
        assert status["jobs"]["score"]  # one score job per eligible instance
        assert sum(status["jobs"]["score"].values()) == 3
        assert isinstance(status["queue_depth"], int)
        assert status["free_disk_bytes"] > 0
        assert "available" in status["model"] and "bundle" in status["model"]
        assert "last_error" in status
        if status["queue_depth"]:
            assert status["oldest_waiting_seconds"] >= 0
        text = run_cli("status", config=node.config_path).stdout
        assert "instances" in text and "free disk" in text and "model" in text


def test_follow_streams_events_across_node_restart(tmp_path: Path) -> None:
    first = write_radiograph(tmp_path / "a.dcm", "HIP", seed=1)
    second = write_radiograph(tmp_path / "b.dcm", "PELVIS", seed=2)
    with node_running(tmp_path) as node:
        follower = Follower(node.config_path)
        try:
            assert storescu(node.port, tmp_path / "a.dcm").returncode == 0
            ev = follower.wait_event(sop_instance_uid=first.SOPInstanceUID)
            assert {"event_id", "at", "kind", "state", "study_instance_uid"} <= ev.keys()
            node.kill()
            time.sleep(1.0)
            node.start()
            assert storescu(node.port, tmp_path / "b.dcm").returncode == 0
            follower.wait_event(sop_instance_uid=second.SOPInstanceUID)
            ids = [e["event_id"] for e in follower.seen]
            assert ids == sorted(ids) and len(ids) == len(set(ids))  # in order, no repeats
        finally:
            follower.stop()


def test_no_patient_identifiers_in_logs_or_admin_output(tmp_path: Path) -> None:
    write_radiograph(tmp_path / "hip.dcm", "HIP")
    write_radiograph(tmp_path / "chest.dcm", "CHEST", seed=3)
    (tmp_path / "garbage.dcm").write_bytes(b"DICM" * 100)
    with node_running(tmp_path) as node:
        follower = Follower(node.config_path)
        try:
            storescu(node.port, tmp_path / "hip.dcm", tmp_path / "chest.dcm")
            storescu(node.port, tmp_path / "garbage.dcm")
            follower.wait_event(kind="job_started")  # the worker has had the instance
            time.sleep(1.0)
        finally:
            follower.stop()
        outputs = {
            "node log": node.log_text(),
            "worklist": run_cli("worklist", config=node.config_path).stdout,
            "worklist --json": run_cli("worklist", "--json", config=node.config_path).stdout,
            "status --json": run_cli("status", "--json", config=node.config_path).stdout,
            "follow": "\n".join(json.dumps(e) for e in follower.seen),
        }
    assert "sop_instance_uid" in outputs["worklist --json"]
    for where, text in outputs.items():
        for phi in PHI:
            assert phi not in text, f"{phi!r} found in {where}"
