"""Job queue on the database: enqueue, atomic claim with a lease, finish, retry, release.

A claim is one transaction: ``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL. A job whose lease has expired (its worker died) is
claimable again, so a crash loses nothing.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from triage_node.store.db import Store, add_event
from triage_node.store.models import Job, JobState, utcnow


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds the lease on."""

    id: int
    kind: str
    instance_id: int | None
    study_id: int | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    owner: str
    reclaimed: bool  # the previous holder's lease had expired


class LeaseLost(Exception):
    """The job's lease is no longer ours (expired and taken by another worker)."""


def enqueue_job(
    session: Session,
    kind: str,
    *,
    instance_id: int | None = None,
    study_id: int | None = None,
    payload: dict[str, Any] | None = None,
    max_attempts: int = 5,
    not_before: dt.datetime | None = None,
) -> Job:
    """Add a job in the caller's transaction."""
    now = utcnow()
    job = Job(
        kind=kind,
        state=JobState.QUEUED.value,
        instance_id=instance_id,
        study_id=study_id,
        payload=payload or {},
        attempts=0,
        max_attempts=max_attempts,
        next_attempt_at=not_before or now,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    add_event(session, "job_queued", job_id=job.id, instance_id=instance_id, state=job.state,
              message=kind)
    return job


def claim_next_job(
    store: Store, owner: str, kinds: list[str] | None = None, lease_seconds: float = 300.0
) -> ClaimedJob | None:
    """Take the next due job (or one whose lease expired) and lease it to ``owner``."""
    now = utcnow()
    due = or_(
        and_(Job.state == JobState.QUEUED.value, Job.next_attempt_at <= now),
        and_(Job.state == JobState.RUNNING.value, Job.lease_expires_at < now),
    )
    query = select(Job).where(due).order_by(Job.next_attempt_at, Job.id).limit(1)
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if not store.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    with store.write() as session:
        job = session.scalars(query).first()
        if job is None:
            return None
        reclaimed = job.state == JobState.RUNNING.value
        previous_owner = job.lease_owner
        job.state = JobState.RUNNING.value
        job.attempts += 1
        job.lease_owner = owner
        job.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
        job.updated_at = now
        add_event(
            session,
            "job_reclaimed" if reclaimed else "job_started",
            job_id=job.id,
            instance_id=job.instance_id,
            state=job.state,
            message=f"{job.kind} attempt {job.attempts} by {owner}"
            + (f" (lease of {previous_owner} expired)" if reclaimed else ""),
        )
        return ClaimedJob(
            id=job.id,
            kind=job.kind,
            instance_id=job.instance_id,
            study_id=job.study_id,
            payload=dict(job.payload or {}),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            owner=owner,
            reclaimed=reclaimed,
        )


def _owned(session: Session, job: ClaimedJob) -> Job:
    row = session.get(Job, job.id, with_for_update=True)
    if row is None or row.lease_owner != job.owner or row.state != JobState.RUNNING.value:
        raise LeaseLost(f"job {job.id}: lease no longer held by {job.owner}")
    return row


def extend_lease(store: Store, job: ClaimedJob, lease_seconds: float) -> None:
    """Keep a long job's lease alive."""
    with store.write() as session:
        row = _owned(session, job)
        row.lease_expires_at = utcnow() + dt.timedelta(seconds=lease_seconds)


def finish_job(session: Session, job: ClaimedJob, message: str | None = None) -> None:
    """Mark the job done in the caller's transaction (with the job's own results)."""
    row = _owned(session, job)
    row.state = JobState.DONE.value
    row.lease_owner = None
    row.lease_expires_at = None
    row.updated_at = utcnow()
    add_event(session, "job_done", job_id=row.id, instance_id=row.instance_id, state=row.state,
              message=message or row.kind)


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: a delay in [base/2, min(cap, base*2**(n-1))]."""
    upper = min(cap, base * (2 ** max(0, attempts - 1)))
    r = (rng or random).random()
    return max(base / 2, upper * r)


def fail_job(
    store: Store,
    job: ClaimedJob,
    error: str,
    *,
    retry_after: float | None = None,
    permanent: bool = False,
) -> str:
    """Record a failed attempt; requeue after ``retry_after`` seconds or mark failed.

    Returns the job's new state.
    """
    now = utcnow()
    with store.write() as session:
        row = _owned(session, job)
        row.last_error = error[:2000]
        row.lease_owner = None
        row.lease_expires_at = None
        row.updated_at = now
        if permanent or retry_after is None or row.attempts >= row.max_attempts:
            row.state = JobState.FAILED.value
            kind = "job_failed"
        else:
            row.state = JobState.QUEUED.value
            row.next_attempt_at = now + dt.timedelta(seconds=retry_after)
            kind = "job_retry"
        add_event(session, kind, job_id=row.id, instance_id=row.instance_id, state=row.state,
                  message=f"{row.kind}: {error[:500]}")
        return row.state


def release_job(store: Store, job: ClaimedJob, why: str = "worker stopping") -> None:
    """Give a job back unfinished (shutdown): queued again at once, attempt not counted."""
    now = utcnow()
    with store.write() as session:
        try:
            row = _owned(session, job)
        except LeaseLost:
            return
        row.state = JobState.QUEUED.value
        row.attempts = max(0, row.attempts - 1)
        row.lease_owner = None
        row.lease_expires_at = None
        row.next_attempt_at = now
        row.updated_at = now
        add_event(session, "job_released", job_id=row.id, instance_id=row.instance_id,
                  state=row.state, message=why)


def requeue_jobs(session: Session, job_ids: list[int]) -> int:
    """Put failed jobs back in the queue with a fresh attempt budget (``resend``)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.state == JobState.FAILED.value)
        .values(state=JobState.QUEUED.value, attempts=0, next_attempt_at=now, updated_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
