"""The scrape-time gauges of the node: queue, oldest waiting job, store, disk, model, drift.

They describe the shared database, so every process of a scale-out node reports
the same values for them. The counters and histograms are in
:mod:`triage_node.telemetry.metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from triage_node.config import Settings
from triage_node.score.loader import describe_model
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store
from triage_node.store.queries import (
    WRITE_PROBE_SECONDS,
    free_disk_bytes,
    read_queue_counts,
    store_writable,
)
from triage_node.work.drift import DriftReport, configured_reference, drift_report

log = logging.getLogger("triage_node.telemetry.metrics")


class StoreCollector(Collector):
    """Gauges read at scrape time: queue, oldest waiting job, store up and writable, disk, model.

    The queries are grouped counts over indexed columns; a database that does not
    answer makes ``triage_store_up`` 0 instead of failing the scrape.
    """

    MODEL_REFRESH_SECONDS = 300.0

    def __init__(
        self, settings: Settings, store: Store, clock: Clock = utcnow, *, scores: bool = True
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        # A receive-only process never loads the model: it describes the bundle without
        # importing torch (workers report a broken model dependency in their jobs).
        self.scores = scores
        self._model: dict[str, Any] | None = None
        self._model_at = 0.0
        self._lock = threading.Lock()
        self._reference: Any = None
        self._reference_at = 0.0
        self._drift: DriftReport | None = None
        self._drift_at = 0.0

    def describe(self) -> Iterator[Any]:
        """Nothing up front: the collector is only called at scrape time."""
        return iter(())

    def model_description(self) -> dict[str, Any]:
        """``describe_model`` (it verifies the bundle's hashes), cached for a few minutes."""
        with self._lock:
            now = time.monotonic()
            if self._model is None or now - self._model_at > self.MODEL_REFRESH_SECONDS:
                try:
                    self._model = describe_model(self.settings, check_implementation=self.scores)
                except Exception as exc:  # a broken bundle must not break the scrape
                    self._model = {
                        "bundle": self.settings.model.bundle or "demo",
                        "available": False,
                        "error": type(exc).__name__,
                    }
                self._model_at = now
            return self._model

    def drift(self) -> DriftReport | None:
        """The drift report, counted again at most every ``drift.refresh_seconds`` (the
        bundle's reference at most every few minutes); None when the store cannot answer."""
        with self._lock:
            now = time.monotonic()
            if self._reference is None or now - self._reference_at > self.MODEL_REFRESH_SECONDS:
                self._reference = configured_reference(self.settings)
                self._reference_at = now
            if self._drift is None or now - self._drift_at >= self.settings.drift.refresh_seconds:
                try:
                    self._drift = drift_report(
                        self.settings, self.store, self.clock(), self._reference
                    )
                except Exception as exc:  # the database: triage_store_up says so
                    log.warning("metrics: drift query failed: %s", type(exc).__name__)
                    return None
                self._drift_at = now
            return self._drift

    def collect(self) -> Iterator[Any]:
        """Yield the gauge families (called by prometheus-client on every scrape)."""
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
            counts = read_queue_counts(self.store)
        except Exception as exc:
            log.warning("metrics: database query failed: %s", type(exc).__name__)
            up.add_metric([], 0)
        else:
            up.add_metric([], 1)
            for (kind, state), n in sorted(counts.jobs.items()):
                depth.add_metric([kind, state], n)
            ages = counts.waiting_ages(self.clock())
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
        free = free_disk_bytes(self.settings.data_dir)
        if free is not None:
            disk.add_metric([], free)
            yield disk
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
        if self.settings.drift.enabled:
            yield from self.collect_drift()

    def collect_drift(self) -> Iterator[Any]:
        """The drift watch's gauges (see README "Drift watch")."""
        window = f"the last {self.settings.drift.window_days:g} days (drift.window_days)"
        available = GaugeMetricFamily(
            "triage_drift_reference_available",
            "1 if the configured bundle carries a validation reference (reference.json) the "
            "scanners are judged against; 0: no reference, nothing is judged.",
        )
        report = self.drift()
        if report is None:
            return
        available.add_metric([], 1 if report.reference is not None else 0)
        yield available
        scanner = ["manufacturer", "model_name"]
        rate_labels = [*scanner, "rate", "reason"]
        images = GaugeMetricFamily(
            "triage_drift_images",
            f"Images of each scanner the model judged in {window}, by outcome: assessable, "
            "not_assessable, positive (assessable and DXA recommended).",
            labels=[*scanner, "outcome"],
        )
        observed = GaugeMetricFamily(
            "triage_drift_rate",
            f"Each scanner's rate in {window}: positive (of assessable images), "
            "not_assessable (of judged images), hip_not_assessable for a reason (of hips).",
            labels=rate_labels,
        )
        reference = GaugeMetricFamily(
            "triage_drift_reference_rate",
            "The same rate in the bundle's validation reference.",
            labels=rate_labels,
        )
        low = GaugeMetricFamily(
            "triage_drift_expected_low",
            "Low end of the range the scanner's rate is expected in if it behaves like the "
            "reference (binomial prediction interval at drift.level); judged rates only.",
            labels=rate_labels,
        )
        high = GaugeMetricFamily(
            "triage_drift_expected_high",
            "High end of that range; judged rates only.",
            labels=rate_labels,
        )
        out = GaugeMetricFamily(
            "triage_drift_out_of_range",
            "1 if the scanner's rate is outside its expected range, 0 if inside; only for "
            "rates judged (drift.min_images reached, the bundle has a reference).",
            labels=rate_labels,
        )
        for drift in report.scanners:
            s = drift.summary
            names = [s.manufacturer or "", s.model_name or ""]
            images.add_metric([*names, "assessable"], s.assessable)
            images.add_metric([*names, "not_assessable"], s.not_assessable)
            images.add_metric([*names, "positive"], s.positives)
            for check in drift.checks:
                labels = [*names, check.rate, check.reason]
                if check.observed is not None:
                    observed.add_metric(labels, check.observed)
                if check.reference is not None:
                    reference.add_metric(labels, check.reference)
                if check.judged:
                    assert check.expected_low is not None and check.expected_high is not None
                    low.add_metric(labels, check.expected_low)
                    high.add_metric(labels, check.expected_high)
                    out.add_metric(labels, 1 if check.out_of_range else 0)
        yield from (images, observed, reference, low, high, out)
