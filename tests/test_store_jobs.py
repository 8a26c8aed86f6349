"""Job queue on SQLite and PostgreSQL: enqueue, claim, lease, finish, fail, retry, release."""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections import Counter

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from tests.clock import MovableClock
from triage_node.store import Event, Job, JobState, Store
from triage_node.store.jobs import (
    LeaseLost,
    claim_next_job,
    enqueue_job,
    expire_dead_leases,
    extend_lease,
    fail_job,
    finish_job,
    release_job,
    requeue_jobs,
    retry_delay,
)
from triage_node.store.migrate import upgrade
from triage_node.store.models import Base, utcnow


@pytest.fixture
def store(database_url: str) -> Store:
    s = Store(database_url)
    upgrade(s)
    yield s
    s.dispose()


def _enqueue(store: Store, n: int = 1, kind: str = "score", **kw: object) -> list[int]:
    with store.write() as session:
        return [enqueue_job(session, kind, **kw).id for _ in range(n)]  # type: ignore[arg-type]


def _job(store: Store, job_id: int) -> Job:
    with store.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)  # a detached snapshot, not expired by the read's rollback
        return job


def _events(store: Store, job_id: int) -> list[str]:
    with store.read() as session:
        return list(
            session.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id))
        )


def test_enqueue_claim_finish(store: Store) -> None:
    (job_id,) = _enqueue(store, payload={"x": 1})
    job = claim_next_job(store, "w1", ["score"], lease_seconds=60)
    assert job is not None and job.id == job_id
    assert job.attempts == 1 and job.payload == {"x": 1} and not job.reclaimed
    row = _job(store, job_id)
    assert row.state == JobState.RUNNING and row.lease_owner == "w1"
    assert row.lease_expires_at is not None and row.lease_expires_at > utcnow()
    assert claim_next_job(store, "w2", ["score"], 60) is None  # leased, not due
    with store.write() as session:
        finish_job(session, job, "ok")
    row = _job(store, job_id)
    assert row.state == JobState.DONE and row.lease_owner is None
    assert _events(store, job_id) == ["job_queued", "job_started", "job_done"]
    assert claim_next_job(store, "w2", None, 60) is None


def test_claim_filters_kinds_and_respects_next_attempt(store: Store) -> None:
    later = utcnow() + dt.timedelta(hours=1)
    _enqueue(store, kind="report")
    _enqueue(store, kind="score", not_before=later)
    assert claim_next_job(store, "w", ["score"], 60) is None
    job = claim_next_job(store, "w", ["report", "score"], 60)
    assert job is not None and job.kind == "report"


def test_results_are_claimed_before_a_backlog_of_scoring(store: Store) -> None:
    """A burst of arrivals must not hold back reports and deliveries of studies
    already scored: deliver, then report, then score; oldest first within a kind."""
    earlier = utcnow() - dt.timedelta(minutes=10)
    scores = _enqueue(store, 3, kind="score", not_before=earlier)
    (report,) = _enqueue(store, kind="report")
    deliveries = _enqueue(store, 2, kind="deliver")
    later_report = _enqueue(store, kind="report")[0]
    order = []
    while (job := claim_next_job(store, "w", None, 60)) is not None:
        order.append(job.id)
    assert order == [*deliveries, report, later_report, *scores]


def test_fail_retries_with_backoff_then_fails(store: Store) -> None:
    (job_id,) = _enqueue(store, max_attempts=2)
    job = claim_next_job(store, "w", None, 60)
    assert job is not None
    before = utcnow()
    assert fail_job(store, job, "boom 1", retry_after=30) == JobState.QUEUED
    row = _job(store, job_id)
    assert row.last_error == "boom 1" and row.lease_owner is None
    assert row.next_attempt_at >= before + dt.timedelta(seconds=29)
    assert claim_next_job(store, "w", None, 60) is None  # not due for 30 s
    with store.write() as session:
        session.get(Job, job_id).next_attempt_at = utcnow()  # type: ignore[union-attr]
    job = claim_next_job(store, "w", None, 60)
    assert job is not None and job.attempts == 2
    assert fail_job(store, job, "boom 2", retry_after=30) == JobState.FAILED
    assert _job(store, job_id).state == JobState.FAILED
    assert _events(store, job_id)[-1] == "job_failed"
    # resend puts it back with a fresh budget, with an event.
    with store.write() as session:
        assert requeue_jobs(session, [job_id]) == 1
    row = _job(store, job_id)
    assert row.state == JobState.QUEUED and row.attempts == 0
    assert _events(store, job_id)[-1] == "job_requeued"


def test_fail_permanent_and_uncounted_waits(store: Store) -> None:
    a, b = _enqueue(store, 2, max_attempts=1)
    job = claim_next_job(store, "w", None, 60)
    assert job is not None and job.id == a
    assert fail_job(store, job, "undecodable", permanent=True, retry_after=5) == "failed"
    job = claim_next_job(store, "w", None, 60)
    assert job is not None and job.id == b
    changes: list[str] = []
    # A wait that is not the job's fault never exhausts its attempts (max_attempts=1 here).
    state = fail_job(
        store,
        job,
        "model unavailable: none",
        retry_after=0,
        count_attempt=False,
        on_change=lambda s, new: changes.append(new),
    )
    assert state == "queued" and changes == ["queued"]
    assert _job(store, b).attempts == 0


def test_release_gives_job_back_without_an_attempt(store: Store) -> None:
    (job_id,) = _enqueue(store)
    job = claim_next_job(store, "w", None, 60)
    assert job is not None
    assert release_job(store, job, "stopping") is True
    row = _job(store, job_id)
    assert row.state == JobState.QUEUED and row.attempts == 0 and row.lease_owner is None
    assert release_job(store, job) is False  # no longer ours: no change
    again = claim_next_job(store, "w2", None, 60)
    assert again is not None and again.id == job_id and again.attempts == 1


def test_expired_lease_returns_job_and_old_owner_loses_it(store: Store) -> None:
    clock = MovableClock()
    (job_id,) = _enqueue(store)
    job = claim_next_job(store, "dead-worker", None, lease_seconds=60, clock=clock)
    assert job is not None
    assert claim_next_job(store, "w2", None, 60, clock=clock) is None
    clock.advance(61)  # the holder died: nobody extends its lease
    taken = claim_next_job(store, "w2", None, 60, clock=clock)
    assert taken is not None and taken.id == job_id
    assert taken.reclaimed and taken.attempts == 2
    # The first holder comes back: every write it tries is refused.
    with pytest.raises(LeaseLost):
        extend_lease(store, job, 60)
    with pytest.raises(LeaseLost), store.write() as session:
        finish_job(session, job)
    with pytest.raises(LeaseLost):
        fail_job(store, job, "late", retry_after=1)
    assert release_job(store, job) is False
    with store.write() as session:
        finish_job(session, taken)
    assert _job(store, job_id).state == JobState.DONE
    assert "job_reclaimed" in _events(store, job_id)


def test_extend_lease_keeps_job(store: Store) -> None:
    clock = MovableClock()
    _enqueue(store)
    job = claim_next_job(store, "w", None, lease_seconds=60, clock=clock)
    assert job is not None
    for _ in range(3):  # 90 s in all: well past the first lease
        clock.advance(30)
        extend_lease(store, job, 60, clock=clock)
        assert claim_next_job(store, "other", None, 60, clock=clock) is None
    clock.advance(61)  # no longer extended: the lease runs out
    assert claim_next_job(store, "other", None, 60, clock=clock) is not None


def test_concurrent_claimers_never_share_a_job(database_url: str) -> None:
    """Eight claimers, each with its own Store (own connections), race over 120 jobs."""
    setup = Store(database_url)
    upgrade(setup)
    n_jobs = 120
    _enqueue(setup, n_jobs)
    claims: list[tuple[str, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        s = Store(database_url)
        try:
            while True:
                job = claim_next_job(s, name, None, 60)
                if job is None:
                    return
                with lock:
                    claims.append((name, job.id))
                with s.write() as session:
                    finish_job(session, job)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            s.dispose()

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    per_job = Counter(job_id for _, job_id in claims)
    assert len(per_job) == n_jobs and set(per_job.values()) == {1}
    assert len({name for name, _ in claims}) > 1  # it really was a race
    with setup.read() as session:
        states = Counter(session.scalars(select(Job.state)))
    assert states == {"done": n_jobs}
    setup.dispose()


def test_retry_delay_is_bounded_exponential_with_jitter() -> None:
    rng = random.Random(7)
    for attempts in range(1, 12):
        upper = min(600.0, 10 * 2 ** (attempts - 1))
        delays = [retry_delay(attempts, 10, 600, rng) for _ in range(200)]
        assert all(5 <= d <= upper for d in delays)
        assert max(delays) > 0.8 * upper  # reaches near the exponential bound
        if upper > 20:
            assert len({round(d, 3) for d in delays}) > 100  # jittered, not a constant
    assert retry_delay(1000, 10, 600) <= 600
    assert retry_delay(1, 10, 3) == 3  # the cap wins even over the floor


def test_a_job_whose_holder_died_again_waits_behind_the_queue(store: Store) -> None:
    """In a crash loop the node must get through its queue, not die on the same job
    at every start: the first death retries at once, later ones wait, growing."""
    from triage_node.store.jobs import holder_death_delay

    assert holder_death_delay(1) == 0
    assert [holder_death_delay(n) for n in (2, 3, 4)] == [5, 10, 20]
    assert holder_death_delay(50) == 600
    first, second = _enqueue(store, 2, not_before=utcnow() - dt.timedelta(minutes=1))
    taken = claim_next_job(store, "host-a:101:worker-1", None, 3600)
    assert taken is not None and taken.id == first
    assert expire_dead_leases(store, "host-a", lambda pid: True) == [first]
    again = claim_next_job(store, "host-a:102:worker-1", None, 3600)
    assert again is not None and again.id == first  # death 1: straight back
    assert expire_dead_leases(store, "host-a", lambda pid: pid == 102) == [first]
    # death 2: the other job goes first and this one is not due for 5 s
    taken = claim_next_job(store, "host-a:103:worker-1", None, 3600)
    assert taken is not None and taken.id == second
    assert claim_next_job(store, "host-a:103:worker-2", None, 3600) is None
    row = _job(store, first)
    assert row.state == JobState.QUEUED and row.lease_owner is None
    assert row.next_attempt_at > utcnow() + dt.timedelta(seconds=3)
    assert row.attempts == 0 and row.payload == {"holder_deaths": 2}
    assert "next try in 5 s" in _last_message(store, first)
    # A node that starts (and dies) again meanwhile does not count a death nobody had.
    assert expire_dead_leases(store, "host-a", lambda pid: pid != 103) == []
    assert _job(store, first).payload == {"holder_deaths": 2}


def _last_message(store: Store, job_id: int) -> str:
    with store.read() as session:
        return (
            session.scalars(
                select(Event.message).where(Event.job_id == job_id).order_by(Event.id.desc())
            ).first()
            or ""
        )


def test_a_stopping_worker_claims_nothing(store: Store) -> None:
    (job_id,) = _enqueue(store)
    assert claim_next_job(store, "w", ["score"], 60, stopping=lambda: True) is None
    assert _job(store, job_id).state == JobState.QUEUED
    assert claim_next_job(store, "w", ["score"], 60, stopping=lambda: False) is not None


def test_leases_of_dead_processes_on_this_host_end(store: Store) -> None:
    dead, alive, elsewhere, odd = _enqueue(store, 4)
    for owner in (
        "host-a:101:worker-1",
        "host-a:202:worker-1",
        "host-b:101:worker-1",
        "host-a:worker",
    ):
        assert claim_next_job(store, owner, None, lease_seconds=3600) is not None
    ended = expire_dead_leases(store, "host-a", lambda pid: pid == 101)
    assert ended == [dead]
    assert "job_lease_ended" in _events(store, dead)
    taken = claim_next_job(store, "host-a:303:worker-1", None, 60)
    # The dead holder's attempt is given back and counted as a holder death instead.
    assert taken is not None and taken.id == dead and taken.reclaimed and taken.attempts == 1
    assert taken.payload == {"holder_deaths": 1}
    for job_id in (alive, elsewhere, odd):
        assert _job(store, job_id).lease_expires_at > utcnow()  # type: ignore[operator]


def test_migrations_match_the_models(store: Store) -> None:
    """The migrated schema is the models' schema: autogenerate finds nothing to add, drop
    or retype (the state and kind enums are the same VARCHAR columns as before)."""
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
