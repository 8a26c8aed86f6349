"""The bundle's validation reference: what the model's output looked like on data it was checked on.

A bundle may carry ``reference.json``: on a named set of labelled images that
the networks were not fitted on (the validation split at training, a site's own
images at ``calibrate``), how many images were scored, how many came out
positive at the bundle's operating point, why hips could not be assessed, and
the distribution of the image value (the highest assessed side, see
:attr:`~triage_node.assessment.ImageAssessment.probability`).

The node's drift watch compares each scanner's stream with it:
:meth:`ValidationReference.expected_range` is the range a scanner's observed
rate should fall in, given how many images it sent, if it behaved like the
reference (a binomial prediction interval around the reference rate).

Rates are per image, except the not-assessable reasons, which are counted per
hip (one image can have a prosthesis on one side and an assessable other side).

:data:`HISTOGRAM_EDGES` and :func:`histogram` live in :mod:`triage_node.assessment`
(the store counts the node's own values in the same bins) and are re-exported here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from triage_node.assessment import (
    HISTOGRAM_EDGES,
    ImageAssessment,
    ModelUnavailable,
    histogram,
    is_positive,
)
from triage_node.score.bundle import Bundle

__all__ = [
    "DEFAULT_LEVEL",
    "HISTOGRAM_EDGES",
    "REFERENCE_FILE",
    "ValidationReference",
    "histogram",
    "read_reference",
]

#: The file name inside a bundle (listed in its manifest like every other file).
REFERENCE_FILE = "reference.json"

#: Default coverage of :meth:`ValidationReference.expected_range`.
DEFAULT_LEVEL = 0.99


@dataclass(frozen=True)
class ValidationReference:
    """The model's output on a reference set of images (see the module docstring).

    ``source`` says in words which images (e.g. "validation split of the
    development cohort, 400 images, seed 20240601"); ``threshold`` is the
    operating point the positives were counted at; ``histogram`` counts the
    image values of the scored images per :data:`HISTOGRAM_EDGES` bin.
    """

    source: str
    threshold: float
    images: int
    scored: int
    positives: int
    sides: int
    side_reasons: Mapping[str, int] = field(default_factory=dict)
    histogram: tuple[int, ...] = (0,) * (len(HISTOGRAM_EDGES) - 1)

    def __post_init__(self) -> None:
        if not 0 <= self.scored <= self.images:
            raise ValueError(f"scored ({self.scored}) must be within 0..images ({self.images})")
        if not 0 <= self.positives <= self.scored:
            raise ValueError(
                f"positives ({self.positives}) must be within 0..scored ({self.scored})"
            )
        if len(self.histogram) != len(HISTOGRAM_EDGES) - 1:
            raise ValueError(f"histogram must have {len(HISTOGRAM_EDGES) - 1} bins")
        if sum(self.histogram) != self.scored:
            raise ValueError("histogram counts must add up to scored")
        if sum(self.side_reasons.values()) > self.sides:
            raise ValueError("more not-assessable hips than hips")

    @property
    def positive_rate(self) -> float | None:
        """Fraction of scored images that were positive (DXA recommended)."""
        return self.positives / self.scored if self.scored else None

    @property
    def not_assessable_rate(self) -> float | None:
        """Fraction of images with no assessable hip."""
        return (self.images - self.scored) / self.images if self.images else None

    def reason_rate(self, reason: str) -> float | None:
        """Fraction of hips not assessable for ``reason`` (0 for a reason never seen)."""
        return self.side_reasons.get(reason, 0) / self.sides if self.sides else None

    @property
    def value_fractions(self) -> tuple[float, ...]:
        """The histogram as fractions of the scored images."""
        total = sum(self.histogram)
        return tuple(c / total if total else 0.0 for c in self.histogram)

    @staticmethod
    def expected_range(rate: float, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
        """The range an observed rate over ``n`` trials falls in with probability ``level``.

        A binomial prediction interval around the reference ``rate``: a scanner
        that behaves like the reference shows a rate outside it about
        ``1 - level`` of the time. Small ``n`` gives wide ranges, so few images
        never raise an alarm.
        """
        if n <= 0:
            return (0.0, 1.0)
        tail = (1 - level) / 2
        low = float(stats.binom.ppf(tail, n, rate)) / n
        high = float(stats.binom.ppf(1 - tail, n, rate)) / n
        return (low, high)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "threshold": self.threshold,
            "images": self.images,
            "scored": self.scored,
            "positives": self.positives,
            "sides": self.sides,
            "side_reasons": dict(sorted(self.side_reasons.items())),
            "histogram_edges": list(HISTOGRAM_EDGES),
            "histogram": list(self.histogram),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValidationReference:
        """Parse :meth:`to_json` output; ``ValueError`` naming what is wrong."""
        edges = tuple(float(e) for e in data.get("histogram_edges", HISTOGRAM_EDGES))
        if edges != HISTOGRAM_EDGES:
            raise ValueError(f"histogram_edges must be {list(HISTOGRAM_EDGES)}")
        try:
            return cls(
                source=str(data["source"]),
                threshold=float(data["threshold"]),
                images=int(data["images"]),
                scored=int(data["scored"]),
                positives=int(data["positives"]),
                sides=int(data["sides"]),
                side_reasons={str(k): int(v) for k, v in dict(data["side_reasons"]).items()},
                histogram=tuple(int(c) for c in data["histogram"]),
            )
        except KeyError as exc:
            raise ValueError(f"{REFERENCE_FILE}: missing key {exc}") from None

    @classmethod
    def from_outcomes(
        cls,
        values: Iterable[float | None],
        side_reasons: Iterable[str | None],
        threshold: float,
        source: str,
    ) -> ValidationReference:
        """Build from each image's value (None: not assessable) and each hip's reason.

        ``side_reasons`` has one entry per hip looked at: None for an assessed
        hip, else its not-assessable reason.
        """
        image_values = list(values)
        scored = [v for v in image_values if v is not None]
        reasons = list(side_reasons)
        return cls(
            source=source,
            threshold=threshold,
            images=len(image_values),
            scored=len(scored),
            positives=int(np.count_nonzero(is_positive(np.asarray(scored, float), threshold)))
            if scored
            else 0,
            sides=len(reasons),
            side_reasons=dict(Counter(r for r in reasons if r is not None)),
            histogram=histogram(scored),
        )

    @classmethod
    def from_assessments(
        cls, assessments: Iterable[ImageAssessment], threshold: float, source: str
    ) -> ValidationReference:
        """Build from the node's own assessments (as :func:`from_outcomes`)."""
        items = list(assessments)
        return cls.from_outcomes(
            (a.probability for a in items),
            (
                s.not_assessable_reason if s.probability is None else None
                for a in items
                for s in a.sides
            ),
            threshold,
            source,
        )


def read_reference(bundle: Bundle) -> ValidationReference | None:
    """The bundle's validation reference, or None for a bundle that carries none.

    ``ModelUnavailable`` when the file is listed but malformed.
    """
    if not bundle.has(REFERENCE_FILE):
        return None
    try:
        return ValidationReference.from_json(bundle.read_json(REFERENCE_FILE))
    except (ValueError, TypeError) as exc:
        raise ModelUnavailable(f"bundle file {bundle.path / REFERENCE_FILE}: {exc}") from None
