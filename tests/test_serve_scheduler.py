"""The scheduler: periodic tasks run in the background, a failing task does not stop it."""

from __future__ import annotations

import threading
from pathlib import Path

from triage_node.config import Settings
from triage_node.node.scheduler import PeriodicTask, start_scheduler
from triage_node.store import open_store
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
