"""What our objects say in words: the decisions, the probabilities and what a reader must know.

The SR and the heatmap both take their sentences from here, so a radiologist
reads the same decision with the same number in every object. Probabilities
are shown in percent with two decimals (:func:`percent_text`): the precision
OHIF prints a NUM with (``toFixed(2)``), so its ROI labels show exactly the
numbers of the heatmap and the SR's text, and the SR sends the same value as a
NUM in UCUM "%" (:func:`percent_value`).

The decision rule itself is :func:`triage_node.assessment.is_positive`; the
image and study value is :attr:`ImageAssessment.probability` (the highest
assessed hip) and the image decision :attr:`ImageAssessment.positive`. Nothing
here decides anything new: it only puts those into words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from triage_node.assessment import ImageAssessment, SideAssessment, is_positive

#: What the study value is, in the words every object uses.
STUDY_VALUE_NAME = "probability of osteoporosis (highest assessed hip)"
#: The heatmap colours are normalised per image (Grad-CAM), so they cannot be compared.
ATTENTION_SCALE_NOTE = (
    "heatmap colours are scaled per image (brightest = the model's strongest attention "
    "in that image); do not compare them between images"
)


def percent(probability: float) -> float:
    """A probability in [0, 1] as the percent our objects show: two decimals."""
    return round(100.0 * float(probability), 2)


def percent_value(probability: float) -> str:
    """The percent as a DS string with its two decimals: ``0.73`` -> ``"73.00"``."""
    return f"{percent(probability):.2f}"


def percent_text(probability: float) -> str:
    """``0.3785`` -> ``"37.85 %"``."""
    return f"{percent_value(probability)} %"


def side_is_positive(side: SideAssessment, threshold: float) -> bool | None:
    """The hip's decision: ``is_positive(probability, threshold)``; None if not assessable.

    A model's own ``side.positive`` must agree (``report.sr.check_assessment``
    refuses an assessment where it does not).
    """
    if side.probability is None:
        return None
    return bool(is_positive(side.probability, threshold))


def study_decision(assessments: Sequence[ImageAssessment]) -> bool | None:
    """True: DXA recommended; False: low likelihood; None: nothing assessable.

    The study is positive when any image is, and an image when any of its
    assessed hips is (:attr:`ImageAssessment.positive`): the study decision
    never contradicts a hip.
    """
    known = [a.positive for a in assessments if a.positive is not None]
    if not known:
        return None
    return any(known)


def decision_text(decision: bool | None) -> str:
    """A decision in words (never "positive"/"negative")."""
    if decision is None:
        return "not assessable"
    return "DXA recommended" if decision else "low likelihood, DXA not recommended"


def hip(side: str) -> str:
    """``"left"`` -> ``"left hip"``."""
    return f"{side} hip"


def image_label(number: int, count: int) -> str:
    """How a multi-image report names image ``number`` (1-based); empty for a single image."""
    return f"image {number}" if count > 1 else ""


def _prefixed(label: str, text: str) -> str:
    return f"{label}: {text}" if label else text


def side_result(side: SideAssessment, threshold: float) -> str:
    """One hip in words: ``"left hip: probability of osteoporosis 37.85 %, DXA recommended"``."""
    if side.probability is None:
        return f"{hip(side.side)}: not assessable, {side.not_assessable_reason}"
    decision = decision_text(side_is_positive(side, threshold))
    return (
        f"{hip(side.side)}: probability of osteoporosis {percent_text(side.probability)}, "
        f"{decision}"
    )


@dataclass(frozen=True)
class StudyValue:
    """The study value and where it comes from (the hip with the highest probability)."""

    probability: float
    side: str
    image_number: int  # 1-based, in the order the assessments were given
    assessed_hips: int


def study_value(assessments: Sequence[ImageAssessment]) -> StudyValue | None:
    """The highest :attr:`ImageAssessment.probability` of the study and its hip; None if none.

    Ties go to the first image, then the patient's right (the order hips are
    listed in).
    """
    best: StudyValue | None = None
    assessed = sum(1 for a in assessments for s in a.sides if s.probability is not None)
    for number, assessment in enumerate(assessments, start=1):
        p = assessment.probability
        if p is None or (best is not None and p <= best.probability):
            continue
        side = next(s.side for s in _ordered(assessment.sides) if s.probability == p)
        best = StudyValue(p, side, number, assessed)
    return best


def _ordered(sides: Sequence[SideAssessment]) -> list[SideAssessment]:
    # Patient's right first, as it appears on the viewer's left in an AP view.
    return sorted(sides, key=lambda s: s.side != "right")


def ordered_sides(assessment: ImageAssessment) -> list[SideAssessment]:
    """The hips of an image in reading order: the patient's right, then left."""
    return _ordered(assessment.sides)


def study_conclusion(assessments: Sequence[ImageAssessment]) -> str:
    """The study result in one sentence: decision, study value, its hip, the operating point.

    ``"DXA recommended: probability of osteoporosis 37.85 % in the left hip (the
    higher of the 2 assessed hips), at or above the operating point 37.23 %"``.
    """
    value = study_value(assessments)
    decision = study_decision(assessments)
    if value is None or decision is None:
        return "Not assessable: no hip could be assessed, so there is no probability"
    threshold = percent_text(assessments[0].threshold)
    where = hip(value.side)
    if len(assessments) > 1:
        where += f" of image {value.image_number}"
    if value.assessed_hips == 1:
        which = "the only assessed hip"
    elif value.assessed_hips == 2:
        which = "the higher of the 2 assessed hips"
    else:
        which = f"the highest of the {value.assessed_hips} assessed hips"
    head = "DXA recommended" if decision else "Low likelihood of osteoporosis, DXA not recommended"
    relation = "at or above" if decision else "below"
    return (
        f"{head}: probability of osteoporosis {percent_text(value.probability)} in the "
        f"{where} ({which}), {relation} the operating point {threshold}"
    )


def not_assessable_reasons(assessment: ImageAssessment, label: str = "") -> list[str]:
    """``"right hip: prosthesis or metal in the hip"`` for each hip that was not assessed."""
    return [
        _prefixed(label, f"{hip(s.side)}: {s.not_assessable_reason}")
        for s in ordered_sides(assessment)
        if s.probability is None
    ]


def reader_notes(assessment: ImageAssessment, label: str = "") -> list[str]:
    """What a reader of one image's result must know, besides the numbers.

    "only the left hip was assessable" when one hip carries the result, and the
    model's warnings (e.g. "weight missing from the header; imputed training
    median 65 (kg)"). A model warning that repeats the one-hip note is left out.
    """
    notes: list[str] = []
    assessed = [s.side for s in ordered_sides(assessment) if s.probability is not None]
    if len(assessed) == 1:
        notes.append(f"only the {hip(assessed[0])} was assessable; the result rests on it alone")
    lead = f"only the {hip(assessed[0])} was assessable" if len(assessed) == 1 else None
    notes += [w for w in assessment.warnings if lead is None or not w.startswith(lead)]
    return [_prefixed(label, note) for note in notes]
