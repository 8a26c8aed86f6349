"""Retention: remove spool files of finished studies, then their rows, then old audit events.

Run by the scheduler every ``retention.check_minutes`` (:func:`apply_retention`).

* Spool files of a study go ``retention.spool_days`` after its last change
  (for a reported study, its delivery), and only when the study is finished:
  its newest report is ``delivered`` to every destination, or every instance
  of it was skipped (nothing to report). A study with anything queued or
  running, anything undelivered, failed, or kept for lack of a destination is
  never touched. The rows stay; ``studies.spool_purged_at`` records when.
* When free disk is below ``receive.min_free_disk_mb``, finished studies are
  removed earlier, oldest first, until it is above again; undelivered results
  are still never removed (the receiver answers 0xA700 instead).
* Rows of a study (instances, jobs, results, deliveries, the study) go
  ``retention.database_days`` after its last change, once its files are gone.
* Refused C-STOREs (``refusals`` rows; they have no files) go
  ``retention.database_days`` after they were refused.
* Event rows (the audit trail) go after ``retention.events_days``.

Every study is purged in a transaction of its own whose ``UPDATE ... WHERE``
fails if the study changed meanwhile, so several ``work`` processes may run
this at once: one of them removes a study, the others find nothing to do.
Files are unlinked after that transaction commits; a crash in between leaves
files that the row deletion removes later.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, delete, exists, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from triage_node.config import Settings
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store, add_event, rows_changed
from triage_node.store.models import (
    Delivery,
    DeliveryState,
    Event,
    Instance,
    InstanceState,
    Job,
    JobState,
    Refusal,
    Result,
    Study,
    StudyState,
)
from triage_node.store.queries import free_disk_bytes
from triage_node.work.records import ScoreRecord

log = logging.getLogger(__name__)

_MB = 1024 * 1024
_DAY = dt.timedelta(days=1)
_ACTIVE_JOB = (JobState.QUEUED, JobState.RUNNING)
_ACTIVE_INSTANCE = (InstanceState.RECEIVED, InstanceState.QUEUED, InstanceState.SCORING)

#: Free bytes on the file system holding a path; None when it cannot be told.
FreeBytes = Callable[[Path], int | None]


@dataclass
class RetentionReport:
    """What one run removed."""

    studies_purged: int = 0  # studies whose spool files were removed
    purged_for_disk: int = 0  # of those, removed early because free disk was low
    files_removed: int = 0
    bytes_freed: int = 0
    studies_deleted: int = 0  # studies whose rows were removed
    refusals_deleted: int = 0
    events_deleted: int = 0


def _not_busy(study_id_col: InstrumentedAttribute[int]) -> ColumnElement[bool]:
    """SQL condition: nothing of the study is queued, running or waiting to be scored."""
    busy_job = exists().where(
        Job.state.in_(_ACTIVE_JOB),
        or_(
            Job.study_id == study_id_col,
            Job.instance_id.in_(select(Instance.id).where(Instance.study_id == study_id_col)),
        ),
    )
    busy_instance = exists().where(
        Instance.study_id == study_id_col, Instance.state.in_(_ACTIVE_INSTANCE)
    )
    return ~busy_job & ~busy_instance


@dataclass(frozen=True)
class FinishedStudy:
    """A study whose spool files may go, as seen when it was selected."""

    id: int
    study_instance_uid: str
    updated_at: dt.datetime


def finished_studies(session: Session, changed_before: dt.datetime) -> list[FinishedStudy]:
    """Studies whose spool files may go: finished, unchanged since ``changed_before``, oldest first.

    Finished: the newest report is delivered everywhere (state ``reported``,
    delivery ``delivered``), or no report was ever due because every instance
    was skipped. Nothing of the study may be queued or running.
    """
    all_skipped = (Study.report_version == 0) & ~exists().where(
        Instance.study_id == Study.id, Instance.state != InstanceState.SKIPPED
    )
    delivered = (Study.state == StudyState.REPORTED) & (
        Study.delivery_state == DeliveryState.DELIVERED
    )
    query = (
        select(Study.id, Study.study_instance_uid, Study.updated_at)
        .where(
            delivered | all_skipped,
            Study.updated_at < changed_before,
            or_(Study.spool_purged_at.is_(None), Study.spool_purged_at < Study.last_instance_at),
            _not_busy(Study.id),
        )
        .order_by(Study.updated_at, Study.id)
    )
    return [FinishedStudy(*row) for row in session.execute(query)]


def study_files(session: Session, study_id: int) -> list[str]:
    """Spool paths (relative) of a study: its instances, their CAM and display-copy files,
    our result objects."""
    paths: list[str] = []
    for path, result in session.execute(
        select(Instance.path, Instance.result).where(Instance.study_id == study_id)
    ):
        paths.append(path)
        record = ScoreRecord.from_json(result)
        paths += [p for p in (record.cam_path, record.display_path) if p]
    paths += list(session.scalars(select(Result.path).where(Result.study_id == study_id)))
    return paths


def _remove_files(spool: Path, relative: list[str]) -> tuple[int, int]:
    """Unlink the files, then the directories they leave empty; returns (files, bytes)."""
    files = freed = 0
    dirs: set[Path] = set()
    root = spool.resolve()
    for rel in relative:
        path = (spool / rel).resolve()
        if root not in path.parents:  # a row pointing outside the spool: never follow it
            log.error("retention: spool path outside the spool ignored", extra={"path": rel})
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("retention: cannot remove %s: %s", rel, exc.strerror)
            continue
        files += 1
        freed += size
        dirs.update(p for p in path.parents if root in p.parents)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()  # only if empty: a file that arrived meanwhile keeps its directory
        except OSError:
            pass
    return files, freed


def _purge_study(
    settings: Settings, store: Store, study: FinishedStudy, at: dt.datetime, why: str
) -> tuple[int, int] | None:
    """Mark one study purged (if unchanged) and remove its files; None if it changed."""
    with store.write() as session:
        marked = rows_changed(
            session,
            update(Study)
            .where(
                Study.id == study.id,
                Study.updated_at == study.updated_at,
                or_(
                    Study.spool_purged_at.is_(None), Study.spool_purged_at < Study.last_instance_at
                ),
                _not_busy(Study.id),
            )
            .values(spool_purged_at=at)
            .execution_options(synchronize_session=False),
        )
        if marked != 1:
            return None
        paths = study_files(session, study.id)
        add_event(
            session,
            "study_spool_purged",
            study_instance_uid=study.study_instance_uid,
            message=f"spool files removed ({why}): {len(paths)} file(s)",
            data={"reason": why, "files": len(paths)},
        )
    return _remove_files(settings.spool_dir, paths)


def purge_spool(
    settings: Settings,
    store: Store,
    at: dt.datetime,
    report: RetentionReport,
    free_bytes: FreeBytes = free_disk_bytes,
) -> None:
    """Remove the spool files of finished studies past ``spool_days``, then for free disk.

    When the free space cannot be read, nothing is removed early (it is logged).
    """
    cutoff = at - settings.retention.spool_days * _DAY
    with store.read() as session:
        due = finished_studies(session, cutoff)
    for study in due:
        done = _purge_study(settings, store, study, at, "age")
        if done is not None:
            report.studies_purged += 1
            report.files_removed += done[0]
            report.bytes_freed += done[1]

    watermark = settings.receive.min_free_disk_mb * _MB
    if watermark <= 0:
        return

    def enough() -> bool:
        free = free_bytes(settings.data_dir)
        if free is None:
            log.error(
                "retention: free space of the data directory cannot be read; "
                "no study is removed early"
            )
            return True
        return free >= watermark

    if enough():
        return
    with store.read() as session:
        early = finished_studies(session, at)
    for study in early:
        if enough():
            break
        done = _purge_study(settings, store, study, at, "free disk below watermark")
        if done is not None:
            report.studies_purged += 1
            report.purged_for_disk += 1
            report.files_removed += done[0]
            report.bytes_freed += done[1]
    if not enough():
        log.error(
            "free disk below receive.min_free_disk_mb and no finished study left to "
            "remove: new instances are refused until results are delivered or space "
            "is added",
            extra={"min_free_disk_mb": settings.receive.min_free_disk_mb},
        )


def delete_study_rows(
    settings: Settings, store: Store, at: dt.datetime, report: RetentionReport
) -> None:
    """Delete the rows of studies purged from the spool and unchanged for ``database_days``."""
    cutoff = at - settings.retention.database_days * _DAY
    with store.read() as session:
        ids = list(
            session.scalars(
                select(Study.id)
                .where(
                    Study.spool_purged_at.is_not(None),
                    Study.spool_purged_at >= Study.last_instance_at,
                    Study.updated_at < cutoff,
                    _not_busy(Study.id),
                )
                .order_by(Study.id)
            )
        )
    for study_id in ids:
        with store.write() as session:
            study = session.get(Study, study_id)
            if (
                study is None
                or study.updated_at >= cutoff
                or study.spool_purged_at is None
                or study.spool_purged_at < study.last_instance_at
            ):
                continue
            paths = study_files(session, study_id)
            instance_ids = select(Instance.id).where(Instance.study_id == study_id)
            result_ids = select(Result.id).where(Result.study_id == study_id)
            session.execute(delete(Delivery).where(Delivery.result_id.in_(result_ids)))
            session.execute(delete(Result).where(Result.study_id == study_id))
            session.execute(
                delete(Job).where(or_(Job.study_id == study_id, Job.instance_id.in_(instance_ids)))
            )
            session.execute(delete(Instance).where(Instance.study_id == study_id))
            add_event(
                session,
                "study_rows_deleted",
                study_instance_uid=study.study_instance_uid,
                message="rows removed by retention (database_days)",
            )
            session.delete(study)
        # Files left by a crash between a purge and its unlinking go now.
        _remove_files(settings.spool_dir, paths)
        report.studies_deleted += 1


def delete_old_refusals(
    settings: Settings, store: Store, at: dt.datetime, report: RetentionReport
) -> None:
    """Delete rows of refused C-STOREs older than ``database_days`` (like a study's rows)."""
    cutoff = at - settings.retention.database_days * _DAY
    with store.write() as session:
        report.refusals_deleted += rows_changed(
            session,
            delete(Refusal).where(Refusal.at < cutoff).execution_options(synchronize_session=False),
        )


def delete_old_events(
    settings: Settings, store: Store, at: dt.datetime, report: RetentionReport
) -> None:
    """Delete audit events older than ``events_days``."""
    cutoff = at - settings.retention.events_days * _DAY
    with store.write() as session:
        report.events_deleted += rows_changed(
            session,
            delete(Event).where(Event.at < cutoff).execution_options(synchronize_session=False),
        )


def apply_retention(
    settings: Settings,
    store: Store,
    now: Clock = utcnow,
    free_bytes: FreeBytes = free_disk_bytes,
) -> RetentionReport:
    """One retention run at ``now()`` (a parameter so tests can move the clock)."""
    at = now()
    report = RetentionReport()
    purge_spool(settings, store, at, report, free_bytes)
    delete_study_rows(settings, store, at, report)
    delete_old_refusals(settings, store, at, report)
    delete_old_events(settings, store, at, report)
    if (
        report.studies_purged
        or report.studies_deleted
        or report.refusals_deleted
        or report.events_deleted
    ):
        log.info(
            "retention",
            extra={
                "studies_purged": report.studies_purged,
                "purged_for_disk": report.purged_for_disk,
                "files_removed": report.files_removed,
                "bytes_freed": report.bytes_freed,
                "studies_deleted": report.studies_deleted,
                "refusals_deleted": report.refusals_deleted,
                "events_deleted": report.events_deleted,
            },
        )
    return report
