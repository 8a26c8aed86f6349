"""Read-only questions the node asks its store: job counts, queue ages, write lock, free disk.

One implementation each, shared by ``status``, the metrics collector, the health
checks and the scheduler's log line.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from pathlib import Path

from sqlalchemy import func, select, text

from triage_node.store.db import Store
from triage_node.store.models import Instance, Job, JobKind, JobState, utcnow


def queue_stats(store: Store) -> dict[str, dict[str, int]]:
    """Counts of jobs by kind and state and of instances by state."""
    with store.read() as session:
        jobs = session.execute(
            select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
        ).all()
        instances = session.execute(
            select(Instance.state, func.count()).group_by(Instance.state)
        ).all()
    return {
        "jobs": {f"{kind}.{state}": int(n) for kind, state, n in jobs},
        "instances": {str(state): int(n) for state, n in instances},
    }


def waiting_jobs(
    store: Store, now: dt.datetime | None = None
) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
    """Job counts by (kind, state), and the age in seconds of the oldest waiting job by kind.

    Waiting means queued (due or backing off) or running. Kinds with nothing
    waiting have age 0, so an alert on the age sees every kind.
    """
    now = now or utcnow()
    waiting = (JobState.QUEUED.value, JobState.RUNNING.value)
    with store.read() as session:
        counts = {
            (str(k), str(s)): int(n)
            for k, s, n in session.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            )
        }
        oldest = dict(
            session.execute(
                select(Job.kind, func.min(Job.created_at))
                .where(Job.state.in_(waiting))
                .group_by(Job.kind)
            ).all()
        )
    ages = {kind.value: 0.0 for kind in JobKind}
    for kind, created in oldest.items():
        if created is not None:
            if created.tzinfo is None:  # min() on SQLite bypasses the column type
                created = created.replace(tzinfo=dt.UTC)
            ages[str(kind)] = max(0.0, (now - created).total_seconds())
    return counts, ages


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
