"""The model contract: dataset in, per-side result out, and the one decision rule.

The worker and the report only know this module. A model (the DTC bundle, see
MODEL.md) implements :class:`ScoringModel`; ``triage_node.score.loader.load_model``
finds the configured bundle, or the shipped demo bundle when none is configured.
Nothing here imports a stage: the contract is below every one of them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, overload

if TYPE_CHECKING:
    import numpy as np
    import pydicom
    from numpy.typing import NDArray

Side = Literal["left", "right"]

#: Fields of :meth:`ImageAssessment.to_json` that are derived (properties), not constructor args.
_DERIVED = ("probability", "positive", "not_assessable_reason")


@overload
def is_positive(probability: float, threshold: float) -> bool: ...
@overload
def is_positive(probability: NDArray[np.floating[Any]], threshold: float) -> NDArray[np.bool_]: ...
def is_positive(
    probability: float | NDArray[np.floating[Any]], threshold: float
) -> bool | NDArray[np.bool_]:
    """THE decision rule: positive (DXA recommended) when ``probability >= threshold``.

    ``probability`` is the calibrated probability of osteoporosis (a number, or
    an array of them: one decision each); ``threshold`` is the operating point
    chosen on validation data. A probability exactly at the threshold is
    positive. Every place that decides -- the model's per-side flag, the SR,
    the heatmap caption, the training metrics and the operating point -- uses
    this function.
    """
    return probability >= threshold


#: Bin edges of the image-value histogram (the bundle's validation reference, the node's
#: drift watch): ten bins of width 0.1 over [0, 1], each closed on the left, the last
#: closed on both sides (as ``numpy.histogram``).
HISTOGRAM_EDGES: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))


def histogram(values: Iterable[float]) -> tuple[int, ...]:
    """Counts of image values in the bins of :data:`HISTOGRAM_EDGES` (1.0 falls in the last).

    Values outside [0, 1] count in the nearest end bin.
    """
    counts = [0] * (len(HISTOGRAM_EDGES) - 1)
    for value in values:
        counts[min(max(bisect_right(HISTOGRAM_EDGES, value) - 1, 0), len(counts) - 1)] += 1
    return tuple(counts)


class ModelUnavailable(Exception):
    """No usable model bundle: missing, incomplete or tampered. The message names the file."""


class NotScorable(Exception):
    """The instance cannot be scored at all (e.g. pixel data does not decode)."""


@dataclass(frozen=True)
class SideAssessment:
    """The result for one hip (the patient's left or right, not the image's)."""

    side: Side
    probability: float | None  # calibrated probability of osteoporosis; None if not assessable
    not_assessable_reason: str | None = None  # e.g. "femur not found", "prosthesis", "cut off"
    # ROI on the source image as a closed polygon, (column, row) pixel coordinates.
    roi_polygon: list[tuple[float, float]] | None = None
    positive: bool | None = None  # is_positive(probability, the operating point)

    def __post_init__(self) -> None:
        if (self.probability is None) == (self.not_assessable_reason is None):
            raise ValueError(
                f"side {self.side}: give either a probability or a not-assessable reason"
            )
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"side {self.side}: probability {self.probability} not in [0, 1]")


@dataclass(frozen=True)
class ImageAssessment:
    """What a model says about one radiograph."""

    sides: tuple[SideAssessment, ...]
    model_name: str
    model_version: str
    threshold: float  # operating point the decisions were made at
    synthetic_model: bool  # trained on synthetic data: not for clinical use
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # The bilateral head's value for both hips together (the paper's DTC model). Kept for
    # evaluation only: it is NOT the image's probability and decides nothing.
    combined_probability: float | None = None

    @property
    def assessable(self) -> bool:
        return any(s.probability is not None for s in self.sides)

    @property
    def probability(self) -> float | None:
        """THE image (and study) value: the highest probability of the assessed sides.

        Osteoporosis is diagnosed on the lowest site, so the patient is as likely
        to have it as the more likely hip. With :attr:`positive` this makes the
        image's decision agree with its sides' by construction. None when no side
        is assessable. See ``docs/model.md`` ("The decision rule").
        """
        probs = [s.probability for s in self.sides if s.probability is not None]
        return max(probs) if probs else None

    @property
    def positive(self) -> bool | None:
        """THE image decision: DXA recommended iff at least one assessed side is positive.

        Equals ``is_positive(self.probability, self.threshold)``. None when no side
        is assessable.
        """
        p = self.probability
        return None if p is None else is_positive(p, self.threshold)

    @property
    def not_assessable_reason(self) -> str | None:
        if self.assessable:
            return None
        reasons = sorted({f"{s.side}: {s.not_assessable_reason}" for s in self.sides})
        return "; ".join(reasons) or "no side assessable"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["probability"] = self.probability
        data["positive"] = self.positive
        data["not_assessable_reason"] = self.not_assessable_reason
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageAssessment:
        """The assessment stored by :meth:`to_json` (round trip).

        Raises ``ValueError`` naming the field when the JSON does not describe one.
        """
        if not isinstance(data, Mapping):
            raise ValueError("assessment: expected a JSON object")
        try:
            sides = tuple(
                SideAssessment(
                    side=s["side"],
                    probability=s.get("probability"),
                    not_assessable_reason=s.get("not_assessable_reason"),
                    roi_polygon=[(float(p[0]), float(p[1])) for p in s["roi_polygon"]]
                    if s.get("roi_polygon") is not None
                    else None,
                    positive=s.get("positive"),
                )
                for s in data["sides"]
            )
            fields = {k: v for k, v in data.items() if k not in _DERIVED and k != "sides"}
            fields["warnings"] = tuple(fields.get("warnings") or ())
            fields["extra"] = dict(fields.get("extra") or {})
            return cls(sides=sides, **fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"assessment: stored JSON is not an ImageAssessment ({exc})") from None


class ScoringModel(Protocol):
    """A loaded model the worker can call. Implementations must be thread-safe to call."""

    name: str
    version: str
    synthetic: bool
    threshold: float

    def assess(self, dataset: pydicom.Dataset) -> ImageAssessment:
        """Score one decoded-able radiograph; raise :class:`NotScorable` if it can't be read."""
        ...
