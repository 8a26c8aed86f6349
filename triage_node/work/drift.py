"""The drift watch: is each scanner's stream still like the bundle's validation reference?

A model checked on one set of images can behave differently on a scanner whose
processing differs (another vendor, a software update, a new detector). Per
scanner (Manufacturer, Manufacturer's Model Name) over the last
``drift.window_days``, the node compares with the bundle's ``reference.json``
(:mod:`triage_node.score.reference`):

* the positive rate (positives among the assessable images);
* the not-assessable rate (images with no assessable hip among those judged);
* per not-assessable reason, the rate among hips (reasons of the reference and
  of the stream).

Each rate has an expected range: where a scanner that behaves like the
reference would put it, given how many images (or hips) it sent
(:meth:`~triage_node.score.reference.ValidationReference.expected_range`, a
binomial prediction interval at ``drift.level``). The reference itself was
counted on a finite set, so the range is taken from the low end of the
reference rate's confidence interval (Clopper-Pearson, same level) to the high
end: a reason the reference never saw does not make its first occurrence an
alarm. A scanner is judged once the model has judged ``drift.min_images`` of its
images (the positive rate: that many assessable ones); the positive rate only
when the node decides at the reference's operating point. A bundle without a
reference judges nothing ("no reference").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from scipy import stats

from triage_node.assessment import ModelUnavailable
from triage_node.config import DriftSection, Settings
from triage_node.score.bundle import open_configured
from triage_node.score.reference import ValidationReference, read_reference
from triage_node.store.db import Store
from triage_node.store.queries import ScannerSummary, scanner_summaries

#: The rates compared (``rate`` in :class:`RateCheck`, the metrics' ``rate`` label).
POSITIVE = "positive"
NOT_ASSESSABLE = "not_assessable"
HIP_NOT_ASSESSABLE = "hip_not_assessable"

#: Said of a bundle without ``reference.json``.
NO_REFERENCE = "no reference"

#: Thresholds closer than this are the same operating point.
_SAME_THRESHOLD = 1e-9


def reference_bounds(count: int, total: int, level: float) -> tuple[float, float]:
    """Clopper-Pearson interval of the reference rate ``count / total`` at ``level``."""
    if total <= 0:
        return (0.0, 1.0)
    ci = stats.binomtest(count, total).proportion_ci(confidence_level=level, method="exact")
    return (float(ci.low), float(ci.high))


@dataclass(frozen=True)
class RateCheck:
    """One rate of one scanner against the reference.

    ``count`` of ``n`` (images or hips) observed; ``reference`` the reference's
    rate; ``expected_low``/``expected_high`` the expected range for ``n`` (None
    when not judged); ``judged`` False says why in ``note``.
    """

    rate: str
    reason: str
    count: int
    n: int
    reference: float | None
    expected_low: float | None
    expected_high: float | None
    judged: bool
    note: str = ""

    @property
    def observed(self) -> float | None:
        return self.count / self.n if self.n else None

    @property
    def out_of_range(self) -> bool:
        """Judged, and the observed rate is outside the expected range."""
        if not self.judged or self.observed is None:
            return False
        assert self.expected_low is not None and self.expected_high is not None
        return not self.expected_low <= self.observed <= self.expected_high

    @property
    def name(self) -> str:
        """``positive``, ``not_assessable`` or ``hip_not_assessable: <reason>``."""
        return f"{self.rate}: {self.reason}" if self.reason else self.rate

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "reason": self.reason,
            "count": self.count,
            "n": self.n,
            "observed": self.observed,
            "reference": self.reference,
            "expected_low": self.expected_low,
            "expected_high": self.expected_high,
            "judged": self.judged,
            "out_of_range": self.out_of_range,
            "note": self.note,
        }


@dataclass(frozen=True)
class ScannerDrift:
    """One scanner's window and its rate checks."""

    summary: ScannerSummary
    checks: tuple[RateCheck, ...]

    @property
    def label(self) -> str:
        """``Manufacturer / Model`` as the images name it (``?`` for a missing one)."""
        return f"{self.summary.manufacturer or '?'} / {self.summary.model_name or '?'}"

    @property
    def out_of_range(self) -> tuple[RateCheck, ...]:
        return tuple(c for c in self.checks if c.out_of_range)

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {
            "manufacturer": s.manufacturer,
            "model_name": s.model_name,
            "received": s.received,
            "judged": s.judged,
            "assessable": s.assessable,
            "not_assessable": s.not_assessable,
            "positives": s.positives,
            "hips": s.hips,
            "hip_reasons": dict(s.hip_reasons),
            "histogram": list(s.histogram),
            "checks": [c.to_json() for c in self.checks],
            "out_of_range": [c.name for c in self.out_of_range],
        }


@dataclass(frozen=True)
class DriftReport:
    """Every scanner of the window, judged against the reference (or why not)."""

    since: dt.datetime
    settings: DriftSection
    reference: ValidationReference | None
    # Why nothing is judged: "no reference", or the bundle's error; "" when judged.
    unjudged: str
    scanners: tuple[ScannerDrift, ...]

    @property
    def out_of_range(self) -> tuple[ScannerDrift, ...]:
        return tuple(s for s in self.scanners if s.out_of_range)

    def to_json(self) -> dict[str, Any]:
        return {
            "window_days": self.settings.window_days,
            "since": self.since.isoformat(),
            "min_images": self.settings.min_images,
            "level": self.settings.level,
            "reference": None
            if self.reference is None
            else {
                "source": self.reference.source,
                "images": self.reference.images,
                "threshold": self.reference.threshold,
            },
            "unjudged": self.unjudged,
            "scanners": [s.to_json() for s in self.scanners],
            "out_of_range": [
                {"scanner": s.label, "rates": [c.name for c in s.out_of_range]}
                for s in self.out_of_range
            ],
        }


def _check(
    rate: str,
    reason: str,
    count: int,
    n: int,
    ref_count: int,
    ref_total: int,
    enough: bool,
    level: float,
    note: str = "",
) -> RateCheck:
    reference = ref_count / ref_total if ref_total else None
    if reference is None or not enough or note:
        if not note:
            note = "reference has none" if reference is None else "too few images"
        return RateCheck(rate, reason, count, n, reference, None, None, False, note)
    low_rate, high_rate = reference_bounds(ref_count, ref_total, level)
    low = ValidationReference.expected_range(low_rate, n, level)[0]
    high = ValidationReference.expected_range(high_rate, n, level)[1]
    return RateCheck(rate, reason, count, n, reference, low, high, True)


def judge_scanner(
    summary: ScannerSummary,
    reference: ValidationReference,
    drift: DriftSection,
    threshold: float | None = None,
) -> ScannerDrift:
    """Compare one scanner's window with ``reference``.

    ``threshold``: the operating point the node decides at; the positive rate is
    not judged when it differs from the reference's.
    """
    enough = summary.judged >= drift.min_images
    other_point = threshold is not None and abs(threshold - reference.threshold) > _SAME_THRESHOLD
    checks = [
        _check(
            POSITIVE,
            "",
            summary.positives,
            summary.assessable,
            reference.positives,
            reference.scored,
            summary.assessable >= drift.min_images,
            drift.level,
            f"operating point {threshold:g} is not the reference's {reference.threshold:g}"
            if other_point and threshold is not None
            else "",
        ),
        _check(
            NOT_ASSESSABLE,
            "",
            summary.not_assessable,
            summary.judged,
            reference.images - reference.scored,
            reference.images,
            enough,
            drift.level,
        ),
    ]
    for reason in sorted(set(reference.side_reasons) | set(summary.hip_reasons)):
        checks.append(
            _check(
                HIP_NOT_ASSESSABLE,
                reason,
                summary.hip_reasons.get(reason, 0),
                summary.hips,
                reference.side_reasons.get(reason, 0),
                reference.sides,
                enough,
                drift.level,
            )
        )
    return ScannerDrift(summary, tuple(checks))


def configured_reference(settings: Settings) -> tuple[ValidationReference | None, str, float]:
    """The configured bundle's reference, why there is none ("" when there is), and the
    operating point the node decides at."""
    try:
        bundle = open_configured(settings)
        reference = read_reference(bundle)
    except ModelUnavailable as exc:
        return None, f"model unavailable: {exc}", settings.model.threshold or 0.0
    threshold = settings.model.threshold
    if threshold is None:
        threshold = bundle.manifest.operating_point.threshold
    return reference, "" if reference is not None else NO_REFERENCE, threshold


def drift_report(
    settings: Settings,
    store: Store,
    now: dt.datetime,
    reference: tuple[ValidationReference | None, str, float] | None = None,
) -> DriftReport:
    """Every scanner of the last ``drift.window_days`` before ``now``, judged.

    ``reference``: :func:`configured_reference`'s answer when the caller has it
    (the metrics collector keeps it between scrapes); read from the bundle otherwise.
    """
    ref, unjudged, threshold = reference or configured_reference(settings)
    since = now - dt.timedelta(days=settings.drift.window_days)
    with store.read() as session:
        summaries = scanner_summaries(session, since)
    scanners = tuple(
        judge_scanner(s, ref, settings.drift, threshold) if ref is not None else ScannerDrift(s, ())
        for s in summaries
    )
    return DriftReport(since, settings.drift, ref, unjudged, scanners)
