"""Retention with a fake clock, on SQLite and PostgreSQL, with real spool files and rows.

Studies go through the real report and deliver jobs (delivery to dcmtk's
storescp); then :func:`apply_retention` is called with a clock moved forward.
Delivered studies (and studies whose instances were all skipped) lose their
spool files after ``spool_days`` and their rows after ``database_days``; a
study whose delivery failed, or that is not reported yet, keeps everything.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from tests.peers import free_port
from tests.test_results import (
    add_source,
    archive,
    later,
    node_settings,
    rows,
    run_jobs,
    storescp,
)
from triage_node.config import Settings
from triage_node.receive.spool import Sender, record_refusal
from triage_node.receive.status import INCONSISTENT_PIXEL_DATA
from triage_node.receive.validate import InstanceRefused
from triage_node.store import Store, open_store
from triage_node.store.models import (
    Delivery,
    Event,
    Instance,
    Job,
    Refusal,
    Result,
    Study,
    utcnow,
)
from triage_node.work import retention
from triage_node.work.retention import apply_retention
from triage_node.work.study import settle_studies


def days(n: float) -> dt.datetime:
    return utcnow() + dt.timedelta(days=n)


def spool_files(settings: Settings, study_uid: str) -> list[Path]:
    root = settings.spool_dir / study_uid
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def study(store: Store, uid: str) -> Study | None:
    found = rows(store, Study, Study.study_instance_uid == uid)
    return found[0] if found else None


def make_studies(tmp_path: Path, database_url: str) -> tuple[Settings, Store, dict[str, str]]:
    """delivered (2 images), skipped-only, delivery failed, not yet settled."""
    port = free_port()
    settings = node_settings(tmp_path, database_url, [archive(port)], max_attempts=1)
    settings.retention.spool_days = 30
    settings.retention.database_days = 90
    settings.retention.events_days = 400
    settings.receive.min_free_disk_mb = 0
    uids = {k: pydicom.uid.generate_uid() for k in ("delivered", "skipped", "failed", "open")}
    store = open_store(settings)
    with storescp(tmp_path / "archive", port):
        add_source(store, settings, uids["delivered"], 1)
        add_source(store, settings, uids["delivered"], 2)
        add_source(store, settings, uids["skipped"], 3, state="skipped")
        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store)
    # the archive is gone: this study's only delivery attempt fails for good
    add_source(store, settings, uids["failed"], 4)
    settle_studies(settings, store, now=later(settings))
    run_jobs(settings, store)
    add_source(store, settings, uids["open"], 5)  # scored, waiting for its settle time
    return settings, store, uids


def test_delivered_studies_are_purged_on_schedule_undelivered_are_kept(
    tmp_path: Path, database_url: str
) -> None:
    settings, store, uids = make_studies(tmp_path, database_url)
    try:
        assert (
            study(store, uids["delivered"]).delivery_state,
            study(store, uids["failed"]).delivery_state,
        ) == ("delivered", "failed")
        before = {k: spool_files(settings, u) for k, u in uids.items()}
        assert len(before["delivered"]) == 5  # 2 images, SR, 2 heatmaps
        assert all(before.values())

        # day 29: nothing is old enough
        report = apply_retention(settings, store, now=lambda: days(29))
        assert report.studies_purged == 0
        assert {k: spool_files(settings, u) for k, u in uids.items()} == before

        # day 31: the delivered and the skipped-only study lose their files, not their rows
        report = apply_retention(settings, store, now=lambda: days(31))
        assert (report.studies_purged, report.files_removed) == (2, 6)
        assert report.bytes_freed > 0
        for kind in ("delivered", "skipped"):
            assert spool_files(settings, uids[kind]) == []
            assert not (settings.spool_dir / uids[kind]).exists()
            assert study(store, uids[kind]).spool_purged_at is not None
        for kind in ("failed", "open"):
            assert spool_files(settings, uids[kind]) == before[kind]
            assert study(store, uids[kind]).spool_purged_at is None
        purged = rows(store, Event, Event.kind == "study_spool_purged")
        assert sorted(e.study_instance_uid for e in purged) == sorted(
            [uids["delivered"], uids["skipped"]]
        )

        # a second run (another work process, or the next timer) finds nothing to do
        assert apply_retention(settings, store, now=lambda: days(31)).studies_purged == 0

        # day 91: the purged studies' rows go; the others keep rows and files
        report = apply_retention(settings, store, now=lambda: days(91))
        assert report.studies_deleted == 2
        for kind in ("delivered", "skipped"):
            assert study(store, uids[kind]) is None
        assert rows(store, Instance, Instance.study_instance_uid == uids["delivered"]) == []
        with store.read() as session:
            remaining = set(session.scalars(select(Result.study_id)))
            assert remaining == {study(store, uids["failed"]).id}
            assert session.scalar(select(Delivery.state)) == "failed"
            assert all(
                j.study_id is None or j.study_id == study(store, uids["failed"]).id
                for j in session.scalars(select(Job))
                if j.instance_id is None
            )
        for kind in ("failed", "open"):
            assert study(store, uids[kind]) is not None
            assert spool_files(settings, uids[kind]) == before[kind]
        # the audit trail is kept longer than the rows it describes
        assert rows(store, Event, Event.study_instance_uid == uids["delivered"])

        # day 401: audit events past events_days go
        report = apply_retention(settings, store, now=lambda: days(401))
        assert report.events_deleted > 0
        assert rows(store, Event) == []
        assert spool_files(settings, uids["failed"]) == before["failed"]
    finally:
        store.dispose()


def test_low_free_disk_purges_finished_studies_early_but_never_undelivered(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store, uids = make_studies(tmp_path, database_url)
    try:
        settings.receive.min_free_disk_mb = 100
        freed: list[int] = []

        def free_bytes(_path: Path) -> int:
            # below the watermark until the first study's files are gone
            return 200 * 1024 * 1024 if freed else 0

        def now() -> dt.datetime:
            return days(1)  # far younger than spool_days

        original = retention._remove_files

        def counting(spool: Path, rel: list[str]) -> tuple[int, int]:
            out = original(spool, rel)
            freed.append(out[1])
            return out

        monkeypatch.setattr(retention, "_remove_files", counting)
        report = apply_retention(settings, store, now=now, free_bytes=free_bytes)
        # oldest finished study first (the skipped-only one: the other changed on delivery),
        # then the disk was fine again
        assert (report.studies_purged, report.purged_for_disk) == (1, 1)
        assert spool_files(settings, uids["skipped"]) == []
        assert spool_files(settings, uids["delivered"])

        # disk stays full: every finished study goes, undelivered ones never
        report = apply_retention(settings, store, now=now, free_bytes=lambda _p: 0)
        assert report.purged_for_disk == 1
        assert spool_files(settings, uids["delivered"]) == []
        assert spool_files(settings, uids["failed"]) and spool_files(settings, uids["open"])
    finally:
        store.dispose()


def test_refused_instances_are_removed_after_database_days(
    tmp_path: Path, database_url: str
) -> None:
    """A refusal row (what `worklist` lists as `refused`) goes with the rows of studies,
    ``database_days`` after the refusal; its event stays for ``events_days``."""
    settings = node_settings(tmp_path, database_url)
    settings.retention.database_days = 90
    settings.retention.events_days = 400
    store = open_store(settings)
    try:
        uid = pydicom.uid.generate_uid()
        refused = InstanceRefused(INCONSISTENT_PIXEL_DATA, "Pixel Data too short", uid)
        record_refusal(store, refused, Sender("STORESCU", "127.0.0.1"))
        assert apply_retention(settings, store, now=lambda: days(89)).refusals_deleted == 0
        [row] = rows(store, Refusal)
        assert (row.sop_instance_uid, row.status) == (uid, 0xC220)

        assert apply_retention(settings, store, now=lambda: days(91)).refusals_deleted == 1
        assert rows(store, Refusal) == []
        assert rows(store, Event, Event.kind == "store_refused", Event.sop_instance_uid == uid)
    finally:
        store.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_scheduler_runs_retention_when_enabled(tmp_path: Path, database_url: str) -> None:
    from triage_node.node.scheduler import periodic_tasks

    settings = node_settings(tmp_path, database_url)
    settings.retention.check_minutes = 5
    store = open_store(settings)
    try:
        tasks = {t.name: t for t in periodic_tasks(settings, store)}
        assert tasks["retention"].seconds == 300
        tasks["retention"].run()  # runs against the real store without error
        settings.retention.enabled = False
        assert "retention" not in {t.name for t in periodic_tasks(settings, store)}
    finally:
        store.dispose()
