"""Settle, report and deliver jobs in process, on SQLite and PostgreSQL, with real peers.

No model is needed: instance rows carry the score stage's output (the
assessment JSON) and real spool files, as the score job leaves them. Delivery
goes to dcmtk's storescp (``+uf``: every received object is its own file, so a
duplicate would show) and to a pynetdicom SCP that refuses one SOP class.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import SegmentationStorage
from sqlalchemy import func, select

from tests.clock import MovableClock
from tests.dicom_files import make_radiograph
from tests.peers import dcmtk_storescp, free_port, start_archive_scp
from tests.test_report import COLUMNS, ROWS, assessment
from triage_node.assessment import ImageAssessment
from triage_node.config import Settings
from triage_node.report.heatmap import build_heatmap, output_size, render_heatmap
from triage_node.report.results import (
    assessment_from_json,
    build_study_results,
    load_cams,
    load_display,
    save_cams,
)
from triage_node.report.uids import attention_map_uids, heatmap_uids, study_report_uids
from triage_node.store import Clock, Store, open_store
from triage_node.store.models import (
    Delivery,
    Event,
    Instance,
    Job,
    Result,
    Study,
    utcnow,
)
from triage_node.telemetry.logs import setup_logging
from triage_node.work.report import content_datetime_for, load_sources
from triage_node.work.retention import study_files
from triage_node.work.study import settle_studies
from triage_node.work.worker import Worker, default_handlers

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


# --- helpers ------------------------------------------------------------------------------


def node_settings(
    tmp_path: Path, database_url: str, destinations: list[dict[str, Any]] = (), **deliver: Any
) -> Settings:
    return Settings.model_validate(
        {
            "node": {
                "data_dir": str(tmp_path / "data"),
                "database_url": database_url,
                "settle_seconds": 5,
            },
            "worker": {
                "poll_seconds": 0.05,
                "retry_base_seconds": 0.01,
                "retry_max_seconds": 0.05,
                "lease_seconds": 30,
            },
            "deliver": {
                "retry_base_seconds": 0.2,
                "retry_max_seconds": 0.4,
                "max_attempts": 5,
                "connection_timeout": 5,
                "acse_timeout": 10,
                "dimse_timeout": 10,
                "network_timeout": 10,
                **deliver,
            },
            "receive": {"fsync": False},
            "destinations": list(destinations),
        }
    )


def add_source(
    store: Store,
    settings: Settings,
    study_uid: str,
    seed: int,
    *,
    state: str = "scored",
    result: ImageAssessment | None = None,
    own_result: bool = False,
    dataset: pydicom.Dataset | None = None,
) -> tuple[int, pydicom.Dataset]:
    """Spool a radiograph and record it as the receiver and score job would have."""
    ds = dataset or make_radiograph(rows=ROWS, columns=COLUMNS, study_uid=study_uid, seed=seed)
    rel = f"{study_uid}/{ds.SOPInstanceUID}.dcm"
    path = settings.spool_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    if result is None and state == "scored":
        result = assessment(0.73, 0.21)
    elif result is None and state == "not_assessable":
        result = assessment("femur not found", "femur not found")
    now = utcnow()
    with store.write() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
        if study is None:
            study = Study(
                study_instance_uid=study_uid, created_at=now, updated_at=now, last_instance_at=now
            )
            session.add(study)
            session.flush()
        study.last_instance_at = now
        inst = Instance(
            sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID,
            study_id=study.id,
            study_instance_uid=study_uid,
            series_instance_uid=ds.SeriesInstanceUID,
            modality=ds.Modality,
            body_part=ds.get("BodyPartExamined"),
            view_position="AP",
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            path=rel,
            size_bytes=path.stat().st_size,
            own_result=own_result,
            received_at=now,
            updated_at=now,
            state=state,
            reason="our own result object" if own_result else None,
            probability=result.probability if result else None,
            result={"assessment": result.to_json()} if result else None,
        )
        session.add(inst)
        session.flush()
        return inst.id, ds


def later(settings: Settings, seconds: float = 1.0) -> dt.datetime:
    """A clock reading past the settle time of everything received so far."""
    return utcnow() + dt.timedelta(seconds=settings.node.settle_seconds + seconds)


def run_jobs(settings: Settings, store: Store, limit: int = 50, clock: Clock = utcnow) -> int:
    """Run jobs due by ``clock`` in this process until none is due; returns how many ran."""
    worker = Worker(
        settings, store, default_handlers(settings), "worker-t", threading.Event(), clock
    )
    ran = 0
    while ran < limit and worker.run_one():
        ran += 1
    return ran


def rows(store: Store, model: type, *where: Any) -> list[Any]:
    with store.read() as session:
        found = list(session.scalars(select(model).where(*where).order_by(model.id)))
        for r in found:
            session.expunge(r)
        return found


def study_row(store: Store, uid: str) -> Study:
    return rows(store, Study, Study.study_instance_uid == uid)[0]


def received_uids(directory: Path) -> list[str]:
    return sorted(
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        for p in directory.iterdir()
        if p.is_file()
    )


def storescp(out_dir: Path, port: int | None = None, *extra: str) -> AbstractContextManager[int]:
    """dcmtk storescp writing each received object to its own file (``+uf``: a second copy
    of the same SOP Instance UID would be a second file); yields its port."""
    return dcmtk_storescp("+uf", *extra, port=port, out_dir=out_dir)


def archive(port: int, name: str = "archive") -> dict[str, Any]:
    return {"name": name, "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": port}


@pytest.fixture
def study_uid() -> str:
    return pydicom.uid.generate_uid()


@contextmanager
def opened(settings: Settings) -> Iterator[Store]:
    store = open_store(settings)
    try:
        yield store
    finally:
        store.dispose()


# --- settling -----------------------------------------------------------------------------


def test_study_settles_after_quiet_time_once_every_instance_is_final(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    settings = node_settings(tmp_path, database_url)
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1)
        waiting_id, _ = add_source(store, settings, study_uid, 2, state="queued", result=None)
        assert settle_studies(settings, store, now=utcnow()) == []  # not quiet yet
        assert settle_studies(settings, store, now=later(settings)) == []  # one still queued
        with store.write() as session:
            session.get(Instance, waiting_id).state = "not_assessable"
        assert (
            settle_studies(settings, store, now=utcnow() + dt.timedelta(seconds=4)) == []
        )  # 4 s < 5 s
        assert settle_studies(settings, store, now=later(settings)) == [(study_uid, 1)]
        assert settle_studies(settings, store, now=later(settings, 60)) == []
        jobs = rows(store, Job, Job.kind == "report")
        assert [(j.payload, j.dedup_key is not None) for j in jobs] == [
            ({"report_version": 1}, True)
        ]
        study = study_row(store, study_uid)
        assert (study.state, study.report_version) == ("reporting", 1)
        assert {i.report_version for i in rows(store, Instance)} == {1}


def test_only_skipped_instances_never_make_a_report(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    settings = node_settings(tmp_path, database_url)
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1, state="skipped", result=None)
        assert settle_studies(settings, store, now=later(settings)) == []


def test_concurrent_settle_checks_enqueue_one_report(tmp_path: Path, database_url: str) -> None:
    settings = node_settings(tmp_path, database_url)
    with opened(settings) as store:
        uids = [pydicom.uid.generate_uid() for _ in range(5)]
        for n, uid in enumerate(uids):
            add_source(store, settings, uid, n)
        stores = [open_store(settings, migrate=False) for _ in range(4)]
        when = later(settings)
        barrier = threading.Barrier(len(stores))
        found: list[list[tuple[str, int]]] = []

        def check(s: Store) -> None:
            barrier.wait()
            found.append(settle_studies(settings, s, now=when))

        threads = [threading.Thread(target=check, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in stores:
            s.dispose()
        assert sorted(x for f in found for x in f) == sorted((u, 1) for u in uids)
        with store.read() as session:
            assert session.scalar(
                select(func.count()).select_from(Job).where(Job.kind == "report")
            ) == len(uids)


# --- report -------------------------------------------------------------------------------


def test_report_writes_sr_heatmaps_and_map_and_queues_one_delivery_per_destination(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    settings = node_settings(
        tmp_path, database_url, [archive(free_port(), "pacs"), archive(free_port(), "backup")]
    )
    with opened(settings) as store:
        first_id, first = add_source(store, settings, study_uid, 1)
        _, second = add_source(store, settings, study_uid, 2, result=assessment(0.2, 0.3))
        _, unassessable = add_source(store, settings, study_uid, 3, state="not_assessable")
        add_source(store, settings, study_uid, 4, state="skipped", result=None)  # e.g. a chest
        _, failed = add_source(store, settings, study_uid, 5, state="failed", result=None)
        rng = np.random.default_rng(0)
        cams = {"left": rng.random((ROWS, COLUMNS)), "right": rng.random((ROWS, COLUMNS))}
        save_cams(settings.spool_dir / study_uid / f"{first.SOPInstanceUID}.cam.npz", cams)

        settle_studies(settings, store, now=later(settings))
        assert run_jobs(settings, store, limit=1) == 1  # the report job only

        results = rows(store, Result)
        # one heatmap per scored image; an attention map for the one with CAMs
        assert [r.kind for r in results] == ["SR", "SC", "SC", "MAP"]
        reported = [first.SOPInstanceUID, second.SOPInstanceUID, unassessable.SOPInstanceUID]
        assert (
            results[0].sop_instance_uid
            == study_report_uids(study_uid, reported, "0.1.0", 1).sop_instance_uid
        )
        assert [r.sop_instance_uid for r in results[1:3]] == [
            heatmap_uids(study_uid, s.SOPInstanceUID, "0.1.0", 1).sop_instance_uid
            for s in (first, second)
        ]
        assert results[1].source_instance_id == first_id
        assert (results[3].sop_instance_uid, results[3].source_instance_id) == (
            attention_map_uids(study_uid, first.SOPInstanceUID, "0.1.0", 1).sop_instance_uid,
            first_id,
        )
        assert results[3].sop_class_uid == SegmentationStorage
        for r in results:
            assert r.path == f"{study_uid}/results/v1/{r.sop_instance_uid}.dcm"
            ds = pydicom.dcmread(settings.spool_dir / r.path)
            assert ds.StudyInstanceUID == study_uid and ds.SOPInstanceUID == r.sop_instance_uid
        sr = pydicom.dcmread(settings.spool_dir / results[0].path)
        evidence = {
            i.ReferencedSOPInstanceUID
            for s in sr.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence
            for i in se.ReferencedSOPSequence
        }
        assert evidence == set(reported)  # not the skipped one, not the failed one
        assert failed.SOPInstanceUID not in evidence
        # the SC of the first image carries its CAM (the same pixels the builder makes)
        # and the result of the whole study (the three reported images)
        sc = pydicom.dcmread(settings.spool_dir / results[1].path)
        study = [
            assessment(0.73, 0.21),
            assessment(0.2, 0.3),
            assessment("femur not found", "femur not found"),
        ]
        with_cam = build_heatmap(
            first,
            assessment(0.73, 0.21),
            cams,
            report_version=1,
            content_datetime=content_datetime_for(study_row(store, study_uid)),
            study=study,
            image_number=1,
        )
        without = build_heatmap(
            first, assessment(0.73, 0.21), None, report_version=1, study=study, image_number=1
        )
        assert np.array_equal(sc.pixel_array, with_cam.pixel_array)
        assert not np.array_equal(sc.pixel_array, without.pixel_array)

        deliver = rows(store, Job, Job.kind == "deliver")
        assert sorted(j.payload["destination"] for j in deliver) == ["backup", "pacs"]
        assert {j.max_attempts for j in deliver} == {5}
        assert len(rows(store, Delivery, Delivery.state == "pending")) == 8
        study = study_row(store, study_uid)
        assert (study.state, study.delivery_state) == ("reported", "pending")
        assert {i.delivery_state for i in rows(store, Instance, Instance.state == "scored")} == {
            "pending"
        }


def test_late_instance_makes_a_new_version_with_new_uids_same_inputs_same_bytes(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    settings = node_settings(tmp_path, database_url)
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1)
        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store)
        v1 = rows(store, Result)
        assert {r.report_version for r in v1} == {1} and len(v1) == 2

        add_source(store, settings, study_uid, 2)  # late: after the report
        assert settle_studies(settings, store, now=utcnow()) == []  # quiet time again
        assert settle_studies(settings, store, now=later(settings)) == [(study_uid, 2)]
        run_jobs(settings, store)
        v2 = rows(store, Result, Result.report_version == 2)
        assert [r.kind for r in v2] == ["SR", "SC", "SC"]
        assert not {r.sop_instance_uid for r in v2} & {r.sop_instance_uid for r in v1}
        assert all((settings.spool_dir / r.path).exists() for r in v1)  # kept until retention
        # series stay, instances change
        assert v2[0].series_instance_uid == v1[0].series_instance_uid
        study = study_row(store, study_uid)
        assert (study.report_version, study.state) == (2, "reported")

        # the same stored inputs build the same bytes (a re-run re-sends, never duplicates)
        with store.read() as session:
            instances = list(session.scalars(select(Instance).order_by(Instance.id)))
            for i in instances:
                session.expunge(i)
        rebuilt = build_study_results(
            load_sources(settings, instances),
            report_version=2,
            content_datetime=content_datetime_for(study),
        )
        for item, stored in zip(rebuilt, v2, strict=True):
            buffer = DicomBytesIO()
            item.dataset.save_as(buffer, enforce_file_format=True)
            assert buffer.getvalue() == (settings.spool_dir / stored.path).read_bytes()


def test_our_own_results_coming_back_never_make_a_new_report(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    settings = node_settings(tmp_path, database_url)
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1)
        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store)
        sr = rows(store, Result)[0]
        returned = pydicom.dcmread(settings.spool_dir / sr.path)
        returned.SOPInstanceUID = pydicom.uid.generate_uid()  # the archive's copy, stored apart
        add_source(
            store, settings, study_uid, 0, state="skipped", own_result=True, dataset=returned
        )
        assert settle_studies(settings, store, now=later(settings, 30)) == []
        assert study_row(store, study_uid).report_version == 1
        assert len(rows(store, Job, Job.kind == "report")) == 1


def test_stored_assessment_json_round_trips() -> None:
    a = assessment(0.73, "prosthesis")
    assert assessment_from_json(a.to_json()) == a
    with pytest.raises(ValueError, match="assessment"):
        assessment_from_json({"sides": [{"side": "left"}]})


# --- delivery -----------------------------------------------------------------------------


def test_results_arrive_at_storescp_once_over_one_association(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    with storescp(tmp_path / "archive") as port:
        settings = node_settings(tmp_path, database_url, [archive(port)], batch_size=10)
        with opened(settings) as store:
            add_source(store, settings, study_uid, 1)
            add_source(store, settings, study_uid, 2)
            settle_studies(settings, store, now=later(settings))
            assert run_jobs(settings, store) == 2  # report, deliver
            results = rows(store, Result)
            assert received_uids(tmp_path / "archive") == sorted(
                r.sop_instance_uid for r in results
            )
            deliveries = rows(store, Delivery)
            assert {(d.state, d.status, d.attempts) for d in deliveries} == {("delivered", 0, 1)}
            study = study_row(store, study_uid)
            assert (study.delivery_state, study.last_error) == ("delivered", None)
            assert {i.delivery_state for i in rows(store, Instance)} == {"delivered"}
            assert rows(store, Job, Job.kind == "deliver")[0].state == "done"


def test_archive_down_retries_with_backoff_and_each_object_arrives_once(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    port = free_port()  # nobody listens yet
    # Backoff 30-60 s for the first retry, 30-90 s for the second, on a clock the test
    # moves: far beyond anything a loaded machine takes while the test looks at one.
    base, cap = 60.0, 90.0
    clock = MovableClock()
    settings = node_settings(
        tmp_path, database_url, [archive(port)], retry_base_seconds=base, retry_max_seconds=cap
    )
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1)
        add_source(store, settings, study_uid, 2)
        settle_studies(settings, store, now=later(settings))
        # report, then the first delivery attempt fails
        assert run_jobs(settings, store, limit=2, clock=clock) == 2
        job = rows(store, Job, Job.kind == "deliver")[0]
        assert (job.state, job.attempts) == ("queued", 1)
        assert "'archive'" in job.last_error and f"127.0.0.1:{port}" in job.last_error
        assert base / 2 <= (job.next_attempt_at - job.updated_at).total_seconds() <= base
        study = study_row(store, study_uid)
        assert study.delivery_state == "retrying" and "archive" in study.last_error
        assert {i.delivery_state for i in rows(store, Instance)} == {"retrying"}
        assert run_jobs(settings, store, clock=clock) == 0  # not due yet: backoff

        clock.advance(base)
        assert run_jobs(settings, store, limit=1, clock=clock) == 1  # second attempt, still down
        assert rows(store, Job, Job.kind == "deliver")[0].attempts == 2

        with storescp(tmp_path / "archive", port):
            clock.advance(cap)
            assert run_jobs(settings, store, clock=clock) == 1
        results = rows(store, Result)
        assert received_uids(tmp_path / "archive") == sorted(r.sop_instance_uid for r in results)
        assert study_row(store, study_uid).delivery_state == "delivered"
        kinds = [e.kind for e in rows(store, Event, Event.study_instance_uid == study_uid)]
        assert kinds.count("delivery_retry") == 2 and kinds[-1] == "study_delivered"


@contextmanager
def node_log_at_info(settings: Settings) -> Iterator[io.StringIO]:
    """The node's log handler at INFO (JSON lines) into a buffer, as ``serve`` sets it up."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    setup_logging(
        settings.model_copy(
            update={"logging": settings.logging.model_copy(update={"level": "INFO"})}
        ),
        stream=out,
    )
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("no-such-host.invalid", "'no-such-host.invalid' does not resolve"),
        ("127.0.0.1", "cannot connect to 127.0.0.1:"),  # nobody listens on the port
    ],
)
def test_an_unreachable_destination_is_named_in_one_warning_per_retry_with_deliver_backoff(
    tmp_path: Path, database_url: str, study_uid: str, host: str, words: str
) -> None:
    """The destination's name and host:port are in the job's error and its log line; each
    attempt is one WARNING line without a traceback (pynetdicom's lines are DEBUG), and
    the next attempt waits as [deliver] says, not as [worker] says (0.01 to 0.05 s here)."""
    base, cap = 40.0, 100.0
    destination = {"name": "pacs-main", "ae_title": "ARCHIVE", "host": host, "port": free_port()}
    settings = node_settings(
        tmp_path, database_url, [destination], retry_base_seconds=base, retry_max_seconds=cap
    )
    where = f"{host}:{destination['port']}"
    clock = MovableClock()
    with opened(settings) as store, node_log_at_info(settings) as log:
        add_source(store, settings, study_uid, 1)
        settle_studies(settings, store, now=later(settings))
        assert run_jobs(settings, store, limit=1, clock=clock) == 1  # the report job
        for attempt in (1, 2, 3):
            start = len(log.getvalue())
            assert run_jobs(settings, store, limit=1, clock=clock) == 1
            job = rows(store, Job, Job.kind == "deliver")[0]
            assert (job.state, job.attempts) == ("queued", attempt)
            assert "'pacs-main'" in job.last_error and where in job.last_error
            assert words in job.last_error and "check" in job.last_error
            # Exponential backoff with jitter on the deliver.* keys.
            delay = (job.next_attempt_at - job.updated_at).total_seconds()
            assert min(cap, base / 2) <= delay <= min(cap, base * 2 ** (attempt - 1)), delay
            lines = [json.loads(line) for line in log.getvalue()[start:].splitlines()]
            loud = [doc for doc in lines if doc["level"] not in ("DEBUG", "INFO")]
            assert len(loud) == 1, loud
            assert loud[0]["level"] == "WARNING"
            assert "'pacs-main'" in loud[0]["error"] and where in loud[0]["error"]
            assert not any("exception" in doc for doc in lines)
            assert "Traceback" not in log.getvalue()
            assert run_jobs(settings, store, clock=clock) == 0  # not due before its delay
            clock.advance(delay)
        study = study_row(store, study_uid)
        assert study.delivery_state == "retrying" and where in study.last_error


def test_attempts_exhausted_marks_delivery_failed_in_the_worklist(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    settings = node_settings(
        tmp_path,
        database_url,
        [archive(free_port())],
        max_attempts=2,
        retry_base_seconds=0.05,
        retry_max_seconds=0.05,
    )
    clock = MovableClock()
    with opened(settings) as store:
        inst_id, _ = add_source(store, settings, study_uid, 1)
        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store, clock=clock)
        clock.advance(0.1)  # past the 0.05 s backoff
        run_jobs(settings, store, clock=clock)
        job = rows(store, Job, Job.kind == "deliver")[0]
        assert (job.state, job.attempts) == ("failed", 2)
        assert {d.state for d in rows(store, Delivery)} == {"failed"}
        study = study_row(store, study_uid)
        assert study.delivery_state == "failed" and "no association" in study.last_error
        inst = rows(store, Instance, Instance.id == inst_id)[0]
        assert inst.delivery_state == "failed" and inst.last_error.startswith("delivery: ")
        assert inst.state == "scored"  # scoring is not undone by a delivery failure


def test_an_object_refused_by_the_archive_is_recorded_and_retried_alone(
    tmp_path: Path, database_url: str, study_uid: str
) -> None:
    refuse = {"on": True}
    got: list[str] = []

    def on_store(event: Any) -> int:
        ds = event.dataset
        if refuse["on"] and ds.SOPClassUID == SC_CLASS:
            return 0xA700  # out of resources
        got.append(ds.SOPInstanceUID)
        return 0x0000

    server, port = start_archive_scp(on_store)
    clock = MovableClock()
    try:
        settings = node_settings(tmp_path, database_url, [archive(port)])
        with opened(settings) as store:
            add_source(store, settings, study_uid, 1)
            settle_studies(settings, store, now=later(settings))
            run_jobs(settings, store, clock=clock)
            sr, sc = rows(store, Result)
            by_result = {d.result_id: d for d in rows(store, Delivery)}
            assert (by_result[sr.id].state, by_result[sr.id].status) == ("delivered", 0)
            assert (by_result[sc.id].state, by_result[sc.id].status) == ("retrying", 0xA700)
            assert "0xA700" in by_result[sc.id].last_error
            job = rows(store, Job, Job.kind == "deliver")[0]
            assert job.state == "queued" and sc.sop_instance_uid in job.last_error
            refuse["on"] = False
            clock.advance(0.5)  # past the 0.2-0.4 s deliver backoff
            run_jobs(settings, store, clock=clock)
            assert got == [sr.sop_instance_uid, sc.sop_instance_uid]  # the SR is not re-sent
            assert study_row(store, study_uid).delivery_state == "delivered"
    finally:
        server.shutdown()


# --- CAMs from the score job to the heatmap -----------------------------------------------


class CamModel:
    """A model stand-in (tests only) that returns per-side CAM arrays in ``extra["cam"]``."""

    name = "cam-double"
    version = "0.0-test"
    synthetic = True
    threshold = 0.5

    def assess(self, dataset: pydicom.Dataset) -> ImageAssessment:
        rows_, cols = int(dataset.Rows), int(dataset.Columns)
        cam = np.linspace(0.0, 1.0, rows_ * cols).reshape(rows_, cols)
        a = assessment(0.73, 0.21, version=self.version)
        return ImageAssessment(
            sides=a.sides,
            model_name=self.name,
            model_version=self.version,
            threshold=0.5,
            synthetic_model=True,
            extra={"cam": {"left": cam, "right": cam[::-1]}, "note": "x"},
        )


def test_score_job_saves_cams_beside_the_spool_file_and_the_heatmap_uses_them(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, study_uid: str
) -> None:
    from tests.test_worker import add_instance, use_model

    settings = node_settings(tmp_path, database_url)
    use_model(monkeypatch, CamModel())
    with opened(settings) as store:
        inst_id, _, sop = add_instance(
            store, settings.spool_dir, rows=ROWS, columns=COLUMNS, study_uid=study_uid
        )
        assert run_jobs(settings, store) == 1
        inst = rows(store, Instance, Instance.id == inst_id)[0]
        assert inst.state == "scored"
        assert "cam" not in inst.result["assessment"]["extra"]
        assert inst.result["assessment"]["extra"] == {"note": "x"}
        cam_file = settings.spool_dir / inst.result["cam_path"]
        assert cam_file == (settings.spool_dir / inst.path).with_name(f"{sop}.cam.npz")
        with np.load(cam_file, allow_pickle=False) as npz:
            assert sorted(npz.files) == ["left", "right"]
            assert npz["left"].shape == (ROWS, COLUMNS)

        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store)
        sc = [r for r in rows(store, Result) if r.kind == "SC"][0]
        source = pydicom.dcmread(settings.spool_dir / inst.path)
        plain = build_heatmap(
            source,
            assessment_from_json(inst.result["assessment"]),
            None,
            report_version=1,
            content_datetime=dt.datetime(2026, 1, 1),
        )
        assert not np.array_equal(
            pydicom.dcmread(settings.spool_dir / sc.path).pixel_array, plain.pixel_array
        )


def _wreck_pixels(path: Path) -> None:
    """Overwrite a spool file's pixel data with zeros: a heatmap drawn from it is black."""
    ds = pydicom.dcmread(path)
    ds.PixelData = bytes(len(ds.PixelData))
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("old_spool_entry", [False, True], ids=["display-copy", "old-entry"])
def test_report_job_draws_the_heatmap_from_the_score_jobs_display_copy(
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    study_uid: str,
    old_spool_entry: bool,
) -> None:
    """The score job leaves the heatmap's display copy; the report job draws the same
    picture from it without decoding the source again. An instance scored before
    display copies existed is still drawn, from its pixels."""
    from tests.test_worker import add_instance, use_model

    settings = node_settings(tmp_path, database_url)
    settings.report.heatmap_transfer_syntax = "explicit-little-endian"  # compare exactly
    use_model(monkeypatch, CamModel())
    with opened(settings) as store:
        inst_id, _, sop = add_instance(
            store, settings.spool_dir, rows=ROWS, columns=COLUMNS, study_uid=study_uid
        )
        assert run_jobs(settings, store) == 1
        inst = rows(store, Instance, Instance.id == inst_id)[0]
        spool_file = settings.spool_dir / inst.path
        display_file = settings.spool_dir / inst.result["display_path"]
        assert display_file == spool_file.with_name(f"{sop}.display.npz")
        display = load_display(display_file)
        assert display is not None and display.gray.dtype == np.uint8
        assert display.gray.shape[::-1] == output_size(ROWS, COLUMNS)
        assert sorted(display.cams) == ["left", "right"]
        source = pydicom.dcmread(spool_file)
        a = assessment_from_json(inst.result["assessment"])
        expected = render_heatmap(
            source, a, load_cams(settings.spool_dir / inst.result["cam_path"]), [a], 1
        )
        if old_spool_entry:  # as a node before display copies left it
            display_file.unlink()
            with store.write() as session:
                row = session.get(Instance, inst_id)
                assert row is not None
                row.result = {k: v for k, v in row.result.items() if k != "display_path"}
        else:  # the report job must not need the source's pixels
            _wreck_pixels(spool_file)

        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store)
        sc = [r for r in rows(store, Result) if r.kind == "SC"][0]
        drawn = pydicom.dcmread(settings.spool_dir / sc.path).pixel_array
        assert np.array_equal(drawn, expected)
        # the display copy goes with the study's other spool files
        with store.read() as session:
            files = study_files(session, inst.study_id)
        assert (inst.result["display_path"] in files) != old_spool_entry
