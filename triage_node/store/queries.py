"""Read-only questions the node asks its store: job counts, queue ages, write lock, free disk,
hourly trends, each scanner's stream.

One implementation each, shared by ``status``, the metrics collector, the health
checks, retention, the scheduler's log line, the drift watch and the web console.
"""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from triage_node.assessment import HISTOGRAM_EDGES, histogram
from triage_node.store.db import Store
from triage_node.store.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceState,
    Job,
    JobKind,
    JobState,
    Result,
    ResultKind,
)

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


@dataclass(frozen=True)
class HourTrend:
    """One hour (UTC) of the node's work.

    ``arrivals``: instances received (not counting the node's own results coming
    back); ``reports``: study reports made (SR objects); ``latency_*``: seconds from
    a study's first instance arriving to its report being delivered to a
    destination (as ``triage_end_to_end_seconds``), over the deliveries of this
    hour; None when there were none.
    """

    hour: dt.datetime
    arrivals: int
    reports: int
    deliveries: int
    latency_p50: float | None
    latency_p95: float | None


def _hour(value: dt.datetime) -> dt.datetime:
    return _aware(value).replace(minute=0, second=0, microsecond=0)


def hourly_trends(session: Session, since: dt.datetime, until: dt.datetime) -> list[HourTrend]:
    """Every hour from ``since`` to ``until`` (both floored to the hour), oldest first."""
    start, end = _hour(since), _hour(until)
    hours = [
        start + dt.timedelta(hours=i) for i in range(int((end - start).total_seconds()) // 3600 + 1)
    ]
    arrivals = dict.fromkeys(hours, 0)
    reports = dict.fromkeys(hours, 0)
    latencies: dict[dt.datetime, list[float]] = {h: [] for h in hours}
    for (received,) in session.execute(
        select(Instance.received_at).where(
            Instance.received_at >= start, Instance.own_result.is_(False)
        )
    ):
        if _hour(received) in arrivals:
            arrivals[_hour(received)] += 1
    for (created,) in session.execute(
        select(Result.created_at).where(Result.created_at >= start, Result.kind == ResultKind.SR)
    ):
        if _hour(created) in reports:
            reports[_hour(created)] += 1
    first_arrival = (
        select(Instance.study_id, func.min(Instance.received_at).label("first"))
        .where(Instance.own_result.is_(False))
        .group_by(Instance.study_id)
        .subquery()
    )
    for delivered, first in session.execute(
        select(Delivery.delivered_at, first_arrival.c.first)
        .join(Result, Result.id == Delivery.result_id)
        .join(first_arrival, first_arrival.c.study_id == Result.study_id)
        .where(
            Result.kind == ResultKind.SR,
            Delivery.state == DeliveryState.DELIVERED,
            Delivery.delivered_at >= start,
        )
    ):
        if delivered is not None and first is not None and _hour(delivered) in latencies:
            seconds = (_aware(delivered) - _aware(first)).total_seconds()
            latencies[_hour(delivered)].append(max(0.0, seconds))
    trends = []
    for h in hours:
        values = latencies[h]
        p50, p95 = (
            (float(np.percentile(values, 50)), float(np.percentile(values, 95)))
            if values
            else (None, None)
        )
        trends.append(HourTrend(h, arrivals[h], reports[h], len(values), p50, p95))
    return trends


#: Instance states in which the model has judged an image (the reference's "images").
JUDGED_STATES = (InstanceState.SCORED, InstanceState.NOT_ASSESSABLE)


@dataclass(frozen=True)
class ScannerSummary:
    """One scanner's images received in a window, and what the model made of them.

    A scanner is a (Manufacturer, Manufacturer's Model Name) pair as the images
    carry them (None: the image had none, or arrived before the node recorded them).
    The counts match the terms of the bundle's validation reference
    (:class:`triage_node.score.reference.ValidationReference`):

    * ``received``: instances stored in the window (our own result objects not
      counted), whatever became of them; ``skipped``, ``waiting`` (queued or
      scoring) and ``failed`` are among them;
    * ``judged``: images the model has judged (scored or not assessable), the
      reference's ``images``; ``assessable`` (at least one hip assessed: the
      reference's ``scored``) plus ``not_assessable``;
    * ``positives``: assessable images whose stored decision is positive (DXA
      recommended, at the operating point they were scored at);
    * ``hips``: the hips of the judged images, ``hip_reasons`` the not-assessable
      ones by reason (one image can have a prosthesis on one side and an
      assessable other side);
    * ``histogram``: the image values of the assessable images in the bins of
      :data:`triage_node.assessment.HISTOGRAM_EDGES`.
    """

    manufacturer: str | None
    model_name: str | None
    received: int = 0
    skipped: int = 0
    waiting: int = 0
    failed: int = 0
    assessable: int = 0
    not_assessable: int = 0
    positives: int = 0
    hips: int = 0
    hip_reasons: Mapping[str, int] = field(default_factory=dict)
    histogram: tuple[int, ...] = (0,) * (len(HISTOGRAM_EDGES) - 1)

    @property
    def judged(self) -> int:
        """Images the model has judged: assessable or not."""
        return self.assessable + self.not_assessable

    @property
    def positive_rate(self) -> float | None:
        """Positives among the assessable images; None when there are none."""
        return self.positives / self.assessable if self.assessable else None

    @property
    def not_assessable_rate(self) -> float | None:
        """Not-assessable images among the judged ones; None when there are none."""
        return self.not_assessable / self.judged if self.judged else None

    def hip_reason_rate(self, reason: str) -> float | None:
        """Hips not assessable for ``reason`` among all hips judged; None when there are none."""
        return self.hip_reasons.get(reason, 0) / self.hips if self.hips else None


@dataclass
class _Tally:
    received: int = 0
    skipped: int = 0
    waiting: int = 0
    failed: int = 0
    assessable: int = 0
    not_assessable: int = 0
    positives: int = 0
    hips: int = 0
    hip_reasons: Counter[str] = field(default_factory=Counter)
    values: list[float] = field(default_factory=list)


def _assessment(result: Any) -> Mapping[str, Any]:
    """The stored assessment of a score record (``{}`` when it has none)."""
    if isinstance(result, Mapping):
        assessment = result.get("assessment")
        if isinstance(assessment, Mapping):
            return assessment
    return {}


def _count_judged(tally: _Tally, state: InstanceState, probability: Any, result: Any) -> None:
    assessment = _assessment(result)
    sides = assessment.get("sides")
    for side in sides if isinstance(sides, list) else ():
        if not isinstance(side, Mapping):
            continue
        tally.hips += 1
        if side.get("probability") is None:
            tally.hip_reasons[str(side.get("not_assessable_reason") or "not given")] += 1
    if state == InstanceState.NOT_ASSESSABLE:
        tally.not_assessable += 1
        return
    tally.assessable += 1
    if assessment.get("positive") is True:
        tally.positives += 1
    value = probability if probability is not None else assessment.get("probability")
    if isinstance(value, int | float):
        tally.values.append(float(value))


def scanner_summaries(
    session: Session, since: dt.datetime, until: dt.datetime | None = None
) -> list[ScannerSummary]:
    """Each scanner's :class:`ScannerSummary` over instances received in ``[since, until)``.

    ``until`` None: up to now. Sorted by manufacturer and model name (unknown
    last). Reads the state, value and stored assessment of each instance in the
    window, in the caller's read transaction; writes nothing.
    """
    query = select(
        Instance.manufacturer,
        Instance.model_name,
        Instance.state,
        Instance.probability,
        Instance.result,
    ).where(Instance.received_at >= since, Instance.own_result.is_(False))
    if until is not None:
        query = query.where(Instance.received_at < until)
    tallies: dict[tuple[str | None, str | None], _Tally] = {}
    for manufacturer, model_name, state, probability, result in session.execute(query):
        tally = tallies.setdefault((manufacturer, model_name), _Tally())
        tally.received += 1
        if state == InstanceState.SKIPPED:
            tally.skipped += 1
        elif state == InstanceState.FAILED:
            tally.failed += 1
        elif state in JUDGED_STATES:
            _count_judged(tally, state, probability, result)
        else:
            tally.waiting += 1
    return [
        ScannerSummary(
            manufacturer=manufacturer,
            model_name=model_name,
            received=t.received,
            skipped=t.skipped,
            waiting=t.waiting,
            failed=t.failed,
            assessable=t.assessable,
            not_assessable=t.not_assessable,
            positives=t.positives,
            hips=t.hips,
            hip_reasons=dict(sorted(t.hip_reasons.items())),
            histogram=histogram(t.values),
        )
        for (manufacturer, model_name), t in sorted(
            tallies.items(),
            key=lambda item: (
                item[0][0] is None,
                item[0][0] or "",
                item[0][1] is None,
                item[0][1] or "",
            ),
        )
    ]
