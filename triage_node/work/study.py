"""Study-level decisions: when a study has settled, ask for one report; roll up delivery.

A study is *settled* when no instance has arrived for ``node.settle_seconds``
and none of its instances is still being received, queued or scored. If it
then has eligible instances no report version has covered yet, one ``report``
job is enqueued for the next report version, and those instances are stamped
with that version, all in one transaction. So:

* a late instance after a report is unreported again: the next settle makes
  report version n+1 (new UIDs, see :mod:`triage_node.report.uids`);
* skipped instances (not eligible, including our own SR/SC sent back by a
  router) are never "unreported": they never cause a report (no loops);
* two ``work`` processes running this check at once enqueue one job: the
  study rows are locked (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL), the condition is checked again under the lock, and
  the job's unique ``dedup_key`` ("report:<study id>:<version>") is the
  backstop.

Settling is time-based, so :func:`settle_studies` is run by the scheduler
(:mod:`triage_node.node.scheduler`) every :data:`SETTLE_CHECK_SECONDS`.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage_node.config import Settings
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import STUDY_NEWS, Store, add_event, rows_changed
from triage_node.store.jobs import enqueue_job
from triage_node.store.models import (
    CompletenessPath,
    Delivery,
    DeliveryState,
    Instance,
    InstanceState,
    Job,
    JobKind,
    JobState,
    Result,
    Study,
    StudyState,
)
from triage_node.telemetry.metrics import record_completeness
from triage_node.work.records import ReportPayload

log = logging.getLogger(__name__)

#: How often the scheduler looks for settled studies.
SETTLE_CHECK_SECONDS = 1.0
#: Instance states that are not final yet: the study waits for them.
UNFINISHED_STATES = (InstanceState.RECEIVED, InstanceState.QUEUED, InstanceState.SCORING)
#: Report jobs per settle pass (the rest wait for the next pass, a second later).
SETTLE_BATCH = 100


def instance_finished(session: Session, instance: Instance, *, clock: Clock = utcnow) -> None:
    """Record on the study that one of its instances is final (scored, not assessable, failed).

    The report itself waits for the settle time (:func:`settle_studies`).
    """
    study = session.get(Study, instance.study_id)
    if study is not None:
        study.updated_at = clock()
    session.info[STUDY_NEWS] = True  # wakes this process's completeness check at commit


def enqueue_once(session: Session, kind: JobKind, dedup_key: str, **fields: Any) -> Job | None:
    """Enqueue a job unless one with ``dedup_key`` exists (in this or another process).

    Runs in a savepoint: a concurrent insert of the same key makes this call
    return None instead of failing the caller's transaction.
    """
    if session.scalars(select(Job.id).where(Job.dedup_key == dedup_key)).first() is not None:
        return None
    try:
        with session.begin_nested():
            job = enqueue_job(session, kind, **fields)
            job.dedup_key = dedup_key
            session.flush()
    except IntegrityError:
        return None
    return job


def report_dedup_key(study_id: int, report_version: int) -> str:
    """The dedup key of a study's report job for one report version."""
    return f"report:{study_id}:{report_version}"


def ready_condition() -> ColumnElement[bool]:
    """A study with an instance no report covers yet, none still unfinished, no report queued.

    Whether it is also complete is decided by the settle time
    (:func:`settle_studies`) or by the archive (:mod:`triage_node.work.completeness`).
    """
    unreported = exists().where(
        Instance.study_id == Study.id,
        Instance.state != InstanceState.SKIPPED,
        Instance.report_version.is_(None),
    )
    unfinished = exists().where(
        Instance.study_id == Study.id, Instance.state.in_(UNFINISHED_STATES)
    )
    report_pending = exists().where(
        Job.study_id == Study.id,
        Job.kind == JobKind.REPORT,
        Job.state.in_((JobState.QUEUED, JobState.RUNNING)),
    )
    return and_(unreported, ~unfinished, ~report_pending)


def _settled_condition(now: dt.datetime, settle_seconds: float) -> ColumnElement[bool]:
    quiet_since = now - dt.timedelta(seconds=settle_seconds)
    return and_(Study.last_instance_at <= quiet_since, ready_condition())


def settle_studies(
    settings: Settings, store: Store, now: dt.datetime | None = None
) -> list[tuple[str, int]]:
    """Enqueue one report job per settled study; returns (Study Instance UID, version) pairs.

    ``now`` is for tests (default: the clock, read inside the transaction).
    """
    enqueued: list[tuple[str, int]] = []
    with store.write() as session:
        at = now or utcnow()
        condition = _settled_condition(at, settings.node.settle_seconds)
        query = (
            select(Study)
            .where(condition)
            .order_by(Study.last_instance_at, Study.id)
            .limit(SETTLE_BATCH)
        )
        if not store.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=Study)
        for study in session.scalars(query).all():
            # Checked again under the row lock: another process may have reported it
            # between our snapshot and the lock (PostgreSQL, read committed).
            if not session.scalars(select(Study.id).where(Study.id == study.id, condition)).first():
                continue
            version = queue_report(
                session,
                settings,
                study,
                at,
                path=CompletenessPath.TIMER,
                why=f"quiet for {settings.node.settle_seconds:g} s",
            )
            if version is not None:
                enqueued.append((study.study_instance_uid, version))
    for uid, version in enqueued:
        record_completeness(CompletenessPath.TIMER)
        log.info(
            "study settled",
            extra={"study_instance_uid": uid, "report_version": version, "path": "timer"},
        )
    return enqueued


def queue_report(
    session: Session,
    settings: Settings,
    study: Study,
    at: dt.datetime,
    *,
    path: CompletenessPath,
    why: str,
) -> int | None:
    """Enqueue the study's next report version and stamp its unreported instances with it.

    The caller holds the study row (locked) and has checked that it is complete by
    ``path``; ``why`` is said in the ``study_settled`` event. Returns the report
    version, or None when another process queued it first.
    """
    version = study.report_version + 1
    job = enqueue_once(
        session,
        JobKind.REPORT,
        report_dedup_key(study.id, version),
        study_id=study.id,
        payload=ReportPayload(version).to_json(),
        max_attempts=settings.worker.max_attempts,
    )
    if job is None:
        return None
    covered = rows_changed(
        session,
        update(Instance)
        .where(
            Instance.study_id == study.id,
            Instance.state != InstanceState.SKIPPED,
            Instance.report_version.is_(None),
        )
        .values(report_version=version, updated_at=at)
        .execution_options(synchronize_session=False),
    )
    study.report_version = version
    study.settled_at = at
    study.state = StudyState.REPORTING
    study.updated_at = at
    add_event(
        session,
        "study_settled",
        job_id=job.id,
        study_instance_uid=study.study_instance_uid,
        state=study.state,
        message=(
            f"report version {version} queued ({covered} new instance(s)); "
            f"complete by {path}: {why}"
        ),
        data={"report_version": version, "new_instances": covered, "path": str(path)},
    )
    return version


# -- delivery roll-up ----------------------------------------------------------------------

#: When a study's objects (or one destination's) are in several delivery states, the first
#: here is shown (also by ``worklist`` per destination).
ROLLUP_ORDER = (
    DeliveryState.FAILED,
    DeliveryState.RETRYING,
    DeliveryState.PENDING,
    DeliveryState.DELIVERED,
)


def rollup_delivery(
    session: Session, study: Study, last_error: str | None = None, *, clock: Clock = utcnow
) -> DeliveryState | None:
    """Set the delivery state of the study and of its reported instances from its deliveries.

    Only the newest report version counts (older versions are superseded).
    ``last_error`` (None: keep) is recorded on the study and its instances.
    Returns the study's new delivery state.
    """
    states = set(
        session.scalars(
            select(Delivery.state)
            .join(Result, Result.id == Delivery.result_id)
            .where(Result.study_id == study.id, Result.report_version == study.report_version)
        ).all()
    )
    if not states:
        has_results = (
            session.scalars(
                select(Result.id).where(
                    Result.study_id == study.id, Result.report_version == study.report_version
                )
            ).first()
            is not None
        )
        state: DeliveryState | None = DeliveryState.NO_DESTINATION if has_results else None
    else:
        state = next(s for s in ROLLUP_ORDER if s in states)
    now = clock()
    study.delivery_state = state
    study.updated_at = now
    if state == DeliveryState.DELIVERED:
        study.last_error = None
    elif last_error is not None:
        study.last_error = last_error[:2000]
    instances = session.scalars(
        select(Instance).where(
            Instance.study_id == study.id,
            Instance.report_version.is_not(None),
            Instance.state.in_((InstanceState.SCORED, InstanceState.NOT_ASSESSABLE)),
        )
    ).all()
    for inst in instances:
        inst.delivery_state = state
        if state == DeliveryState.DELIVERED:
            if inst.last_error and inst.last_error.startswith("delivery"):
                inst.last_error = None
        elif last_error is not None:
            inst.last_error = f"delivery: {last_error}"[:2000]
        inst.updated_at = now
    return state
