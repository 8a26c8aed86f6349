"""Timers of the node (APScheduler): periodic tasks that run beside the workers.

Runs in ``serve`` and ``work``. Every task here must be safe with several
``work`` processes on one database (each process runs its own scheduler): a
task either only reads, or changes rows in one transaction whose conditions
make a second run a no-op.

Tasks, in :func:`periodic_tasks`: queue statistics in the log; the study
settle check (:func:`triage_node.work.study.settle_studies`: one ``report``
job for each study quiet for ``node.settle_seconds`` with no instance still
queued or scoring; safe with several processes); with ``[completeness]
query_peer``, the archive check (:class:`triage_node.work.completeness.CompletenessCheck`:
a report as soon as the node holds every eligible instance the archive lists; its
own thread, so a slow archive never holds up the settle check); retention
(:func:`triage_node.work.retention.apply_retention`: spool files, then rows, then
audit events past their periods; safe with several processes).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from triage_node.config import Settings
from triage_node.store.db import CommitSignal, Store
from triage_node.store.queries import queue_stats
from triage_node.work.completeness import COMPLETENESS_CHECK_SECONDS, CompletenessCheck
from triage_node.work.retention import apply_retention
from triage_node.work.study import SETTLE_CHECK_SECONDS, settle_studies

log = logging.getLogger(__name__)

QUEUE_STATS_SECONDS = 60.0
#: How often a wake watcher checks that its scheduler still runs.
WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class PeriodicTask:
    """A function run every ``seconds`` (never two runs of it at once)."""

    name: str
    seconds: float
    run: Callable[[], Any]
    # Also run as soon as this signal fires (and the last run has ended), not only on
    # the next tick.
    wake: CommitSignal | None = None


def log_queue_stats(store: Store) -> None:
    """Write one log line with the queue statistics."""
    stats = queue_stats(store)
    log.info("queue stats", extra={"jobs": stats["jobs"], "instances": stats["instances"]})


def periodic_tasks(settings: Settings, store: Store) -> list[PeriodicTask]:
    """The node's periodic tasks."""
    tasks = [
        PeriodicTask("queue-stats", QUEUE_STATS_SECONDS, lambda: log_queue_stats(store)),
        PeriodicTask(
            "settle-studies", SETTLE_CHECK_SECONDS, lambda: settle_studies(settings, store)
        ),
    ]
    if settings.query_peer is not None:
        check = CompletenessCheck(settings, store)
        tasks.append(
            PeriodicTask(
                "completeness", COMPLETENESS_CHECK_SECONDS, check.run, wake=store.study_signal
            )
        )
    if settings.retention.enabled:
        tasks.append(
            PeriodicTask(
                "retention",
                settings.retention.check_minutes * 60,
                lambda: apply_retention(settings, store),
            )
        )
    return tasks


def _guarded(task: PeriodicTask) -> Callable[[], None]:
    def run() -> None:
        try:
            task.run()
        except Exception:
            log.exception("periodic task failed", extra={"task": task.name})

    return run


class _OneAtATime:
    """A task's runs, from its timer and from its wake signal, one at a time, none lost.

    A call while a run is under way marks one more run, which the running caller
    does when it ends; so a wake-up during a run is never dropped and two runs
    never overlap.
    """

    def __init__(self, task: PeriodicTask) -> None:
        self._run = _guarded(task)
        self._running = threading.Lock()
        self._flag = threading.Lock()
        self._again = False

    def __call__(self) -> None:
        with self._flag:
            self._again = True
        while True:
            if not self._running.acquire(blocking=False):
                return  # the running call sees _again and runs once more
            try:
                with self._flag:
                    pending, self._again = self._again, False
                if pending:
                    self._run()
            finally:
                self._running.release()
            with self._flag:
                if not self._again:
                    return


def _watch(scheduler: BackgroundScheduler, signal: CommitSignal, run: _OneAtATime) -> None:
    """Run ``run`` whenever ``signal`` fires, until the scheduler shuts down."""
    while scheduler.running:
        seen = signal.generation
        if signal.wait(seen, WATCH_SECONDS):
            run()


def start_scheduler(
    settings: Settings, store: Store, tasks: list[PeriodicTask] | None = None
) -> BackgroundScheduler:
    """Start a background scheduler running ``tasks`` (default: :func:`periodic_tasks`).

    Each task also runs once right after start, so a fresh node logs its state.
    Stop it with ``scheduler.shutdown(wait=False)``.
    """
    scheduler = BackgroundScheduler(
        timezone=dt.UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
    )
    watched: list[tuple[CommitSignal, _OneAtATime]] = []
    for task in tasks if tasks is not None else periodic_tasks(settings, store):
        run = _OneAtATime(task)
        if task.wake is not None:
            watched.append((task.wake, run))
        scheduler.add_job(
            run,
            "interval",
            seconds=task.seconds,
            id=task.name,
            name=task.name,
            next_run_time=dt.datetime.now(dt.UTC),
        )
    scheduler.start()
    for signal, run in watched:
        threading.Thread(
            target=_watch, args=(scheduler, signal, run), name="scheduler-wake", daemon=True
        ).start()
    return scheduler
