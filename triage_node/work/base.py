"""What a job handler is: the context it runs in and the outcomes it can signal.

A handler runs one claimed job. It commits its results and ``finish_job`` in
one transaction of its own; to fail it raises one of the exceptions below (any
other exception is a transient error, retried with backoff up to the job's
``max_attempts``). The worker loop in :mod:`triage_node.work.worker` turns the
outcome into job, row and event updates.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from triage_node.config import Settings
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store
from triage_node.store.jobs import ClaimedJob
from triage_node.store.models import JobKind, JobState


class PermanentFailure(Exception):
    """The job can never succeed (e.g. pixel data does not decode): fail it now."""


class RetryLater(Exception):
    """The job could not run for a reason outside it; requeue it with backoff.

    ``delay`` None means the worker's exponential backoff. ``count_attempt``
    False means the attempt is not charged to the job, so it waits as long as
    needed (no model installed yet) instead of failing after ``max_attempts``.
    """

    def __init__(
        self, message: str, *, delay: float | None = None, count_attempt: bool = True
    ) -> None:
        super().__init__(message)
        self.delay = delay
        self.count_attempt = count_attempt


class JobReleased(Exception):
    """The worker is stopping: the handler gave the job back unfinished."""


@dataclass
class JobContext:
    """Everything a handler needs for one job: settings, store, the lease, stop requests, and
    the clock its timestamps and retries are taken from (the worker's)."""

    settings: Settings
    store: Store
    job: ClaimedJob
    stopping: threading.Event
    lease_lost: threading.Event = field(default_factory=threading.Event)
    clock: Clock = utcnow

    def checkpoint(self) -> None:
        """Give the job back (raise :class:`JobReleased`) if the worker is stopping.

        Handlers call this between steps, before anything slow: a job is finished
        only if it was nearly done when the stop came.
        """
        if self.stopping.is_set():
            raise JobReleased(f"job {self.job.id}: worker stopping")


class JobHandler(Protocol):
    """One job kind: how to run it and how its rows change when it fails or is released."""

    kind: JobKind

    def run(self, ctx: JobContext) -> str | None:
        """Do the job and commit its results with ``finish_job``; return a short outcome."""
        ...

    def on_failure(
        self, session: Session, job: ClaimedJob, new_state: JobState, error: str
    ) -> None:
        """Update the job's rows (in the failing transaction); new_state is queued or failed."""
        ...

    def on_release(self, session: Session, job: ClaimedJob) -> None:
        """Update the job's rows when the job is given back unfinished."""
        ...
