"""The worker loop: claim a job, keep its lease alive, run its handler, record the outcome.

Each worker thread has its own lease owner id (``host:pid:thread``). A claimed
job's lease is extended in the background while its handler runs, so long jobs
are not taken over; a worker that dies simply stops extending, the lease
expires and another worker reclaims the job. Failures are retried with
exponential backoff and jitter (``retry_delay``) up to the job's
``max_attempts``, then the job is failed; every change is an event row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from triage_node.config import Settings
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store
from triage_node.store.jobs import (
    HOLDER_DEATH_LIMIT,
    HOLDER_DEATHS,
    ClaimedJob,
    LeaseLost,
    claim_next_job,
    expire_dead_leases,
    extend_lease,
    fail_job,
    release_job,
    retry_delay,
)
from triage_node.store.models import InstanceState, JobKind, JobState
from triage_node.telemetry import metrics
from triage_node.work.base import JobContext, JobHandler, JobReleased, PermanentFailure, RetryLater
from triage_node.work.deliver import DeliverHandler
from triage_node.work.report import ReportHandler
from triage_node.work.score import ScoreHandler

log = logging.getLogger(__name__)


def owner_id(thread_name: str | None = None) -> str:
    """This worker's lease owner id: ``host:pid:thread``."""
    name = thread_name or threading.current_thread().name
    return f"{socket.gethostname()}:{os.getpid()}:{name}"


def default_handlers(settings: Settings) -> dict[JobKind, JobHandler]:
    """The job kinds this build runs, by kind: ``score``, ``report`` and ``deliver``.

    Workers only claim kinds they have a handler for.
    """
    handlers: list[JobHandler] = [
        ScoreHandler(settings),
        ReportHandler(settings),
        DeliverHandler(settings),
    ]
    return {h.kind: h for h in handlers}


class LeaseKeeper:
    """Extends a job's lease every third of its length while the handler runs."""

    def __init__(
        self,
        store: Store,
        job: ClaimedJob,
        lease_seconds: float,
        lost: threading.Event,
        clock: Clock = utcnow,
    ) -> None:
        self._store = store
        self._job = job
        self._lease = lease_seconds
        self._lost = lost
        self._clock = clock
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._done.wait(self._lease / 3):
            try:
                extend_lease(self._store, self._job, self._lease, clock=self._clock)
            except LeaseLost:
                log.error("lease lost while running", extra={"job_id": self._job.id})
                self._lost.set()
                return
            except Exception:
                # The database may come back before the lease runs out; keep trying.
                log.exception("could not extend lease", extra={"job_id": self._job.id})


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    libc = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(libc or "libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def _return_freed_memory() -> None:
    """Hand the heap pages a finished job freed back to the system.

    A full-size image's job allocates and frees hundreds of MB; glibc keeps freed
    pages in each thread's arena, so without this the node's resident memory
    stays near its worst job's long after a burst.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Worker:
    """One worker thread: claims jobs of the kinds it has handlers for and runs them.

    ``clock`` is what the worker's leases, backoff and retries are timed by (tests
    move it instead of waiting for a real timer).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        handlers: Mapping[JobKind, JobHandler],
        name: str,
        stopping: threading.Event,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.handlers = dict(handlers)
        self.name = name
        self.stopping = stopping
        self.clock = clock
        self.owner = owner_id(name)
        self.current: ClaimedJob | None = None
        self._current_lock = threading.Lock()
        self.thread = threading.Thread(target=self.run_forever, name=name, daemon=True)

    def start(self) -> None:
        """Start the worker's thread."""
        self.thread.start()

    def run_forever(self) -> None:
        """Claim and run jobs until ``stopping`` is set."""
        log.info("worker started", extra={"owner": self.owner, "kinds": sorted(self.handlers)})
        idle_errors = 0
        signal = self.store.job_signal
        while not self.stopping.is_set():
            seen = signal.generation  # before the claim: a job queued after it wakes the wait
            try:
                ran = self.run_one()
                idle_errors = 0
            except Exception:
                # Store down or similar: back off, never let the thread die.
                idle_errors += 1
                log.exception("worker loop error", extra={"owner": self.owner})
                self.stopping.wait(min(30.0, self.settings.worker.poll_seconds * 2**idle_errors))
                continue
            if not ran:
                signal.wait(seen, self.settings.worker.poll_seconds)
        log.info("worker stopped", extra={"owner": self.owner})

    def run_one(self) -> bool:
        """Claim one due job and run it; False if there was none."""
        w = self.settings.worker
        job = claim_next_job(
            self.store,
            self.owner,
            sorted(self.handlers),
            w.lease_seconds,
            stopping=self.stopping.is_set,
            clock=self.clock,
        )
        if job is None:
            return False
        with self._current_lock:
            self.current = job
        try:
            self._run(job)
        finally:
            with self._current_lock:
                self.current = None
            _return_freed_memory()
        return True

    def _run(self, job: ClaimedJob) -> None:
        handler = self.handlers[job.kind]
        fields = {
            "job_id": job.id,
            "job_kind": job.kind,
            "attempt": job.attempts,
            "owner": self.owner,
        }
        log.info("job started", extra={**fields, "reclaimed": job.reclaimed})
        if job.attempts > job.max_attempts:
            # Reclaimed after its holder died on the last allowed attempt: the job
            # itself may be what kills workers, so stop here.
            self._fail(
                handler,
                job,
                "worker died during the last allowed attempt",
                retry_after=None,
                permanent=True,
            )
            return
        deaths = int(job.payload.get(HOLDER_DEATHS, 0))
        if deaths >= HOLDER_DEATH_LIMIT:
            self._fail(
                handler,
                job,
                f"the node process died {deaths} times while running "
                "this job; it is probably the cause",
                retry_after=None,
                permanent=True,
            )
            return
        ctx = JobContext(self.settings, self.store, job, self.stopping, clock=self.clock)
        started = time.monotonic()
        lease = self.settings.worker.lease_seconds
        try:
            with LeaseKeeper(self.store, job, lease, ctx.lease_lost, self.clock):
                outcome = handler.run(ctx)
        except JobReleased:
            released = release_job(
                self.store,
                job,
                f"{self.owner}: worker stopping",
                on_release=lambda s: handler.on_release(s, job),
                clock=self.clock,
            )
            log.info("job released" if released else "job no longer ours", extra=fields)
        except LeaseLost:
            log.error("lease lost; another worker has the job", extra=fields)
        except PermanentFailure as exc:
            self._fail(handler, job, str(exc), retry_after=None, permanent=True)
        except RetryLater as exc:
            delay = exc.delay if exc.delay is not None else self._backoff(job)
            self._fail(handler, job, str(exc), retry_after=delay, count_attempt=exc.count_attempt)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            # Exception, and what native decoders raise outside it (pyo3's PanicException
            # is a BaseException): the job fails and is retried, the worker lives on.
            log.exception("job raised", extra=fields)
            self._fail(handler, job, f"{type(exc).__name__}: {exc}", retry_after=self._backoff(job))
        else:
            log.info(
                "job done",
                extra={
                    **fields,
                    "outcome": outcome,
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        finally:
            metrics.observe_stage(job.kind, time.monotonic() - started)

    def _backoff(self, job: ClaimedJob) -> float:
        w = self.settings.worker
        return retry_delay(job.attempts, w.retry_base_seconds, w.retry_max_seconds)

    def _fail(
        self,
        handler: JobHandler,
        job: ClaimedJob,
        error: str,
        *,
        retry_after: float | None,
        permanent: bool = False,
        count_attempt: bool = True,
    ) -> None:
        error = f"job {job.id}: {error}" if not error.startswith(f"job {job.id}:") else error
        try:
            state = fail_job(
                self.store,
                job,
                error,
                retry_after=retry_after,
                permanent=permanent,
                count_attempt=count_attempt,
                on_change=lambda s, new: handler.on_failure(s, job, new, error),
                clock=self.clock,
            )
        except LeaseLost:
            log.error("lease lost before the failure was recorded", extra={"job_id": job.id})
            return
        failed = state == JobState.FAILED
        if failed and job.kind == JobKind.SCORE:
            metrics.record_instance(InstanceState.FAILED)
        log.log(
            logging.ERROR if failed else logging.WARNING,
            "job %s",
            "failed" if failed else "will retry",
            extra={
                "job_id": job.id,
                "job_kind": job.kind,
                "error": error,
                "retry_after": None if failed else retry_after,
            },
        )

    def release_current(self, why: str) -> bool:
        """Give back the job in hand from another thread (shutdown timeout); True if released."""
        with self._current_lock:
            job = self.current
        if job is None:
            return False
        handler = self.handlers[job.kind]
        return release_job(
            self.store,
            job,
            f"{self.owner}: {why}",
            on_release=lambda s: handler.on_release(s, job),
            clock=self.clock,
        )


def _process_gone(pid: int) -> bool:
    """True if ``pid`` is this process (a previous run under the same pid) or runs no more."""
    if pid == os.getpid():
        # Nothing is claimed before the pool starts, so a lease under our own pid
        # belongs to an earlier process that had it (containers restart as pid 1).
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, owned by another user
    return False


class WorkerPool:
    """``count`` worker threads sharing one set of handlers (and so one model per process).

    ``clock`` (default: the real one) times their leases, backoff and retries.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        count: int,
        handlers: Mapping[JobKind, JobHandler] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.clock = clock
        self.stopping = threading.Event()
        handlers = handlers if handlers is not None else default_handlers(settings)
        self.handlers = dict(handlers)
        self.workers = [
            Worker(settings, store, handlers, f"worker-{i + 1}", self.stopping, clock)
            for i in range(count)
        ]

    def start(self) -> None:
        """End the leases of this host's dead processes, then start every worker thread."""
        try:
            ended = expire_dead_leases(
                self.store, socket.gethostname(), _process_gone, clock=self.clock
            )
        except Exception:
            log.exception("could not check for jobs held by dead processes")
        else:
            if ended:
                log.warning(
                    "jobs held by processes that no longer run are claimable again",
                    extra={"job_ids": ended},
                )
        for w in self.workers:
            w.start()

    def alive(self) -> bool:
        """True while every worker thread runs (the systemd watchdog's health check)."""
        return all(w.thread.is_alive() for w in self.workers)

    def busy(self) -> int:
        """How many workers hold a job right now."""
        return sum(1 for w in self.workers if w.current is not None)

    def request_stop(self) -> None:
        """Stop claiming jobs; jobs in hand are given back at their next checkpoint."""
        self.stopping.set()
        self.store.job_signal.notify()  # idle workers stop now, not after their poll

    def stop(self, grace_seconds: float) -> None:
        """Stop claiming; wait up to ``grace_seconds`` for jobs in hand, then release them.

        Handlers give their job back at their next checkpoint; a job still held
        when the grace period ends is released from here, so it is never left
        ``running`` (its late result, if any, is refused: the lease is gone).
        """
        self.stopping.set()
        self.store.job_signal.notify()
        deadline = time.monotonic() + grace_seconds
        for w in self.workers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers:
            if w.thread.is_alive():
                try:
                    if w.release_current("shutdown grace period over"):
                        log.warning(
                            "released a job still running at shutdown", extra={"owner": w.owner}
                        )
                except Exception:
                    log.exception("could not release job at shutdown", extra={"owner": w.owner})
