"""serve / work as real processes: scale-out on one database, durability, clean shutdown.

The configured model bundle does not exist yet (a site that has set the path
before copying its bundle in), so every score job decodes its instance, records
the decode facts, and then waits for a model (requeued with a long backoff,
not charged an attempt). The checks are built on that: one ``job_started``,
one ``instance_decoded`` and one ``job_retry`` per job mean it ran exactly once.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import JPEG2000Lossless
from sqlalchemy import func, select

from tests.peers import REPO, NodeProcess, base_config, free_port, storescu, wait_for, write_config
from tests.test_worker import add_instance, make_radiograph
from triage_node.config import load_settings
from triage_node.store import Event, Instance, Job, Store, open_store
from triage_node.store.jobs import claim_next_job
from triage_node.store.models import utcnow


def _config(tmp_path: Path, name: str, database_url: str = "", **sections: Any) -> Path:
    data_dir = tmp_path / "data"
    node = {"workers": 2, **sections.pop("node", {})}
    if database_url:
        node["database_url"] = database_url
    sections.setdefault("model", {"bundle": str(tmp_path / "bundle-not-copied-yet")})
    cfg = base_config(data_dir, free_port(), node=node, **sections)
    return write_config(tmp_path / f"{name}.toml", cfg)


def _wait_for(condition: Any, timeout: float, what: str, *logs: NodeProcess) -> None:
    wait_for(condition, what, timeout, *logs)


def _count(store: Store, kind: str) -> int:
    with store.read() as session:
        return int(session.scalar(select(func.count()).where(Event.kind == kind)) or 0)


def _running_jobs(store: Store) -> int:
    with store.read() as session:
        return int(session.scalar(select(func.count()).where(Job.state == "running")) or 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_work_processes_run_each_job_exactly_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("postgres").new_database() if backend == "postgresql" else ""
    # A long backoff: after its one run, each job waits for a model far beyond the test.
    cfg = _config(tmp_path, "work", url, worker={"retry_base_seconds": 3600})
    settings = load_settings(cfg)
    store = open_store(settings)
    n_jobs = 240
    job_ids = [
        add_instance(store, settings.spool_dir, rows=16, columns=16, seed=i)[1]
        for i in range(n_jobs)
    ]
    nodes = [NodeProcess(cfg, tmp_path / f"work{i}.log", command="work").start() for i in range(2)]
    try:
        _wait_for(lambda: _count(store, "job_retry") >= n_jobs, 300, "all jobs to run", *nodes)
        # Every job waits an hour now: once none is running, no worker can start one
        # again, and the clean stop below leaves every run that happened in the database.
        _wait_for(lambda: _running_jobs(store) == 0, 60, "no job left running", *nodes)
        with store.read() as session:
            next_due = session.scalar(select(func.min(Job.next_attempt_at)))
        assert next_due is not None and next_due > utcnow() + dt.timedelta(minutes=10)
        assert [n.terminate(60) for n in nodes] == [0, 0]
    finally:
        for n in nodes:
            n.kill()
    with store.read() as session:
        events = session.execute(
            select(Event.job_id, Event.kind, Event.message).where(Event.job_id.in_(job_ids))
        ).all()
        decoded = session.scalars(select(Instance.result)).all()
        states = Counter(session.scalars(select(Job.state)))
    per_job = {
        kind: Counter(j for j, k, _ in events if k == kind)
        for kind in ("job_started", "instance_decoded", "job_retry", "job_reclaimed")
    }
    for kind in ("job_started", "instance_decoded", "job_retry"):
        assert set(per_job[kind]) == set(job_ids) and set(per_job[kind].values()) == {1}, kind
    assert not per_job["job_reclaimed"]
    assert all(r and r["decoded"]["rows"] == 16 for r in decoded)
    assert states == {"queued": n_jobs}  # all waiting for a model, none lost or running
    pids = {
        re.search(r":(\d+):worker-\d+", m).group(1)  # type: ignore[union-attr]
        for _, k, m in events
        if k == "job_started"
    }
    assert len(pids) == 2, "both processes took jobs"
    store.dispose()


def test_instance_survives_sigkill_right_after_store_success(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "serve", worker={"retry_base_seconds": 3600})
    settings = load_settings(cfg)
    sop_uid = "1.2.826.0.1.3680043.8.498.4242.1"
    dicom = tmp_path / "hip.dcm"
    make_radiograph(dicom, sop_uid=sop_uid)
    node = NodeProcess(cfg, tmp_path / "serve.log", command="serve")
    # No workers in the first run: the instance must not be scored before the kill, so
    # the restart is what runs its job.
    first = _config(tmp_path, "serve-no-work", node={"workers": 1, "port": node.port})
    receive_only = NodeProcess(first, tmp_path / "receive.log", command="receive").start()
    try:
        proc = storescu(receive_only.port, dicom)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        receive_only.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        receive_only.proc.wait(30)  # type: ignore[union-attr]
    finally:
        receive_only.kill()
    store = Store(settings.database_url)  # no migration: the receiver made the schema
    with store.read() as session:
        inst = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).one()
        assert inst.state == "queued"
        assert (settings.spool_dir / inst.path).is_file()
        inst_id = inst.id
    node.start()
    try:

        def decoded() -> bool:
            with store.read() as session:
                row = session.get(Instance, inst_id)
                return bool(row and row.result and "decoded" in row.result)

        _wait_for(decoded, 60, "the restarted node to run the job", node)
        assert node.terminate(30) == 0
    finally:
        node.kill()
    with store.read() as session:
        job = session.scalars(select(Job).where(Job.instance_id == inst_id)).one()
        started = session.scalar(
            select(func.count()).where(Event.job_id == job.id, Event.kind == "job_started")
        )
        row = session.get(Instance, inst_id)
        assert row is not None
        assert started == 1 and job.state == "queued"  # ran once; now waiting for a model
        assert row.result["decoded"]["rows"] == 32 and row.state == "queued"
        assert row.last_error and "model unavailable" in row.last_error
    store.dispose()


def test_sigkill_serve_immediately_after_success(tmp_path: Path) -> None:
    """The same with the full node: killed the moment storescu reports success.

    The lease is the default 300 s: a job the kill interrupted is claimable as
    soon as the node starts again, because its holder's process is gone.
    """
    cfg = _config(tmp_path, "serve", worker={"retry_base_seconds": 3600})
    settings = load_settings(cfg)
    files = [tmp_path / f"hip{i}.dcm" for i in range(3)]
    uids = [f"1.2.826.0.1.3680043.8.498.4243.{i + 1}" for i in range(3)]
    for f, uid in zip(files, uids, strict=True):
        make_radiograph(f, sop_uid=uid)
    node = NodeProcess(cfg, tmp_path / "serve.log", command="serve").start()
    try:
        proc = storescu(node.port, *files)
        node.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert proc.returncode == 0, proc.stdout + proc.stderr
        node.proc.wait(30)  # type: ignore[union-attr]
        node.start()
        store = Store(settings.database_url)

        def all_ran() -> bool:
            with store.read() as session:
                rows = session.scalars(
                    select(Instance).where(Instance.sop_instance_uid.in_(uids))
                ).all()
                return len(rows) == 3 and all(r.result and "decoded" in r.result for r in rows)

        _wait_for(all_ran, 60, "every acknowledged instance to be processed", node)
        _wait_for(lambda: _running_jobs(store) == 0, 60, "no job left running", node)
        assert node.terminate(30) == 0
    finally:
        node.kill()
    with store.read() as session:
        rows = session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(uids))).all()
        assert all((settings.spool_dir / r.path).is_file() for r in rows)
        assert session.scalar(select(func.count()).where(Job.state == "running")) == 0
    store.dispose()


def test_jobs_of_a_dead_process_are_reclaimed_at_start_not_after_the_lease(tmp_path: Path) -> None:
    """A job left ``running`` by a killed process on this host runs again at once."""
    cfg = _config(tmp_path, "serve", worker={"retry_base_seconds": 3600})
    settings = load_settings(cfg)
    store = open_store(settings)
    _, job_id, _ = add_instance(store, settings.spool_dir, rows=16, columns=16)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_owner = f"{socket.gethostname()}:{int(gone.stdout)}:worker-1"
    live_owner = f"{socket.gethostname()}:{os.getpid()}:worker-1"  # this test: alive
    job = claim_next_job(store, dead_owner, ["score"], lease_seconds=3600)
    assert job is not None and job.id == job_id
    _, other_id, _ = add_instance(store, settings.spool_dir, name="other", rows=16, columns=16)
    other = claim_next_job(store, live_owner, ["score"], lease_seconds=3600)
    assert other is not None and other.id == other_id
    node = NodeProcess(cfg, tmp_path / "serve.log", command="serve").start()
    try:
        _wait_for(lambda: _count(store, "job_reclaimed") >= 1, 60, "the job to be reclaimed", node)
        _wait_for(lambda: _count(store, "job_retry") >= 1, 60, "the job to run", node)
        assert node.terminate(30) == 0
    finally:
        node.kill()
    with store.read() as session:
        dead_job, live_job = session.get(Job, job_id), session.get(Job, other_id)
        assert dead_job is not None and live_job is not None
        inst = session.get(Instance, dead_job.instance_id)
        assert dead_job.state == "queued" and inst is not None and "decoded" in (inst.result or {})
        # A live process's lease is left alone.
        assert live_job.state == "running" and live_job.lease_owner == live_owner
        kinds = [e.kind for e in session.scalars(select(Event).where(Event.job_id == job_id))]
    assert "job_lease_ended" in kinds and "job_reclaimed" in kinds
    store.dispose()


def test_sigterm_stops_serve_promptly_and_leaves_no_job_running(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "serve", worker={"retry_base_seconds": 3600})
    settings = load_settings(cfg)
    store = open_store(settings)
    # Big JPEG 2000 images take a while to decode, so SIGTERM finds jobs in hand.
    first = make_radiograph(
        tmp_path / "big.dcm", transfer_syntax=JPEG2000Lossless, rows=2048, columns=2048
    )
    assert first.Rows == 2048
    n_jobs = 30
    for i in range(n_jobs):
        _, _, _ = add_instance(store, settings.spool_dir, name=f"big{i}", rows=8, columns=8)
        shutil.copy(tmp_path / "big.dcm", settings.spool_dir / "test" / f"big{i}.dcm")
    node = NodeProcess(cfg, tmp_path / "serve.log", command="serve").start()
    try:
        _wait_for(lambda: _count(store, "instance_scoring") >= 3, 120, "jobs in hand", node)
        t0, stop_at = time.monotonic(), utcnow()
        rc = node.terminate(60)
        elapsed = time.monotonic() - t0
    finally:
        node.kill()
    assert rc == 0, node.log_text()[-3000:]
    assert elapsed < 20, f"took {elapsed:.1f} s to stop"
    assert _running_jobs(store) == 0
    with store.read() as session:
        scoring = session.scalar(select(func.count()).where(Instance.state == "scoring"))
        queued_jobs = session.scalar(select(func.count()).where(Job.state == "queued"))
        late_claims = session.scalar(
            select(func.count()).where(
                # A signal handler runs when the main thread next gets the GIL; a worker in a
                # long C decode can delay that by about a second.
                Event.kind == "job_started",
                Event.at > stop_at + dt.timedelta(seconds=3),
            )
        )
    assert scoring == 0 and queued_jobs == n_jobs  # every job waiting, none lost or stuck
    assert late_claims == 0, "a worker claimed a job after SIGTERM"
    assert "node stopped" in node.log_text()
    store.dispose()


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nworkers = "many"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "triage_node", "work", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "node.workers" in proc.stderr and str(bad) in proc.stderr
