"""The worker and the score job, in process, on SQLite and PostgreSQL, with real DICOM files.

No model bundle exists yet, so the model path is exercised two ways: the real
``load_model`` (which raises ModelUnavailable: jobs must wait, not be lost),
and a test double patched in here (never shipped) for scored / not assessable.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from sqlalchemy import select

from tests.clock import MovableClock
from tests.peers import wait_for
from triage_node.assessment import ImageAssessment, ModelUnavailable, SideAssessment
from triage_node.config import Settings
from triage_node.store import Event, Instance, Job, Store, Study, open_store
from triage_node.store.clock import Clock
from triage_node.store.jobs import claim_next_job, enqueue_job
from triage_node.store.models import utcnow
from triage_node.work import score as score_module
from triage_node.work.worker import Worker, default_handlers, owner_id

CRImageStorage = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage

# --- helpers shared with test_serve ------------------------------------------------------


def make_radiograph(
    path: Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
    rows: int = 32,
    columns: int = 24,
    study_uid: str | None = None,
    sop_uid: str | None = None,
    seed: int = 0,
) -> Dataset:
    """Write a small, valid CR hip radiograph (12-bit MONOCHROME2) in ``transfer_syntax``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Secret^Patient"
    ds.PatientID = "PID-SECRET-42"
    ds.PatientBirthDate = "19400101"
    ds.Modality = "CR"
    ds.BodyPartExamined = "HIP"
    ds.ViewPosition = "AP"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    if transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def add_instance(
    store: Store, spool_dir: Path, *, name: str | None = None, max_attempts: int = 5, **kw: Any
) -> tuple[int, int, str]:
    """Spool a radiograph and create its Study, Instance (queued) and score Job rows.

    Returns (instance id, job id, SOP Instance UID).
    """
    sop_uid = generate_uid()
    rel = Path("test") / f"{name or sop_uid}.dcm"
    ds = make_radiograph(spool_dir / rel, sop_uid=sop_uid, **kw)
    with store.write() as session:
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID)
        ).first()
        if study is None:
            study = Study(study_instance_uid=ds.StudyInstanceUID)
            session.add(study)
            session.flush()
        inst = Instance(
            sop_instance_uid=sop_uid,
            sop_class_uid=ds.SOPClassUID,
            study_id=study.id,
            study_instance_uid=ds.StudyInstanceUID,
            series_instance_uid=ds.SeriesInstanceUID,
            modality="CR",
            body_part="HIP",
            view_position="AP",
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            path=str(rel),
            size_bytes=(spool_dir / rel).stat().st_size,
            received_at=utcnow(),
            updated_at=utcnow(),
            state="queued",
        )
        session.add(inst)
        session.flush()
        job = enqueue_job(session, "score", instance_id=inst.id, max_attempts=max_attempts)
        return inst.id, job.id, sop_uid


def node_settings(tmp_path: Path, database_url: str, **worker: Any) -> Settings:
    return Settings.model_validate(
        {
            "node": {"data_dir": str(tmp_path / "data"), "database_url": database_url},
            "worker": {
                "poll_seconds": 0.05,
                "retry_base_seconds": 0.01,
                "retry_max_seconds": 0.05,
                "lease_seconds": 30,
                **worker,
            },
        }
    )


def snapshot(store: Store, model: type, row_id: int) -> Any:
    with store.read() as session:
        row = session.get(model, row_id)
        assert row is not None
        session.expunge(row)
        return row


def events_for(store: Store, job_id: int) -> list[Event]:
    with store.read() as session:
        rows = list(session.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id)))
        for r in rows:
            session.expunge(r)
        return rows


# --- the model double (tests only) --------------------------------------------------------


class DoubleModel:
    name = "double"
    version = "0.0-test"
    synthetic = True
    threshold = 0.5

    def __init__(
        self, left: float | None, right: float | None, error: Exception | None = None
    ) -> None:
        self.left, self.right, self.error = left, right, error
        self.calls = 0

    def assess(self, dataset: pydicom.Dataset) -> ImageAssessment:
        self.calls += 1
        assert dataset.pixel_array.shape == (dataset.Rows, dataset.Columns)
        if self.error is not None:
            raise self.error
        sides = tuple(
            SideAssessment(side, p, None if p is not None else "femur not found")  # type: ignore[arg-type]
            for side, p in (("left", self.left), ("right", self.right))
        )
        return ImageAssessment(
            sides=sides,
            model_name=self.name,
            model_version=self.version,
            threshold=self.threshold,
            synthetic_model=True,
        )


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return node_settings(tmp_path, database_url)


@pytest.fixture
def store(settings: Settings) -> Store:
    s = open_store(settings)
    yield s
    s.dispose()


def make_worker(settings: Settings, store: Store, clock: Clock = utcnow) -> Worker:
    return Worker(settings, store, default_handlers(settings), "worker-t", threading.Event(), clock)


def use_model(monkeypatch: pytest.MonkeyPatch, model: Any) -> None:
    monkeypatch.setattr(score_module, "load_model", lambda settings: model)


# --- tests --------------------------------------------------------------------------------


def test_owner_id_is_host_pid_thread() -> None:
    host, pid, thread = owner_id("worker-3").split(":")
    assert host and int(pid) > 0 and thread == "worker-3"


def test_model_unavailable_job_waits_with_decode_recorded(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    settings.model.bundle = str(tmp_path / "bundle-not-copied-yet")  # configured, missing
    inst_id, job_id, uid = add_instance(store, settings.spool_dir, max_attempts=1)
    worker = make_worker(settings, store)
    assert worker.run_one() is True
    inst = snapshot(store, Instance, inst_id)
    assert inst.state == "queued"
    assert inst.last_error.startswith(f"job {job_id}: model unavailable: ")
    assert inst.result["decoded"] == {
        "rows": 32,
        "columns": 24,
        "dtype": "uint16",
        "photometric": "MONOCHROME2",
        "transfer_syntax": ExplicitVRLittleEndian,
    }
    assert (inst.rows, inst.columns) == (32, 24)
    job = snapshot(store, Job, job_id)
    # Not charged an attempt: with max_attempts=1 it would otherwise be failed now.
    assert job.state == "queued" and job.attempts == 0
    assert job.next_attempt_at > job.updated_at
    kinds = [e.kind for e in events_for(store, job_id)]
    assert kinds == [
        "job_queued",
        "job_started",
        "instance_scoring",
        "instance_decoded",
        "job_retry",
        "instance_queued",
    ]
    assert all(
        e.sop_instance_uid == uid
        for e in events_for(store, job_id)
        if e.kind.startswith("instance_")
    )
    # Waiting again does not reload the model at once (at most once per retry_base_seconds)
    # and the delay grows with consecutive failures.
    cache = worker.handlers["score"].models  # type: ignore[attr-defined]
    with pytest.raises(ModelUnavailable):
        cache.get()


def test_scored_with_per_side_result(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DoubleModel(0.2, 0.7)
    use_model(monkeypatch, model)
    inst_id, job_id, _ = add_instance(store, settings.spool_dir)
    worker = make_worker(settings, store)
    assert worker.run_one() is True
    inst = snapshot(store, Instance, inst_id)
    assert inst.state == "scored" and inst.probability == pytest.approx(0.7)
    sides = {s["side"]: s for s in inst.result["assessment"]["sides"]}
    assert sides["left"]["probability"] == 0.2 and sides["right"]["probability"] == 0.7
    assert inst.result["decoded"]["rows"] == 32 and inst.last_error is None
    assert snapshot(store, Job, job_id).state == "done"
    assert [e.kind for e in events_for(store, job_id)][-2:] == ["instance_scored", "job_done"]
    # The model is loaded once per process and reused.
    add_instance(store, settings.spool_dir)
    assert worker.run_one() is True and model.calls == 2
    assert worker.run_one() is False


def test_not_assessable_records_reason(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_model(monkeypatch, DoubleModel(None, None))
    inst_id, job_id, _ = add_instance(store, settings.spool_dir)
    make_worker(settings, store).run_one()
    inst = snapshot(store, Instance, inst_id)
    assert inst.state == "not_assessable" and inst.probability is None
    assert inst.reason == "left: femur not found; right: femur not found"
    assert snapshot(store, Job, job_id).state == "done"


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]
)
def test_decodes_transfer_syntaxes(tmp_path: Path, syntax: str) -> None:
    settings = node_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    store = open_store(settings)
    inst_id, _, _ = add_instance(
        store, settings.spool_dir, transfer_syntax=syntax, rows=64, columns=48
    )
    make_worker(settings, store).run_one()
    inst = snapshot(store, Instance, inst_id)
    assert inst.result["decoded"]["transfer_syntax"] == syntax
    assert (inst.result["decoded"]["rows"], inst.result["decoded"]["columns"]) == (64, 48)
    store.dispose()


def test_undecodable_fails_permanently(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DoubleModel(0.5, 0.5)
    use_model(monkeypatch, model)
    inst_id, job_id, uid = add_instance(store, settings.spool_dir, name="broken")
    path = settings.spool_dir / "test" / "broken.dcm"
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    ds.save_as(path)
    make_worker(settings, store).run_one()
    inst = snapshot(store, Instance, inst_id)
    job = snapshot(store, Job, job_id)
    assert inst.state == "failed" and "pixel data does not decode" in inst.reason
    assert job.state == "failed" and job.attempts == 1 and model.calls == 0
    assert "SECRET" not in inst.reason and uid  # errors carry ids, never patient data


def test_missing_spool_file_fails_permanently(settings: Settings, store: Store) -> None:
    inst_id, job_id, _ = add_instance(store, settings.spool_dir, name="gone")
    (settings.spool_dir / "test" / "gone.dcm").unlink()
    make_worker(settings, store).run_one()
    assert snapshot(store, Job, job_id).state == "failed"
    inst = snapshot(store, Instance, inst_id)
    assert inst.state == "failed" and "test/gone.dcm is missing" in inst.reason


def test_transient_errors_retry_with_backoff_then_fail(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DoubleModel(0.5, 0.5, error=RuntimeError("out of memory in the model"))
    use_model(monkeypatch, model)
    inst_id, job_id, _ = add_instance(store, settings.spool_dir, max_attempts=3)
    worker = make_worker(settings, store)
    states = []
    for _ in range(3):
        with store.write() as session:  # make the retry due now instead of after the backoff
            session.get(Job, job_id).next_attempt_at = utcnow()  # type: ignore[union-attr]
        assert worker.run_one() is True
        states.append(
            (snapshot(store, Job, job_id).state, snapshot(store, Instance, inst_id).state)
        )
    assert states == [("queued", "queued"), ("queued", "queued"), ("failed", "failed")]
    kinds = [e.kind for e in events_for(store, job_id)]
    assert kinds.count("job_retry") == 2 and kinds.count("job_failed") == 1
    retry = [e for e in events_for(store, job_id) if e.kind == "job_retry"]
    assert all(0.005 <= e.data["retry_after"] <= 0.05 for e in retry)
    inst = snapshot(store, Instance, inst_id)
    assert "RuntimeError: out of memory in the model" in inst.reason
    assert model.calls == 3


def test_stopping_worker_releases_job(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_model(monkeypatch, DoubleModel(0.5, 0.5))
    inst_id, job_id, _ = add_instance(store, settings.spool_dir)
    worker = make_worker(settings, store)
    import triage_node.work.worker as worker_module

    claim = worker_module.claim_next_job

    def claim_then_stop(*args: Any, **kw: Any) -> Any:
        job = claim(*args, **kw)
        worker.stopping.set()  # the stop arrives while the job is in hand
        return job

    monkeypatch.setattr(worker_module, "claim_next_job", claim_then_stop)
    assert worker.run_one() is True
    job = snapshot(store, Job, job_id)
    assert job.state == "queued" and job.attempts == 0 and job.lease_owner is None
    assert snapshot(store, Instance, inst_id).state == "queued"
    assert [e.kind for e in events_for(store, job_id)][-2:] == ["job_released", "instance_queued"]


def test_job_reclaimed_past_its_budget_is_failed(settings: Settings, store: Store) -> None:
    inst_id, job_id, _ = add_instance(store, settings.spool_dir, max_attempts=1)
    clock = MovableClock()
    claimed = claim_next_job(store, "dying-worker", ["score"], lease_seconds=60, clock=clock)
    assert claimed is not None
    clock.advance(61)  # its worker "died": the lease expires with the only attempt used
    make_worker(settings, store, clock).run_one()
    assert snapshot(store, Job, job_id).state == "failed"
    inst = snapshot(store, Instance, inst_id)
    assert inst.state == "failed" and "died" in inst.reason


class NativePanic(BaseException):
    """What a Rust decoder's panic looks like from Python (pyo3's PanicException)."""


def test_a_native_panic_fails_the_job_and_the_worker_lives_on(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_model(monkeypatch, DoubleModel(0.5, 0.5, error=NativePanic("segment too long")))  # type: ignore[arg-type]
    _, job_id, _ = add_instance(store, settings.spool_dir)
    worker = make_worker(settings, store)
    assert worker.run_one() is True  # returns: the panic did not escape the worker
    job = snapshot(store, Job, job_id)
    assert job.state == "queued" and "NativePanic: segment too long" in (job.last_error or "")


def test_a_job_whose_holder_keeps_dying_is_failed(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash loop does not use up a job's attempts, but ten deaths under it fail it."""
    from triage_node.store.jobs import HOLDER_DEATH_LIMIT, expire_dead_leases

    model = DoubleModel(0.5, 0.5)
    use_model(monkeypatch, model)
    inst_id, job_id, _ = add_instance(store, settings.spool_dir, max_attempts=2)
    for _ in range(HOLDER_DEATH_LIMIT):
        assert claim_next_job(store, "host:1:worker-1", ["score"], 3600) is not None
        assert expire_dead_leases(store, "host", lambda pid: True) == [job_id]
        with store.write() as session:  # skip the growing wait after each death
            row = session.get(Job, job_id)
            row.lease_expires_at = row.next_attempt_at = utcnow()
    job = snapshot(store, Job, job_id)
    assert job.state == "running" and job.attempts == 0  # no attempt charged
    worker = make_worker(settings, store)
    assert worker.run_one() is True
    job = snapshot(store, Job, job_id)
    assert job.state == "failed" and "died 10 times" in (job.last_error or "")
    assert snapshot(store, Instance, inst_id).state == "failed"
    assert model.calls == 0


def test_an_idle_worker_takes_a_job_queued_in_its_process_at_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job committed in this process wakes idle workers; they do not wait for their poll.

    The poll interval is an hour: without the wake-up the job would not be claimed
    within the test's wait. A second job queued while the worker runs the first
    is taken too (the generation read before the claim closes that gap).
    """
    settings = node_settings(tmp_path, database_url, poll_seconds=3600)
    store = open_store(settings)
    use_model(monkeypatch, DoubleModel(0.2, 0.7))
    stopping = threading.Event()
    worker = Worker(settings, store, default_handlers(settings), "worker-w", stopping)
    worker.start()
    try:
        wait_for(lambda: worker.thread.is_alive(), "the worker thread")
        for n in (1, 2):
            inst_id, job_id, _ = add_instance(store, settings.spool_dir)
            wait_for(
                lambda job_id=job_id: snapshot(store, Job, job_id).state == "done",
                f"job {n} claimed and done by the idle worker",
                timeout=60,
            )
            assert snapshot(store, Instance, inst_id).state == "scored"
    finally:
        stopping.set()
        store.job_signal.notify()  # an idle worker stops at once, not after its hour
        worker.thread.join(30)
        store.dispose()
    assert not worker.thread.is_alive()
