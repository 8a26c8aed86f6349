"""Prometheus metrics of one node process: counters from in-process events, gauges from the store.

Counters and histograms are incremented where things happen (receiver, worker,
deliver job) through the small ``record_*`` functions below, so the stages do
not import prometheus-client themselves. Queue depth, the age of the oldest
waiting job, whether the database takes writes, free disk and the model
description are read when Prometheus scrapes (:class:`StoreCollector`): they
describe the shared database, so every process of a scale-out node reports the
same values for them.

Labels are bounded: AE titles of configured peers, destination names, job
kinds, states and fixed reason codes, and the scanners (Manufacturer,
Manufacturer's Model Name: device facts) the configured peers send from. Never
a UID, never patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    from triage_node.config import Settings

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
COMPLETENESS = Counter(
    "triage_completeness",
    "Report versions queued, by how the study was found complete: archive (the query "
    "peer's C-FIND lists no eligible instance the node does not hold) or timer "
    "(node.settle_seconds of quiet: no query peer, or it could not answer).",
    ["path"],
    registry=REGISTRY,
)
COMPLETENESS_QUERIES = Counter(
    "triage_completeness_queries",
    "C-FIND queries to the query peer, by outcome: complete (the node holds every eligible "
    "instance listed), waiting (the archive lists instances the node does not hold yet, or "
    "does not list one it holds), failed (no answer: the study waits the settle time).",
    ["outcome"],
    registry=REGISTRY,
)

#: Upper bounds of the image-value buckets: those of ``assessment.HISTOGRAM_EDGES`` (the
#: bundle's reference counts in the same bins; a sibling layer, so written out here).
VALUE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
IMAGE_VALUES = Histogram(
    "triage_image_value",
    "Image values (the highest probability of the assessed hips) of the images this "
    "process scored, by the scanner that made them (Manufacturer, Manufacturer's Model Name).",
    ["manufacturer", "model_name"],
    buckets=VALUE_BUCKETS,
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
COMPLETENESS_PATHS = ("archive", "timer")
QUERY_OUTCOMES = ("complete", "waiting", "failed")

# Touch every fixed label value so the series exist (at 0) from the start: a rate() or an
# alert on a series that appears only with its first event misses that event.
for _outcome in INSTANCE_OUTCOMES:
    INSTANCES.labels(_outcome)
for _stage in STAGES:
    STAGE_SECONDS.labels(_stage)
for _path in COMPLETENESS_PATHS:
    COMPLETENESS.labels(_path)
for _query in QUERY_OUTCOMES:
    COMPLETENESS_QUERIES.labels(_query)


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
def record_completeness(path: str) -> None:
    """A report version was queued for a study found complete by ``path`` (archive, timer)."""
    if path not in COMPLETENESS_PATHS:
        raise ValueError(f"unknown completeness path {path!r}")
    COMPLETENESS.labels(path).inc()


@_safe
def record_completeness_query(outcome: str) -> None:
    """One C-FIND to the query peer ended with ``outcome`` (complete, waiting, failed)."""
    if outcome not in QUERY_OUTCOMES:
        raise ValueError(f"unknown completeness query outcome {outcome!r}")
    COMPLETENESS_QUERIES.labels(outcome).inc()


@_safe
def observe_stage(stage: str, seconds: float) -> None:
    """One run of ``stage`` (receive, score, report, deliver) took ``seconds``."""
    if stage in STAGES:
        STAGE_SECONDS.labels(stage).observe(max(0.0, seconds))


@_safe
def observe_image_value(manufacturer: str | None, model_name: str | None, value: float) -> None:
    """An image from this scanner was scored with image value ``value``."""
    IMAGE_VALUES.labels(manufacturer or "", model_name or "").observe(value)


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
