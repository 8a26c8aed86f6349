"""Admin views against a running node: worklist (--json, --wide, --follow), status, no PHI."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom

from tests.dicom_files import PHI_BIRTH_DATE, PHI_ID, PHI_NAME, make_radiograph, write_radiograph
from tests.peers import (
    REPO,
    dcmtk_storescp,
    node_running,
    run_cli,
    start_process,
    storescu,
    wait_for,
)

SAMPLES = REPO / "samples"

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
    """`triage-node worklist --follow [--json]` as a subprocess; lines arrive on a queue."""

    def __init__(self, config: Path, *, as_json: bool = True, limit: int = 1000) -> None:
        self.as_json = as_json
        self.proc = start_process(
            [
                sys.executable,
                "-m",
                "triage_node",
                "worklist",
                "--follow",
                *(["--json"] if as_json else []),
                "--limit",
                # The backlog shown at start covers every event of a test: the follower's
                # own start-up may come after the node has handled the first image.
                str(limit),
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
        self.text: list[str] = []
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

    def wait_line(self, *words: str, timeout: float = 60) -> str:
        """The next text line holding every one of ``words``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.text.append(line)
            if all(w in line for w in words):
                return line
        raise AssertionError(f"no line with {words} in {len(self.text)} lines: {self.text[-5:]}")

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
            node.kill()  # the follower keeps going while no node runs, then picks up again
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
            follower.wait_event(kind="job_done")  # ... and logged what it did with it
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


def _short(uid: str) -> str:
    """How the default table shows a UID: its last 13 characters."""
    return "…" + uid[-13:]


def test_worklist_shows_decision_sides_threshold_and_every_destination(tmp_path: Path) -> None:
    """Three sample hips scored by the demo model and delivered to a dcmtk archive and to a
    destination whose host does not resolve: the worklist shows each image's value, the
    decision in words, both sides and the threshold, and one line per destination with its
    state, attempts and untruncated last error; study events carry their study UID."""
    files = {
        "scored": SAMPLES / "01_osteoporotic_jpegls.dcm",
        "one_side": SAMPLES / "06_unilateral_left_implicit.dcm",
        "prosthesis": SAMPLES / "07_bilateral_prosthesis.dcm",
    }
    uids = {k: pydicom.dcmread(f, stop_before_pixels=True) for k, f in files.items()}
    with dcmtk_storescp(out_dir=tmp_path / "archive") as archive_port:
        destinations = [
            {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive_port},
            {"name": "backup", "ae_title": "BACKUP", "host": "no-such-host.invalid", "port": 104},
        ]
        deliver = {"max_attempts": 2, "retry_base_seconds": 0.5, "retry_max_seconds": 1}
        with node_running(tmp_path, destinations=destinations, deliver=deliver) as node:
            events = Follower(node.config_path)
            lines = Follower(node.config_path, as_json=False)
            try:
                assert storescu(node.port, files["one_side"]).returncode == 0
                jpegls = (files["scored"], files["prosthesis"])
                assert storescu(node.port, *jpegls, extra=("-xt",)).returncode == 0

                def settled() -> list[dict[str, Any]]:
                    rows = _worklist(node)
                    done = [
                        r
                        for r in rows
                        if {d["state"] for d in r["deliveries"]} == {"delivered", "failed"}
                    ]
                    return rows if len(done) == 3 else []

                rows = wait_for(settled, "three studies delivered to one destination", 300, node)
                study = uids["scored"].StudyInstanceUID
                # study events and the report and deliver jobs' events name their study
                events.wait_event(kind="delivery_failed", study_instance_uid=study)  # the last
                of_study = [e for e in events.seen if e["study_instance_uid"] == study]
                kinds = {e["kind"] for e in of_study}
                assert {"study_settled", "study_reported", "job_failed"} <= kinds
                report_job = next(e for e in of_study if e["kind"] == "study_reported")["job_id"]
                assert {"job_queued", "job_started", "job_done"} <= {
                    e["kind"] for e in of_study if e["job_id"] == report_job
                }
                assert lines.wait_line("study_reported", f"study={_short(study)}")
            finally:
                events.stop()
                lines.stop()
            table = run_cli("worklist", config=node.config_path).stdout
            wide = run_cli("worklist", "--wide", config=node.config_path).stdout

    by_uid = {r["sop_instance_uid"]: r for r in rows}
    row = {k: by_uid[ds.SOPInstanceUID] for k, ds in uids.items()}
    for r in rows:
        assert WORKLIST_FIELDS | {"delivery_state", "last_error"} <= r.keys()
    for key in ("scored", "one_side"):
        r = row[key]
        assert r["state"] == "scored"
        sides = {s["side"]: s for s in r["sides"]}
        assert set(sides) == {"left", "right"}
        assessed = [s for s in sides.values() if s["probability"] is not None]
        # the decision in words is the decision rule's: positive iff an assessed side is
        assert r["decision"] == (
            "DXA recommended" if any(s["positive"] for s in assessed) else "low likelihood"
        )
        assert (r["probability"] >= r["threshold"]) == (r["decision"] == "DXA recommended")
        shown = "/".join(
            "-" if sides[s]["probability"] is None else f"{sides[s]['probability']:.2f}"
            for s in ("left", "right")
        )
        line = next(x for x in table.splitlines() if _short(r["sop_instance_uid"]) in x)
        for cell in (f"{r['probability']:.2f}", r["decision"], shown, f"{r['threshold']:.2f}"):
            assert cell in line
    assert any(s["not_assessable_reason"] for s in row["one_side"]["sides"])  # shown as "-"
    prosthesis = row["prosthesis"]
    assert (prosthesis["state"], prosthesis["decision"]) == ("not_assessable", "not assessable")
    assert "prosthesis or metal in the hip" in prosthesis["reason"]

    for r in rows:
        assert r["delivery_state"] == "failed"
        archive, backup = r["deliveries"]
        assert (archive["destination"], archive["state"], archive["last_error"]) == (
            "archive",
            "delivered",
            None,
        )
        assert archive["delivered"] == archive["objects"] >= 1 and archive["attempts"] >= 1
        assert (backup["destination"], backup["state"], backup["attempts"]) == (
            "backup",
            "failed",
            2,
        )
        assert backup["delivered"] == 0 and backup["last_error"]

    # the default table: every destination on its own line, reasons and errors in full,
    # UIDs shortened to their tails; --wide: the same with full UIDs
    for r in rows:
        assert r["reason"] is None or r["reason"] in table
    error = row["scored"]["deliveries"][1]["last_error"]
    assert table.count("-> archive (ARCHIVE@127.0.0.1") == 3
    assert table.count("-> backup (BACKUP@no-such-host.invalid:104): failed") == 3
    assert f"2 attempts): {error}" in table
    for ds in uids.values():
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert _short(uid) in table and uid not in table
            assert uid in wide
    assert f"2 attempts): {error}" in wide and prosthesis["reason"] in wide


def test_refused_instance_is_listed_with_its_status_and_never_counted(tmp_path: Path) -> None:
    """A C-STORE refused with 0xC220 (Pixel Data shorter than the image) is a `refused` row
    with its status, untruncated reason and sender; it is not an instance: no job, not in
    the received counts."""
    # the stored instance is not eligible, so nothing scores and the states stay put
    stored = write_radiograph(tmp_path / "chest.dcm", "CHEST", seed=4)
    short = make_radiograph("HIP", seed=6)
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    short.save_as(tmp_path / "short.dcm", enforce_file_format=True)
    with node_running(tmp_path) as node:
        proc = storescu(node.port, tmp_path / "short.dcm")
        assert "Received Store Response (Success)" not in proc.stdout + proc.stderr
        assert storescu(node.port, tmp_path / "chest.dcm").returncode == 0
        rows = _worklist(node)
        only_refused = _worklist(node, "--state", "refused")
        skipped = _worklist(node, "--state", "skipped")
        status = json.loads(run_cli("status", "--json", config=node.config_path).stdout)
        table = run_cli("worklist", config=node.config_path).stdout
        wide = run_cli("worklist", "--wide", config=node.config_path).stdout

    assert [r["state"] for r in rows] == ["skipped", "refused"]  # newest first
    refused = rows[1]
    assert WORKLIST_FIELDS <= refused.keys()
    assert refused["sop_instance_uid"] == short.SOPInstanceUID
    assert refused["study_instance_uid"] == short.StudyInstanceUID
    assert refused["refusal"]["status"] == "0xC220"
    assert refused["refusal"]["status_code"] == 0xC220
    assert refused["refusal"]["peer_host"] == "127.0.0.1"
    assert refused["calling_ae"] == "STORESCU"
    assert "Pixel Data" in refused["reason"]
    assert refused["probability"] is None and refused["deliveries"] == []
    assert only_refused == [refused]
    assert [r["sop_instance_uid"] for r in skipped] == [stored.SOPInstanceUID]
    # not an instance: not counted as received, no job to score or deliver it
    assert (status["instances_total"], status["instances"]) == (1, {"skipped": 1})
    assert status["jobs"] == {}

    line = next(x for x in table.splitlines() if "refused" in x)
    assert f"0xC220 {refused['reason']} (from STORESCU@127.0.0.1)" in line
    assert _short(short.SOPInstanceUID) in line and short.SOPInstanceUID not in table
    assert short.SOPInstanceUID in wide and short.StudyInstanceUID in wide
