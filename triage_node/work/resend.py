"""Re-sending a study's results: what `triage-node resend` and the console's resend action do.

:func:`resend` puts the deliver job of a study's newest report version back in the
queue for every configured destination (every object is sent again, with the same
SOP Instance UIDs, so an archive keeps one copy), or with ``study_uids`` None every
failed delivery (only the objects not yet delivered). It works in the caller's
transaction and returns one line per action; a running node picks the jobs up at
its next poll.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage_node.config import Settings
from triage_node.store.db import add_event
from triage_node.store.jobs import requeue_jobs
from triage_node.store.models import (
    Delivery,
    DeliveryState,
    Job,
    JobKind,
    JobState,
    Result,
    Study,
    utcnow,
)
from triage_node.work.report import deliver_dedup_key
from triage_node.work.study import enqueue_once, rollup_delivery


class UnknownStudies(Exception):
    """Study Instance UIDs the node has never received."""

    def __init__(self, uids: list[str]) -> None:
        super().__init__(", ".join(uids))
        self.uids = uids


def _reset_deliveries(session: Session, job: Job, *, all_objects: bool) -> int:
    query = (
        select(Delivery)
        .join(Result, Result.id == Delivery.result_id)
        .where(
            Result.study_id == job.study_id,
            Result.report_version == int((job.payload or {}).get("report_version", 0)),
            Delivery.destination == str((job.payload or {}).get("destination")),
        )
    )
    if not all_objects:
        query = query.where(Delivery.state != DeliveryState.DELIVERED)
    rows = session.scalars(query).all()
    for row in rows:
        row.state = DeliveryState.PENDING
        row.last_error = None
        row.updated_at = utcnow()
    return len(rows)


def _requeue(session: Session, job: Job) -> None:
    """Put a failed or done job back in the queue with a fresh attempt budget."""
    if job.state == JobState.FAILED:
        requeue_jobs(session, [job.id])
        return
    now = utcnow()
    job.state = JobState.QUEUED
    job.attempts = 0
    job.next_attempt_at = now
    job.updated_at = now
    add_event(
        session,
        "job_requeued",
        job_id=job.id,
        state=job.state,
        message=f"{job.kind}: resend requested",
    )


def resend_study(session: Session, settings: Settings, study: Study) -> list[str]:
    """Requeue delivery of the study's newest results to every configured destination."""
    uid, version = study.study_instance_uid, study.report_version
    results = session.scalars(
        select(Result).where(Result.study_id == study.id, Result.report_version == version)
    ).all()
    if not results:
        return [f"study {uid}: no results to send (state {study.state}, report version {version})"]
    if not settings.destinations:
        return [f"study {uid}: no [[destinations]] configured; results stay in the spool"]
    lines = []
    for dest in settings.destinations:
        where = f"study {uid} report v{version} -> {dest.name}"
        key = deliver_dedup_key(study.id, version, dest.name)
        job = session.scalars(select(Job).where(Job.dedup_key == key)).first()
        if job is None:
            # a destination configured after the report was made
            for r in results:
                if (
                    session.scalars(
                        select(Delivery.id).where(
                            Delivery.result_id == r.id, Delivery.destination == dest.name
                        )
                    ).first()
                    is None
                ):
                    session.add(
                        Delivery(
                            result_id=r.id,
                            destination=dest.name,
                            state=DeliveryState.PENDING,
                            attempts=0,
                        )
                    )
            session.flush()
            new = enqueue_once(
                session,
                JobKind.DELIVER,
                key,
                study_id=study.id,
                payload={"destination": dest.name, "report_version": version},
                max_attempts=settings.deliver.max_attempts,
            )
            lines.append(
                f"{where}: delivery queued ({len(results)} object(s), job {new.id if new else '?'})"
            )
        elif job.state in (JobState.QUEUED, JobState.RUNNING):
            lines.append(f"{where}: already {job.state} (job {job.id}), left as it is")
        else:
            n = _reset_deliveries(session, job, all_objects=True)
            previous = job.state
            _requeue(session, job)
            lines.append(f"{where}: requeued job {job.id} (was {previous}), {n} object(s) to send")
    rollup_delivery(session, study)
    return lines


def resend_failed(session: Session) -> list[str]:
    """Requeue every failed deliver job; only its undelivered objects are sent again."""
    lines = []
    jobs = session.scalars(
        select(Job)
        .where(Job.kind == JobKind.DELIVER, Job.state == JobState.FAILED)
        .order_by(Job.id)
    ).all()
    for job in jobs:
        study = session.get(Study, job.study_id)
        n = _reset_deliveries(session, job, all_objects=False)
        _requeue(session, job)
        payload = job.payload or {}
        lines.append(
            f"study {study.study_instance_uid if study else job.study_id} report "
            f"v{payload.get('report_version')} -> {payload.get('destination')}: "
            f"requeued job {job.id}, {n} object(s) to send"
        )
        if study is not None:
            rollup_delivery(session, study)
    if not lines:
        lines.append("no failed deliveries")
    return lines


def resend(settings: Settings, session: Session, study_uids: list[str] | None) -> list[str]:
    """Do the resend in the caller's transaction; raises :class:`UnknownStudies` first."""
    if study_uids is None:
        return resend_failed(session)
    studies = {
        s.study_instance_uid: s
        for s in session.scalars(
            select(Study).where(Study.study_instance_uid.in_(study_uids))
        ).all()
    }
    unknown = [u for u in study_uids if u not in studies]
    if unknown:
        raise UnknownStudies(unknown)
    lines: list[str] = []
    for uid in dict.fromkeys(study_uids):
        lines += resend_study(session, settings, studies[uid])
    return lines
