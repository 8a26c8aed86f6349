"""The scheduler: periodic tasks run in the background, a failing task does not stop it."""

from __future__ import annotations

import threading
from pathlib import Path

from triage_node.config import Settings
from triage_node.node.scheduler import PeriodicTask, _OneAtATime, start_scheduler
from triage_node.store import open_store
from triage_node.store.db import CommitSignal
from triage_node.store.jobs import enqueue_job
from triage_node.store.queries import queue_stats


def test_queue_stats_and_periodic_tasks(tmp_path: Path) -> None:
    settings = Settings.model_validate({"node": {"data_dir": str(tmp_path)}})
    store = open_store(settings)
    with store.write() as session:
        for _ in range(3):
            enqueue_job(session, "score")
        enqueue_job(session, "report")
    assert queue_stats(store) == {"jobs": {"score.queued": 3, "report.queued": 1}, "instances": {}}
    runs: list[int] = []
    done = threading.Event()

    def count() -> None:
        runs.append(1)
        if len(runs) >= 3:
            done.set()

    def broken() -> None:
        raise RuntimeError("task bug")

    scheduler = start_scheduler(
        settings, store, [PeriodicTask("count", 0.1, count), PeriodicTask("broken", 0.1, broken)]
    )
    try:
        assert done.wait(10), runs  # ran at start and kept running beside a failing task
    finally:
        scheduler.shutdown(wait=False)
    store.dispose()


def test_a_task_with_a_wake_signal_runs_when_it_fires_not_only_on_its_timer(
    tmp_path: Path,
) -> None:
    """The completeness check's way to run: its timer is an hour, the signal runs it."""
    settings = Settings.model_validate({"node": {"data_dir": str(tmp_path)}})
    store = open_store(settings)
    signal = CommitSignal()
    runs: list[int] = []
    ran = threading.Event()

    def check() -> None:
        runs.append(1)
        ran.set()

    scheduler = start_scheduler(settings, store, [PeriodicTask("check", 3600, check, wake=signal)])
    try:
        assert ran.wait(30)  # the run right after start
        for expected in (2, 3):
            ran.clear()
            signal.notify()
            assert ran.wait(30), f"run {expected} after the signal"
            assert len(runs) == expected
    finally:
        scheduler.shutdown(wait=False)
        store.dispose()


def test_runs_of_one_task_never_overlap_and_a_call_during_a_run_is_not_lost() -> None:
    """A wake-up while the task runs gives exactly one more run after it, never two at once."""
    running = threading.Lock()
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def task() -> None:
        assert running.acquire(blocking=False), "two runs at once"
        try:
            runs.append(1)
            if len(runs) == 1:
                started.set()
                assert release.wait(30)
        finally:
            running.release()

    serial = _OneAtATime(PeriodicTask("t", 1, task))
    first = threading.Thread(target=serial)
    first.start()
    assert started.wait(30)
    for _ in range(3):
        serial()  # during the first run: returns at once, marks one more run
    release.set()
    first.join(30)
    assert runs == [1, 1]
