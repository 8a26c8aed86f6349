"""Read-only questions the node asks its store: job counts, queue ages, write lock, free disk.

One implementation each, shared by ``status``, the metrics collector, the health
checks, retention and the scheduler's log line.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from triage_node.store.db import Store
from triage_node.store.models import Instance, InstanceState, Job, JobKind, JobState

#: Job states that count as waiting: queued (due or backing off) or running.
WAITING_STATES = (JobState.QUEUED, JobState.RUNNING)


def _aware(value: dt.datetime) -> dt.datetime:
    # min() on SQLite may bypass the column type and give a naive UTC datetime.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class QueueCounts:
    """One snapshot of the queue: jobs by kind and state, instances by state, oldest waiting.

    ``oldest_waiting`` holds, per job kind with anything waiting, when its oldest
    waiting job was created.
    """

    jobs: Mapping[tuple[JobKind, JobState], int]
    instances: Mapping[InstanceState, int]
    oldest_waiting: Mapping[JobKind, dt.datetime]

    @property
    def waiting(self) -> int:
        """How many jobs are queued or running (the queue depth)."""
        return sum(n for (_, state), n in self.jobs.items() if state in WAITING_STATES)

    def oldest_waiting_seconds(self, now: dt.datetime) -> float | None:
        """Age of the oldest waiting job of any kind; None when nothing waits."""
        if not self.oldest_waiting:
            return None
        return (now - min(self.oldest_waiting.values())).total_seconds()

    def waiting_ages(self, now: dt.datetime) -> dict[JobKind, float]:
        """Age in seconds of the oldest waiting job by kind; 0 for every kind with none.

        Every kind is present, so an alert on the age sees every kind.
        """
        ages = dict.fromkeys(JobKind, 0.0)
        for kind, created in self.oldest_waiting.items():
            ages[kind] = max(0.0, (now - created).total_seconds())
        return ages


def queue_counts(session: Session) -> QueueCounts:
    """Count the queue in the caller's read transaction (one consistent snapshot)."""
    jobs = {
        (kind, state): int(n)
        for kind, state, n in session.execute(
            select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
        )
    }
    instances = {
        state: int(n)
        for state, n in session.execute(
            select(Instance.state, func.count()).group_by(Instance.state)
        )
    }
    oldest = {
        kind: _aware(created)
        for kind, created in session.execute(
            select(Job.kind, func.min(Job.created_at))
            .where(Job.state.in_(WAITING_STATES))
            .group_by(Job.kind)
        )
        if created is not None
    }
    return QueueCounts(jobs, instances, oldest)


def read_queue_counts(store: Store) -> QueueCounts:
    """:func:`queue_counts` in a read transaction of its own."""
    with store.read() as session:
        return queue_counts(session)


def queue_stats(store: Store) -> dict[str, dict[str, int]]:
    """The queue for the scheduler's log line: ``{"jobs": {"kind.state": n}, "instances": ...}``."""
    counts = read_queue_counts(store)
    return {
        "jobs": {f"{kind}.{state}": n for (kind, state), n in counts.jobs.items()},
        "instances": {str(state): n for state, n in counts.instances.items()},
    }


#: How long a scrape waits for the database's write lock before reporting it not writable.
WRITE_PROBE_SECONDS = 1.0


def store_writable(store: Store, wait_seconds: float = WRITE_PROBE_SECONDS) -> bool:
    """True if a write transaction can start within ``wait_seconds`` (nothing is written).

    SQLite: ``BEGIN IMMEDIATE`` (the write lock every writer of the node takes) and
    ``ROLLBACK`` at once, on a connection of the probe's own (the pool's connections keep
    their busy timeout). Another process holding the lock (a backup, an admin's
    ``sqlite3`` shell, a stuck program) makes this False while reads still work: the
    case in which the receiver holds every C-STORE unanswered, then refuses it with
    0xA700, and ``triage_store_up`` alone would still say 1. A missing database file is
    not writable either (it is not created). PostgreSQL: the session is not read-only
    (a standby after a fail-over, a read-only default).
    """
    if not store.is_sqlite:
        with store.engine.connect() as conn:
            return str(conn.execute(text("SHOW transaction_read_only")).scalar()) == "off"
    path = store.engine.url.database
    if not path or path == ":memory:":
        return True  # private to this process: nobody else can lock it
    try:
        probe = sqlite3.connect(
            Path(path).absolute().as_uri() + "?mode=rw",
            uri=True,
            timeout=wait_seconds,
            isolation_level=None,
        )
    except sqlite3.OperationalError:
        return False
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError:  # "database is locked", or an I/O error
        return False
    finally:
        probe.close()
    return True


def free_disk_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent).

    None when the file system cannot be asked (the path's parents are gone).
    """
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:  # not created yet: its file system
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None
