"""The crash run behind ``bench/crash`` and ``tests/test_crash.py``.

Concurrent dcmtk ``storescu`` senders push one-image studies into a real ``triage-node
serve`` (demo model) whose results go to a real Orthanc; the node is SIGKILLed at
random moments and restarted, while images arrive and while results are being made
and delivered. Each sender is a PACS: it sends each study with a storescu process of
its own and sends it again until storescu reports success. At the end, when the
queue has drained:

- every instance some storescu saw acknowledged is in the node's store (lost: 0);
- every eligible study has exactly one SR, and one heatmap and one attention map per
  scored image in Orthanc, and Orthanc stored no object twice (duplicates: 0).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from tests.peers import (
    NodeProcess,
    OrthancServer,
    base_config,
    free_port,
    need_tool,
    write_config,
)

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
MAP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # the attention map, a Segmentation


@dataclass
class CrashReport:
    senders: int
    studies: int
    kills: int = 0
    sent: int = 0  # storescu runs (first sends and re-sends)
    acknowledged: set[str] = field(default_factory=set)
    lost: list[str] = field(default_factory=list)
    missing_results: list[str] = field(default_factory=list)
    duplicates: int = 0  # extra SR/heatmap/map versions in a study, or an object stored twice
    archive_results: int = 0
    jobs_killed_under: int = 0  # jobs whose holder process was killed while running them
    most_kills_under_one_job: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"senders                      {self.senders} x {self.studies} one-image studies",
            f"node kills (SIGKILL)         {self.kills}",
            f"instances sent (storescu)    {self.sent}  (re-sends after a failed store included)",
            f"instances acknowledged       {len(self.acknowledged)}",
            f"lost (acknowledged, absent)  {len(self.lost)}",
            f"studies missing results      {len(self.missing_results)}",
            f"result objects in Orthanc    {self.archive_results}",
            f"duplicate objects in Orthanc {self.duplicates}",
            f"jobs killed while running    {self.jobs_killed_under}  (most kills under "
            f"one job: {self.most_kills_under_one_job})",
            f"wall time                    {self.seconds:.0f} s",
        ]


def make_studies(
    sources: list[Path], out: Path, senders: int, per_sender: int, seed: int
) -> list[list[Path]]:
    """Per sender, ``per_sender`` one-image studies: the sources with new UIDs and ids,
    stored uncompressed (storescu sends what it can propose)."""
    rng = random.Random(seed)
    plans: list[list[Path]] = []
    for s in range(senders):
        folder = out / f"sender{s}"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for i in range(per_sender):
            ds = pydicom.dcmread(sources[(s * per_sender + i) % len(sources)])
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), "study", str(s), str(i)])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(seed), "series", str(s), str(i)])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), "sop", str(s), str(i)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"CRASH{s:02d}{i:04d}{rng.randrange(10**6):06d}"
            path = folder / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        plans.append(files)
    return plans


def _sender(
    port: int, files: list[Path], report: CrashReport, lock: threading.Lock, stop: threading.Event
) -> None:
    exe = need_tool("storescu")
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        while not stop.is_set():
            proc = subprocess.run(
                [
                    exe,
                    "-v",
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "TRIAGE",
                    "127.0.0.1",
                    str(port),
                    str(path),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            with lock:
                report.sent += 1
            out = proc.stdout + proc.stderr
            if proc.returncode == 0 and re.search(r"Received Store Response \(Success\)", out):
                with lock:
                    report.acknowledged.add(uid)
                break
            time.sleep(0.2)  # the node is down: a PACS retries


def run_crash(
    work: Path,
    sources: list[Path],
    *,
    senders: int = 4,
    per_sender: int = 100,
    kills: int = 5,
    seed: int = 1,
    kill_every: tuple[float, float] = (2.0, 8.0),
    drain_timeout: float = 1800,
    log: Callable[[str], None] = print,
) -> CrashReport:
    """Run the crash scenario in ``work``; return the figures (checked by the caller)."""
    started = time.monotonic()
    rng = random.Random(seed)
    plans = make_studies(sources, work / "studies", senders, per_sender, seed)
    node_port = free_port()
    archive = OrthancServer(work / "orthanc", node_port)
    config = write_config(
        work / "node.toml",
        base_config(
            work / "data",
            node_port,
            node={"ae_title": archive.node_aet, "settle_seconds": 1, "workers": 2},
            worker={"poll_seconds": 0.2, "retry_base_seconds": 1, "lease_seconds": 30},
            deliver={
                "max_attempts": 1000,
                "retry_base_seconds": 0.5,
                "retry_max_seconds": 2,
                "connection_timeout": 2,
            },
            destinations=[
                {
                    "name": "orthanc",
                    "ae_title": archive.aet,
                    "host": "127.0.0.1",
                    "port": archive.dicom_port,
                }
            ],
            logging={"format": "json", "level": "INFO"},
        ),
    )
    node = NodeProcess(config, work / "node.log")
    report = CrashReport(senders, per_sender)
    lock = threading.Lock()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(node_port, files, report, lock, stop), daemon=True)
        for files in plans
    ]
    try:
        archive.start()
        node.start()
        for t in threads:
            t.start()
        while report.kills < kills or any(t.is_alive() for t in threads):
            time.sleep(rng.uniform(*kill_every))
            if report.kills >= kills and not any(t.is_alive() for t in threads):
                break
            node.kill()
            report.kills += 1
            with lock:
                got = len(report.acknowledged)
            log(f"kill {report.kills}: {got} acknowledged so far")
            time.sleep(rng.uniform(0.0, 1.0))
            node.start()
        for t in threads:
            t.join()
        log("senders done; waiting for the queue to drain")
        _wait_drained(config, archive, node, drain_timeout)
        assert node.terminate(60) == 0
        _check(config, archive, report, plans)
    finally:
        stop.set()
        node.kill()
        archive.stop()
    report.seconds = time.monotonic() - started
    return report


def _store(config: Path) -> Any:
    from triage_node.config import load_settings
    from triage_node.store import Store

    return Store(load_settings(config).database_url)


def _wait_drained(config: Path, archive: OrthancServer, node: NodeProcess, timeout: float) -> None:
    from triage_node.store.models import Instance, InstanceState, Job, JobState

    store = _store(config)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with store.read() as s:
                open_jobs = s.scalars(
                    select(Job.id).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                ).all()
                # A scored study still inside its settle time has no report job yet.
                unreported = s.scalars(
                    select(Instance.id).where(
                        Instance.state != InstanceState.SKIPPED,
                        Instance.report_version.is_(None),
                    )
                ).all()
            if not open_jobs and not unreported:
                return
            time.sleep(1.0)
        raise AssertionError(f"queue not drained in {timeout:.0f} s\n{node.log_text()[-3000:]}")
    finally:
        store.dispose()


def _check(
    config: Path, archive: OrthancServer, report: CrashReport, plans: list[list[Path]]
) -> None:
    from triage_node.store.jobs import HOLDER_DEATHS
    from triage_node.store.models import Instance, Job

    store = _store(config)
    try:
        with store.read() as s:
            rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
            state = {uid: (r.state, r.study_instance_uid) for uid, r in rows.items()}
            deaths = [int((p or {}).get(HOLDER_DEATHS, 0)) for p in s.scalars(select(Job.payload))]
    finally:
        store.dispose()
    report.lost = sorted(uid for uid in report.acknowledged if uid not in state)
    report.jobs_killed_under = sum(1 for d in deaths if d)
    report.most_kills_under_one_job = max(deaths, default=0)
    for uid, (st, study_uid) in sorted(state.items()):
        if st not in ("scored", "not_assessable"):
            if st != "skipped":
                report.missing_results.append(f"{study_uid}: instance {st}")
            continue
        objects = [
            i
            for i in archive.study_instances(study_uid)
            if i["MainDicomTags"]["SOPInstanceUID"] != uid
        ]
        classes = sorted(
            archive.get(f"/instances/{i['ID']}/tags?simplify")["SOPClassUID"] for i in objects
        )
        n_sc, n_map = classes.count(SC_CLASS), classes.count(MAP_CLASS)
        n_sr = len(classes) - n_sc - n_map
        want = 1 if st == "scored" else 0  # a heatmap and an attention map per scored image
        # A second SR, heatmap or map (another version of a result) is a duplicate.
        report.duplicates += max(0, n_sr - 1) + max(0, n_sc - want) + max(0, n_map - want)
        if (n_sr, n_sc, n_map) != (1, want, want):
            report.missing_results.append(
                f"{study_uid}: {n_sr} SR, {n_sc} SC, {n_map} map (want 1, {want}, {want})"
            )
        report.archive_results += len(objects)
    changes = archive.get("/changes?limit=100000")["Changes"]
    new = [c["ID"] for c in changes if c["ChangeType"] == "NewInstance"]
    report.duplicates += len(new) - len(set(new))  # stored twice under one id


def small_sources(out: Path, n: int, seed: int) -> list[Path]:
    """``n`` small synthetic hips (made once in ``out``)."""
    files = sorted(out.glob("*.dcm"))
    if len(files) < n:
        shutil.rmtree(out, ignore_errors=True)
        from triage_node.synth import generate_cohort

        generate_cohort(out, n, seed=seed, size="small")
        files = sorted(out.glob("*.dcm"))
    return files[:n]
