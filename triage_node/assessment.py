"""The scoring interface between the node and a model: dataset in, per-side result out.

The worker only knows this module. A model (the DTC bundle, see MODEL.md)
implements :class:`ScoringModel`; ``triage_node.score.loader.load_model``
finds the configured bundle, or the shipped demo bundle when none is configured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import pydicom

Side = Literal["left", "right"]


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
    positive: bool | None = None  # probability >= the operating point

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
    # The model's patient-level probability from both hips together (the paper's DTC
    # model is bilateral); None: fall back to the higher of the sides.
    combined_probability: float | None = None

    @property
    def assessable(self) -> bool:
        return any(s.probability is not None for s in self.sides)

    @property
    def probability(self) -> float | None:
        """Image-level probability: the bilateral model's, else the higher of the sides."""
        if self.combined_probability is not None and self.assessable:
            return self.combined_probability
        probs = [s.probability for s in self.sides if s.probability is not None]
        return max(probs) if probs else None

    @property
    def not_assessable_reason(self) -> str | None:
        if self.assessable:
            return None
        reasons = sorted({f"{s.side}: {s.not_assessable_reason}" for s in self.sides})
        return "; ".join(reasons) or "no side assessable"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["probability"] = self.probability
        data["not_assessable_reason"] = self.not_assessable_reason
        return data


class ScoringModel(Protocol):
    """A loaded model the worker can call. Implementations must be thread-safe to call."""

    name: str
    version: str
    synthetic: bool
    threshold: float

    def assess(self, dataset: pydicom.Dataset) -> ImageAssessment:
        """Score one decoded-able radiograph; raise :class:`NotScorable` if it can't be read."""
        ...
