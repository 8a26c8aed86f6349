"""``serve``, ``receive`` and ``work``: run the node's stages in one process until a signal.

``serve`` runs the receiver, ``node.workers`` worker threads and the scheduler;
``receive`` only the receiver; ``work`` only workers and scheduler (several
``work`` processes may share one database). The stages never call each other:
they meet in the store. On SIGTERM or SIGINT the receiver stops accepting,
workers finish a job that is nearly done or give it back, and the process
exits 0 within :data:`SHUTDOWN_GRACE_SECONDS` plus a few seconds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

# Every stage the node may start is imported here, at module level, so all of them are
# loaded by the main thread before any thread starts: two threads importing pydicom (or
# torch) for the first time at once can see it half-initialised.
from triage_node.assessment import ModelUnavailable
from triage_node.config import Settings
from triage_node.node.collector import StoreCollector
from triage_node.node.health import Phase, node_identity, readiness
from triage_node.node.http import OpsServer
from triage_node.node.scheduler import start_scheduler
from triage_node.node.systemd import Watchdog, sd_notify
from triage_node.receive import ReceiverHandle, pynetdicom_patches, start_receiver
from triage_node.store.db import Store
from triage_node.store.models import JobKind
from triage_node.telemetry.metrics import REGISTRY, prime_destinations
from triage_node.web.app import Console
from triage_node.web.server import ConsoleServer
from triage_node.work.score import ScoreHandler
from triage_node.work.worker import WorkerPool

log = logging.getLogger("triage_node.serve")

# How long workers get to finish or give back their jobs on SIGTERM. The unit's
# TimeoutStopSec must be longer.
SHUTDOWN_GRACE_SECONDS = 15.0


class Node:
    """The stages of one process: receiver, worker pool, scheduler, systemd notifications."""

    def __init__(self, settings: Settings, store: Store, roles: set[str]) -> None:
        self.settings = settings
        self.store = store
        self.roles = roles
        self.stop_requested = threading.Event()
        self.receiver: ReceiverHandle | None = None
        self.pool: WorkerPool | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.watchdog: Watchdog | None = None
        self.ops_server: OpsServer | None = None
        self.console: Console | None = None
        self.console_server: ConsoleServer | None = None
        self._collector: StoreCollector | None = None
        self.phase = Phase.STARTING
        self.identity = node_identity(settings)
        self.id: str = self.identity["id"]

    def start(self) -> None:
        """Start every stage of this process's roles, then tell systemd we are ready.

        Order: the ops endpoint first (it answers ``starting`` meanwhile), then the
        model (a ``work`` process loads it here, not at its first job or probe),
        the workers and scheduler, the receiver, and last ``/readyz`` and the
        "node ready" line. Without a model the node still starts: it receives,
        score jobs wait, and the log says it is not ready and why.

        Raises :class:`PynetdicomChanged` before anything starts when the installed
        pynetdicom no longer has what the receiver's patches rely on.
        """
        if "receive" in self.roles:
            pynetdicom_patches.self_check()
        status = []
        if self.settings.web.enabled:
            self.console = Console(self.settings, self.store, self.readiness, self.identity)
        elif self.settings.web.off_reason:
            log.warning("web console off: %s", self.settings.web.off_reason)
        if self.settings.metrics.enabled:
            self._start_ops_endpoint()
        console_url = self._start_console()
        if "work" in self.roles:
            self.pool = WorkerPool(self.settings, self.store, self.settings.node.workers)
            score = self.pool.handlers.get(JobKind.SCORE)
            if isinstance(score, ScoreHandler):
                score.models.load_at_start()  # in the main thread, before any worker runs
            self.pool.start()
            self.scheduler = start_scheduler(self.settings, self.store)
            status.append(f"{self.settings.node.workers} worker(s)")
        if "receive" in self.roles:
            self.receiver = start_receiver(self.settings, self.store)
            n = self.settings.node
            status.insert(0, f"{n.ae_title} listening on {n.host}:{n.port}")
        self.watchdog = Watchdog(self.healthy)
        self.watchdog.start()
        if self.settings.metrics.enabled:
            # The scrape-time gauges describe the model: registered once it is loaded.
            self._collector = StoreCollector(self.settings, self.store, scores="work" in self.roles)
            REGISTRY.register(self._collector)
            if self.ops_server is not None:
                status.append(f"metrics on {self.ops_server.host}:{self.ops_server.port}")
            else:
                status.append("NO metrics endpoint (see the error above)")
        if console_url:
            status.append(f"console on {console_url}")
        self.phase = Phase.RUNNING
        ready = self.readiness()
        failing = "; ".join(
            f"{name}: {check['detail']}"
            for name, check in ready["checks"].items()
            if not check["ok"]
        )
        if failing:
            status.append(f"NOT READY ({failing})")
        sd_notify("READY=1", "STATUS=" + ", ".join(status))
        fields = {"roles": sorted(self.roles), "status": ", ".join(status), "node_id": self.id}
        if ready["ready"]:
            log.info("node ready", extra=fields)
        else:
            log.warning("node started, NOT READY: %s", failing, extra=fields)

    def _start_ops_endpoint(self) -> None:
        """Serve /metrics, /healthz, /readyz; a port in use costs the endpoint, not the node."""
        m = self.settings.metrics
        prime_destinations(self.settings)
        try:
            on_metrics = self.console if self.settings.web.port is None else None
            self.ops_server = OpsServer(
                m.host, m.port, REGISTRY, self.liveness, self.readiness, on_metrics
            ).start()
        except OSError as exc:
            # Receiving images matters more than being scraped: log loudly and go on.
            log.error(
                "metrics endpoint not started (the node runs without it): %s; "
                "each node process on a host needs its own metrics.port",
                self.settings.listen_failure("metrics", exc),
            )
            return
        log.info("metrics endpoint listening", extra={"host": m.host, "port": self.ops_server.port})

    def _start_console(self) -> str | None:
        """The console's URL: on the metrics endpoint, or on its own port (None: not served)."""
        web = self.settings.web
        if self.console is None:
            return None
        if web.port is None:
            if self.ops_server is None:
                log.warning(
                    "web console not served: it is served on the metrics endpoint, which is "
                    "off or not listening (set web.port to give it its own)"
                )
                return None
            return f"http://{self.ops_server.host}:{self.ops_server.port}/"
        try:
            self.console_server = ConsoleServer(web, self.console).start()
        except OSError as exc:
            log.error(
                "web console not started (the node runs without it): %s",
                self.settings.listen_failure("web", exc),
            )
            return None
        server = self.console_server
        log.info(
            "web console listening",
            extra={"host": server.host, "port": server.port, "scheme": server.scheme},
        )
        return f"{server.scheme}://{server.host}:{server.port}/"

    def liveness(self) -> dict[str, Any]:
        """``/healthz``: the process's threads run (no database check: that is readiness)."""
        workers = self.pool is None or self.pool.alive()
        scheduler = self.scheduler is None or bool(self.scheduler.running)
        return {
            "alive": (
                self.phase == Phase.RUNNING
                and workers
                and scheduler
                and not self.stop_requested.is_set()
            ),
            "phase": self.phase,
            "roles": sorted(self.roles),
            "workers_alive": workers,
            "scheduler_running": scheduler,
            "node": self.identity,
        }

    def model_check(self) -> str:
        """Name this process's loaded model, at once; raises ModelUnavailable without one.

        Never loads the model itself (that is done at start, and retried in the
        background): a probe with a short timeout always gets its answer.
        """
        handler = self.pool.handlers.get(JobKind.SCORE) if self.pool is not None else None
        if handler is None and self.phase == Phase.STARTING:
            raise ModelUnavailable("the node is starting")
        if not isinstance(handler, ScoreHandler):
            return "no score handler"
        return handler.models.check()

    def readiness(self) -> dict[str, Any]:
        """``/readyz``: database, spool, free disk and (in a worker process) the model.

        Not ready while starting or stopping, whatever the checks say.
        """
        doc = readiness(
            self.settings, self.store, self.model_check if "work" in self.roles else None
        )
        if self.phase != Phase.RUNNING:
            doc["ready"] = False
        doc["phase"] = self.phase
        doc["roles"] = sorted(self.roles)
        doc["node"] = self.identity
        return doc

    def healthy(self) -> bool:
        """True while the worker threads (if any) are alive and the store answers."""
        if self.pool is not None and not self.pool.alive():
            return False
        self.store.ping()
        return True

    def wait(self) -> None:
        """Block until :meth:`request_stop` (a signal) is called."""
        while not self.stop_requested.wait(1.0):
            pass

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        """Signal handler: ask the main loop to stop (idempotent)."""
        if signum is not None and not self.stop_requested.is_set():
            log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        self.stop_requested.set()
        if self.pool is not None:
            # At once, not when the main loop wakes: no job is claimed after the signal.
            self.pool.request_stop()

    def stop(self) -> None:
        """Stop accepting, let workers finish or release their jobs, stop timers."""
        self.phase = Phase.STOPPING
        sd_notify("STOPPING=1", "STATUS=stopping")
        started = time.monotonic()
        if self.pool is not None:
            # First, so no worker claims another job while the receiver winds down.
            self.pool.request_stop()
        if self.receiver is not None:
            try:
                self.receiver.shutdown()
            except Exception:
                log.exception("receiver shutdown failed")
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.pool is not None:
            self.pool.stop(SHUTDOWN_GRACE_SECONDS)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.ops_server is not None:
            self.ops_server.stop()
        if self.console_server is not None:
            self.console_server.stop()
        if self._collector is not None:
            REGISTRY.unregister(self._collector)
        self.store.dispose()
        log.info("node stopped", extra={"seconds": round(time.monotonic() - started, 3)})
