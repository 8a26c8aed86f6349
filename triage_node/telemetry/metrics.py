"""Prometheus metrics of one node process: counters from in-process events, gauges from the store.

Counters and histograms are incremented where things happen (receiver, worker,
deliver job) through the small ``record_*`` functions below, so the stages do
not import prometheus-client themselves. Queue depth, the age of the oldest
waiting job, whether the database takes writes, free disk and the model
description are read when Prometheus scrapes (:class:`StoreCollector`): they
describe the shared database, so every process of a scale-out node reports the
same values for them.

Labels are bounded: AE titles of configured peers, destination names, job
kinds, states and fixed reason codes. Never a UID, never patient data.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

if TYPE_CHECKING:
    from triage_node.config import Settings
    from triage_node.store.db import Store

log = logging.getLogger(__name__)

#: The registry every metric of the node lives in (not the library's global one, so
#: importing the node in another program adds nothing to that program's metrics).
REGISTRY = CollectorRegistry(auto_describe=True)

# Seconds; receive is milliseconds-to-seconds, scoring seconds, end to end minutes.
_STAGE_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
_E2E_BUCKETS = (
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)

ASSOCIATIONS = Counter(
    "triage_associations",
    "Associations, by result (accepted, rejected) and reason code.",
    ["result", "reason"],
    registry=REGISTRY,
)
INSTANCES = Counter(
    "triage_instances",
    "Instances by outcome: received (stored, eligible or not), skipped (stored, not "
    "eligible), duplicate, refused, scored, not_assessable, failed.",
    ["outcome"],
    registry=REGISTRY,
)
RESULTS = Counter(
    "triage_results",
    "Result objects (SR, heatmap) by destination and outcome: delivered (stored at the "
    "destination), retried (left for another attempt), failed (attempts exhausted).",
    ["destination", "outcome"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "triage_stage_seconds",
    "Time spent in a stage: receive (dataset on disk to C-STORE answer), score, report, "
    "deliver (one job run, successful or not).",
    ["stage"],
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    "triage_end_to_end_seconds",
    "From the first instance of a study arriving to its report being delivered to a "
    "destination (includes the settle time).",
    ["destination"],
    buckets=_E2E_BUCKETS,
    registry=REGISTRY,
)

INSTANCE_OUTCOMES = (
    "received",
    "skipped",
    "duplicate",
    "refused",
    "scored",
    "not_assessable",
    "failed",
)
STAGES = ("receive", "score", "report", "deliver")

# Touch every fixed label value so the series exist (at 0) from the start: a rate() or an
# alert on a series that appears only with its first event misses that event.
for _outcome in INSTANCE_OUTCOMES:
    INSTANCES.labels(_outcome)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)


def _safe(record: Callable[..., None]) -> Callable[..., None]:
    """Metrics must never break the stage that records them."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            log.exception("recording a metric failed")

    wrapper.__doc__ = record.__doc__
    wrapper.__name__ = record.__name__
    return wrapper


@_safe
def record_association(accepted: bool, reason: str = "") -> None:
    """One association: accepted, or rejected with a reason code (see AssociationDecision)."""
    ASSOCIATIONS.labels(
        "accepted" if accepted else "rejected", reason if not accepted else ""
    ).inc()


@_safe
def record_instance(outcome: str, n: int = 1) -> None:
    """``n`` instances reached ``outcome`` (one of :data:`INSTANCE_OUTCOMES`)."""
    if outcome not in INSTANCE_OUTCOMES:
        raise ValueError(f"unknown instance outcome {outcome!r}")
    INSTANCES.labels(outcome).inc(n)


@_safe
def record_results(destination: str, outcome: str, n: int = 1) -> None:
    """``n`` result objects for ``destination`` were delivered, retried or failed."""
    if outcome not in ("delivered", "retried", "failed"):
        raise ValueError(f"unknown result outcome {outcome!r}")
    if n:
        RESULTS.labels(destination, outcome).inc(n)


@_safe
def observe_stage(stage: str, seconds: float) -> None:
    """One run of ``stage`` (receive, score, report, deliver) took ``seconds``."""
    if stage in STAGES:
        STAGE_SECONDS.labels(stage).observe(max(0.0, seconds))


@_safe
def observe_end_to_end(destination: str, seconds: float) -> None:
    """A study's report reached ``destination`` ``seconds`` after its first instance."""
    END_TO_END_SECONDS.labels(destination).observe(max(0.0, seconds))


def prime_destinations(settings: Settings) -> None:
    """Create the per-destination series at 0, so alerts see them before the first event."""
    for d in settings.destinations:
        for outcome in ("delivered", "retried", "failed"):
            RESULTS.labels(d.name, outcome)
        END_TO_END_SECONDS.labels(d.name)


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


class StoreCollector(Collector):
    """Gauges read at scrape time: queue, oldest waiting job, store up and writable, disk, model.

    The queries are grouped counts over indexed columns; a database that does not
    answer makes ``triage_store_up`` 0 instead of failing the scrape.
    """

    MODEL_REFRESH_SECONDS = 300.0

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._model: dict[str, Any] | None = None
        self._model_at = 0.0
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Any]:
        """Nothing up front: the collector is only called at scrape time."""
        return iter(())

    def model_description(self) -> dict[str, Any]:
        """``describe_model`` (it verifies the bundle's hashes), cached for a few minutes."""
        from triage_node.assessment import describe_model

        with self._lock:
            now = time.monotonic()
            if self._model is None or now - self._model_at > self.MODEL_REFRESH_SECONDS:
                try:
                    self._model = describe_model(self.settings)
                except Exception as exc:  # a broken bundle must not break the scrape
                    self._model = {
                        "bundle": self.settings.model.bundle or "demo",
                        "available": False,
                        "error": type(exc).__name__,
                    }
                self._model_at = now
            return self._model

    def collect(self) -> Iterator[Any]:
        """Yield the gauge families (called by prometheus-client on every scrape)."""
        from triage_node.node.scheduler import waiting_jobs

        up = GaugeMetricFamily("triage_store_up", "1 if the database answered this scrape.")
        depth = GaugeMetricFamily(
            "triage_queue_jobs", "Jobs in the database by kind and state.", labels=["kind", "state"]
        )
        oldest = GaugeMetricFamily(
            "triage_queue_oldest_waiting_seconds",
            "Age of the oldest queued or running job, by kind (0: none waiting).",
            labels=["kind"],
        )
        try:
            counts, ages = waiting_jobs(self.store)
        except Exception as exc:
            log.warning("metrics: database query failed: %s", type(exc).__name__)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for (kind, state), n in sorted(counts.items()):
                depth.add_metric([kind, state], n)
            for kind in sorted(ages):
                oldest.add_metric([kind], ages[kind])
        yield up
        yield depth
        yield oldest

        writable = GaugeMetricFamily(
            "triage_store_writable",
            f"1 if a write transaction could start within {WRITE_PROBE_SECONDS:g} s at this "
            "scrape; 0 while another process holds the database's write lock (C-STOREs "
            "wait, then are refused with 0xA700) or the database is read-only.",
        )
        try:
            writable.add_metric([], 1 if store_writable(self.store) else 0)
        except Exception as exc:
            log.warning("metrics: database write probe failed: %s", type(exc).__name__)
            writable.add_metric([], 0)
        yield writable

        disk = GaugeMetricFamily(
            "triage_free_disk_bytes", "Free bytes on the file system of the spool."
        )
        watermark = GaugeMetricFamily(
            "triage_free_disk_watermark_bytes",
            "receive.min_free_disk_mb in bytes: below it, C-STORE is answered 0xA700.",
        )
        try:
            disk.add_metric([], shutil.disk_usage(self.settings.data_dir).free)
            yield disk
        except OSError:
            pass
        watermark.add_metric([], self.settings.receive.min_free_disk_mb * 1024 * 1024)
        yield watermark

        m = self.model_description()
        info = InfoMetricFamily(
            "triage_model",
            "The configured model bundle.",
            value={
                "bundle": str(m.get("bundle", "")),
                "name": str(m.get("name", "")),
                "version": str(m.get("version", "")),
                "synthetic": str(bool(m.get("synthetic", False))).lower(),
                "available": str(bool(m.get("available"))).lower(),
            },
        )
        yield info
