"""No patient name, ID or birth date in logs, metrics, worklist or status output.

The node runs as a real `serve` process (logs at DEBUG, JSON lines, as under
journald) with the shipped demo model, so every stage logs: receive, score,
report, deliver. It gets the synthetic samples
(``samples/*.dcm``, regenerated into the test's directory when the checkout
has none) and one file carrying the test suite's PHI markers; their patient
names, IDs and birth dates are read from the headers and searched for in
everything an admin can see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pydicom

from tests.dicom_files import PHI_BIRTH_DATE, PHI_ID, PHI_NAME, write_radiograph
from tests.peers import (
    REPO,
    base_config,
    free_port,
    need_tool,
    run_cli,
    start_process,
    stop_process,
    write_config,
)
from tests.test_metrics_http import http_get, wait_for
from tests.test_results import storescp


def sample_files(tmp_path: Path) -> list[Path]:
    files = sorted((REPO / "samples").glob("*.dcm"))
    if not files:
        from triage_node.synth.samples import write_samples

        files = write_samples(tmp_path / "samples")
    marked = tmp_path / "marked" / "marked.dcm"
    write_radiograph(marked, "HIP")
    return [*files, marked]


def phi_strings(files: list[Path]) -> set[str]:
    """Names (whole and by component), IDs and birth dates (as stored and as ISO dates)."""
    found: set[str] = {PHI_NAME, PHI_ID, PHI_BIRTH_DATE}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        name = str(ds.get("PatientName", ""))
        pid = str(ds.get("PatientID", ""))
        birth = str(ds.get("PatientBirthDate", ""))
        found |= {name, name.replace("^", " "), pid, birth}
        if len(birth) == 8:
            found.add(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
    found |= {"Phiname", "Zebulon"}  # the marker's components are unlike any other word
    return {s for s in found if len(s) >= 4}


def test_no_patient_data_in_logs_metrics_worklist_or_status(tmp_path: Path) -> None:
    files = sample_files(tmp_path)
    phi = phi_strings(files)
    assert len(phi) >= 3 * len(files) - 5  # the samples' identifiers are really there

    archive_port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp_path / "node.toml",
        base_config(
            tmp_path / "data",
            free_port(),
            metrics={"port": metrics_port},
            destinations=[
                {
                    "name": "archive",
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": archive_port,
                }
            ],
            receive={"min_free_disk_mb": 0, "fsync": False},
        ),
    )
    log_path = tmp_path / "node.log"
    outputs: dict[str, str] = {}
    with storescp(tmp_path / "archive", archive_port), open(log_path, "wb") as log:
        node = start_process(
            [sys.executable, "-m", "triage_node", "serve", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        follow: subprocess.Popen[str] | None = None
        try:
            wait_for(
                lambda: (
                    http_get(f"http://127.0.0.1:{metrics_port}/healthz")[0] == 200
                    if _listening(metrics_port)
                    else False
                ),
                "node up",
                60,
            )
            port = int(tomllib.loads(config.read_text())["node"]["port"])
            # dcmsend proposes each file's own transfer syntax (storescu cannot send
            # JPEG-LS, RLE and JPEG 2000 files together without decompressing them)
            subprocess.run(
                [
                    need_tool("dcmsend"),
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "TRIAGE",
                    "--decompress-never",
                    "127.0.0.1",
                    str(port),
                    *map(str, files),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            follow = start_process(
                [
                    sys.executable,
                    "-m",
                    "triage_node",
                    "worklist",
                    "--follow",
                    "--json",
                    "--limit",
                    "1000",
                    "--config",
                    str(config),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
            )
            followed: list[str] = []
            out = follow.stdout
            assert out is not None
            pump = threading.Thread(target=lambda: followed.extend(out), daemon=True)
            pump.start()

            def settled() -> bool:
                s = json.loads(run_cli("status", "--json", config=config).stdout)
                events = run_cli("worklist", "--json", "--limit", "100", config=config).stdout
                return (
                    s["instances_total"] == len(files)
                    and s["queue_depth"] == 0
                    and '"delivered"' in events
                )

            wait_for(settled, "every sample processed and results delivered", 300)
            outputs["metrics"] = http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
            outputs["readyz"] = http_get(f"http://127.0.0.1:{metrics_port}/readyz")[1]
            outputs["worklist"] = run_cli("worklist", "--limit", "100", config=config).stdout
            outputs["worklist --json"] = run_cli(
                "worklist", "--json", "--limit", "100", config=config
            ).stdout
            outputs["status"] = run_cli("status", config=config).stdout
            outputs["status --json"] = run_cli("status", "--json", config=config).stdout
            # Every event up to the deliveries has streamed out before Ctrl-C is sent.
            wait_for(
                lambda: any("delivered" in line for line in followed),
                "worklist --follow to print the delivery events",
                60,
            )
            follow.send_signal(signal.SIGINT)  # as Ctrl-C would
            follow.wait(timeout=30)
            pump.join(timeout=30)
            outputs["worklist --follow --json"] = "".join(followed)
            assert follow.returncode == 130  # the interrupt ended it (128 + SIGINT)
        finally:
            if follow is not None:
                stop_process(follow)
            stop_process(node, timeout=60)
    outputs["log"] = log_path.read_text(errors="replace")

    # the outputs are not empty: they talk about these very instances, by UID
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert all(uid in outputs["log"] for uid in uids)
    assert all(uid in outputs["worklist --json"] for uid in uids)
    states = {row["state"] for row in json.loads(outputs["worklist --json"])}
    assert {"scored", "skipped"} <= states, states
    assert "triage_instances_total" in outputs["metrics"]
    events = [
        json.loads(line)
        for line in outputs["worklist --follow --json"].splitlines()
        if line.startswith("{")
    ]
    kinds = {e["kind"] for e in events}
    assert {
        "association_accepted",
        "received",
        "skipped",
        "instance_scored",
        "study_reported",
        "object_sent",
        "study_delivered",
    } <= kinds, kinds
    sent = [e for e in events if e["kind"] == "object_sent"]
    assert all(e["data"]["destination"] == "archive" and e["sop_instance_uid"] for e in sent)
    assert os.path.getsize(log_path) > 10_000  # DEBUG: every stage had its say

    for where, text in outputs.items():
        leaked = sorted(s for s in phi if s in text)
        assert not leaked, f"patient data in {where}: {leaked}"


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
