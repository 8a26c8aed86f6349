"""Job queue on the database: enqueue, atomic claim with a lease, finish, retry, release.

A claim is one transaction: ``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL. A job whose lease has expired (its worker died) is
claimable again, so a crash loses nothing.

Due jobs are taken end of the pipeline first (deliver, then report, then score),
oldest first within a kind: under a backlog of arrivals, results for studies
already scored reach the archive instead of waiting behind every queued image.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, or_, select
from sqlalchemy.orm import Session

from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store, add_event
from triage_node.store.models import Job, JobKind, JobState


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds the lease on."""

    id: int
    kind: JobKind
    instance_id: int | None
    study_id: int | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    owner: str
    reclaimed: bool  # the previous holder's lease had expired


# Claim order across kinds: a smaller number first. Unknown kinds go last.
KIND_PRIORITY: dict[JobKind, int] = {
    JobKind.DELIVER: 0,
    JobKind.REPORT: 1,
    JobKind.SCORE: 2,
}


class LeaseLost(Exception):
    """The job's lease is no longer ours (expired and taken by another worker)."""


def enqueue_job(
    session: Session,
    kind: JobKind,
    *,
    instance_id: int | None = None,
    study_id: int | None = None,
    payload: dict[str, Any] | None = None,
    max_attempts: int = 5,
    not_before: dt.datetime | None = None,
    clock: Clock = utcnow,
) -> Job:
    """Add a job in the caller's transaction, due at ``not_before`` (default: now)."""
    now = clock()
    job = Job(
        kind=kind,
        state=JobState.QUEUED,
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
    add_event(
        session, "job_queued", job_id=job.id, instance_id=instance_id, state=job.state, message=kind
    )
    return job


def claim_next_job(
    store: Store,
    owner: str,
    kinds: Iterable[JobKind] | None = None,
    lease_seconds: float = 300.0,
    *,
    stopping: Callable[[], bool] | None = None,
    clock: Clock = utcnow,
) -> ClaimedJob | None:
    """Take the next due job (or one whose lease expired) and lease it to ``owner``.

    ``kinds`` limits the claim to job kinds this worker can run (None: any).
    ``stopping`` is asked once the transaction holds its lock: a worker told to
    stop while it waited for the lock (another writer) claims nothing. ``clock``
    says what is due and when the lease ends.
    """
    kinds = list(kinds) if kinds is not None else None
    with store.write() as session:
        # The clock is read inside the transaction: on SQLite, BEGIN IMMEDIATE may
        # have waited for another writer, and the lease must start from now.
        now = clock()
        due = or_(
            and_(Job.state == JobState.QUEUED, Job.next_attempt_at <= now),
            and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
        )
        query = select(Job).where(due)
        if kinds:
            query = query.where(Job.kind.in_(kinds))
        priority = case(
            *((Job.kind == k, p) for k, p in KIND_PRIORITY.items()), else_=len(KIND_PRIORITY)
        )
        query = query.order_by(priority, Job.next_attempt_at, Job.id).limit(1)
        if not store.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        job = session.scalars(query).first()
        if job is None or (stopping is not None and stopping()):
            return None
        reclaimed = job.state == JobState.RUNNING
        previous_owner = job.lease_owner
        job.state = JobState.RUNNING
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
            + (
                (
                    f" (lease of {previous_owner} expired)"
                    if previous_owner
                    else " (its holder process died)"
                )
                if reclaimed
                else ""
            ),
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
    if row is None or row.lease_owner != job.owner or row.state != JobState.RUNNING:
        raise LeaseLost(f"job {job.id}: lease no longer held by {job.owner}")
    return row


def extend_lease(
    store: Store, job: ClaimedJob, lease_seconds: float, *, clock: Clock = utcnow
) -> None:
    """Keep a long job's lease alive: it now ends ``lease_seconds`` from ``clock()``."""
    with store.write() as session:
        row = _owned(session, job)
        row.lease_expires_at = clock() + dt.timedelta(seconds=lease_seconds)


def finish_job(
    session: Session, job: ClaimedJob, message: str | None = None, *, clock: Clock = utcnow
) -> None:
    """Mark the job done in the caller's transaction (with the job's own results)."""
    row = _owned(session, job)
    row.state = JobState.DONE
    row.lease_owner = None
    row.lease_expires_at = None
    row.updated_at = clock()
    add_event(
        session,
        "job_done",
        job_id=row.id,
        instance_id=row.instance_id,
        state=row.state,
        message=message or row.kind,
    )


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: a delay in [min(cap, base/2), min(cap, base*2**(n-1))].

    ``attempts`` is the number of attempts made so far (1 after the first failure).
    """
    # Clamp the exponent: 2**attempts overflows a float long before it matters.
    upper = min(cap, base * 2.0 ** min(max(0, attempts - 1), 60))
    r = rng.random() if rng is not None else random.random()
    return min(cap, max(base / 2, upper * r))


def fail_job(
    store: Store,
    job: ClaimedJob,
    error: str,
    *,
    retry_after: float | None = None,
    permanent: bool = False,
    count_attempt: bool = True,
    on_change: Callable[[Session, JobState], None] | None = None,
    clock: Clock = utcnow,
) -> JobState:
    """Record a failed attempt; requeue ``retry_after`` seconds from ``clock()`` or mark failed.

    ``count_attempt=False`` is for waits that are not the job's fault (no model
    yet): the attempt is given back and the job is requeued even past
    ``max_attempts``, so it waits instead of being lost. ``on_change(session,
    new_state)`` runs in the same transaction, for the handler to update the
    instance or study row with the job. Raises :class:`LeaseLost` if the lease
    is no longer ours. Returns the job's new state.
    """
    now = clock()
    with store.write() as session:
        row = _owned(session, job)
        row.last_error = error[:2000]
        row.lease_owner = None
        row.lease_expires_at = None
        row.updated_at = now
        if not count_attempt:
            row.attempts = max(0, row.attempts - 1)
        exhausted = count_attempt and row.attempts >= row.max_attempts
        if permanent or retry_after is None or exhausted:
            row.state = JobState.FAILED
            kind = "job_failed"
        else:
            row.state = JobState.QUEUED
            row.next_attempt_at = now + dt.timedelta(seconds=retry_after)
            kind = "job_retry"
        add_event(
            session,
            kind,
            job_id=row.id,
            instance_id=row.instance_id,
            state=row.state,
            message=f"{row.kind}: {error[:500]}",
            data={"attempts": row.attempts, "retry_after": retry_after}
            if kind == "job_retry"
            else {"attempts": row.attempts},
        )
        if on_change is not None:
            on_change(session, row.state)
        return row.state


def release_job(
    store: Store,
    job: ClaimedJob,
    why: str = "worker stopping",
    *,
    on_release: Callable[[Session], None] | None = None,
    clock: Clock = utcnow,
) -> bool:
    """Give a job back unfinished (shutdown): queued again at once, attempt not counted.

    ``on_release(session)`` runs in the same transaction. Returns False (and
    changes nothing) when the lease was no longer ours.
    """
    now = clock()
    with store.write() as session:
        try:
            row = _owned(session, job)
        except LeaseLost:
            return False
        row.state = JobState.QUEUED
        row.attempts = max(0, row.attempts - 1)
        row.lease_owner = None
        row.lease_expires_at = None
        row.next_attempt_at = now
        row.updated_at = now
        add_event(
            session,
            "job_released",
            job_id=row.id,
            instance_id=row.instance_id,
            state=row.state,
            message=why,
        )
        if on_release is not None:
            on_release(session)
        return True


#: Payload key counting how often a job's holder process died while running it.
HOLDER_DEATHS = "holder_deaths"
#: After this many holder deaths a job is failed: it is probably what kills the process.
HOLDER_DEATH_LIMIT = 10


def holder_death_delay(deaths: int) -> float:
    """Seconds a job waits after its holder's ``deaths``-th death before it is tried again.

    The first death is the ordinary crash: the job runs again at once. From the
    second on, the job waits (5 s, doubling, at most 10 min) and goes behind the
    jobs due before it, so a node in a crash loop works through its queue instead of
    dying on the same jobs at every start.
    """
    if deaths <= 1:
        return 0.0
    return float(min(600, 5 * 2 ** min(deaths - 2, 10)))


def expire_dead_leases(
    store: Store, host: str, is_dead: Callable[[int], bool], *, clock: Clock = utcnow
) -> list[int]:
    """End the leases of jobs held by processes on ``host`` that no longer run.

    Lease owners are ``host:pid:thread``. A process that was killed (SIGKILL,
    OOM killer, power loss) leaves its jobs ``running`` until their leases run
    out; a node starting on the same host calls this first, so they are
    claimable at once. The attempt the dead process was making is given back
    (a crash loop of the node must not use up the oldest jobs' budgets) and
    counted in the job's ``payload["holder_deaths"]`` instead: a job whose holder
    died :data:`HOLDER_DEATH_LIMIT` times is failed by the worker as the likely
    cause, and from the second death on it waits :func:`holder_death_delay` first.
    ``is_dead(pid)`` decides; ``clock`` is when the leases end and the waits start.
    Returns the job ids whose leases were ended.
    """
    now = clock()
    with store.write() as session:
        query = select(Job).where(Job.state == JobState.RUNNING, Job.lease_owner.like(f"{host}:%"))
        if not store.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        ended: list[int] = []
        for row in session.scalars(query).all():
            parts = (row.lease_owner or "").split(":")
            if len(parts) < 3 or not parts[1].isdigit() or not is_dead(int(parts[1])):
                continue
            row.updated_at = now
            row.attempts = max(0, row.attempts - 1)
            deaths = int((row.payload or {}).get(HOLDER_DEATHS, 0)) + 1
            row.payload = {**(row.payload or {}), HOLDER_DEATHS: deaths}
            holder = row.lease_owner
            # No wait once the limit is reached: the next claim fails the job.
            wait = holder_death_delay(deaths) if deaths < HOLDER_DEATH_LIMIT else 0.0
            if wait:  # back in the queue, due after the wait
                row.state = JobState.QUEUED
                row.lease_expires_at = None
                row.next_attempt_at = now + dt.timedelta(seconds=wait)
            else:  # claimable at once, as a reclaim
                row.lease_expires_at = now
            # Without an owner the job is never counted dead twice for one death.
            row.lease_owner = None
            add_event(
                session,
                "job_lease_ended",
                job_id=row.id,
                instance_id=row.instance_id,
                state=row.state,
                message=f"{row.kind}: holder {holder} "
                f"is no longer running (death {deaths} of {HOLDER_DEATH_LIMIT} allowed)"
                + (f"; next try in {wait:.0f} s" if wait else ""),
            )
            ended.append(row.id)
        return ended


def requeue_jobs(session: Session, job_ids: list[int], *, clock: Clock = utcnow) -> int:
    """Put failed jobs back in the queue with a fresh attempt budget (``resend``).

    Each requeued job gets a ``job_requeued`` event. Returns how many were requeued.
    """
    if not job_ids:
        return 0
    now = clock()
    query = select(Job).where(Job.id.in_(job_ids), Job.state == JobState.FAILED)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update()
    rows = session.scalars(query).all()
    for row in rows:
        row.state = JobState.QUEUED
        row.attempts = 0
        row.next_attempt_at = now
        row.updated_at = now
        add_event(
            session,
            "job_requeued",
            job_id=row.id,
            instance_id=row.instance_id,
            state=row.state,
            message=f"{row.kind}: requeued after failure",
        )
    return len(rows)
