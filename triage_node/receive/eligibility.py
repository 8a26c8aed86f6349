"""Which received instances are scored; every other one gets a human-readable skip reason."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from triage_node.config import EligibilitySection
from triage_node.identity import carries_our_signature
from triage_node.receive.validate import InstanceHeader

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
OWN_RESULT_REASON = "own result object (loop prevention)"


@dataclass(frozen=True)
class EligibilityDecision:
    """Whether to score an instance, and if not, why."""

    eligible: bool
    reason: str | None = None
    own_result: bool = False


def _upper(values: list[str]) -> set[str]:
    return {v.strip().upper() for v in values}


def rule_tag(key: str) -> BaseTag:
    """The tag named by a ``require`` key: a keyword (``Laterality``) or hex (``00200060``)."""
    text = key.strip()
    tag = tag_for_keyword(text)
    if tag is not None:
        return Tag(tag)
    try:
        return Tag(text.replace("(", "").replace(")", "").replace(",", ""))
    except (ValueError, OverflowError):
        raise ValueError(f"eligibility.require: {key!r} is neither a keyword nor a tag") from None


def decide_eligibility(
    ds: Dataset, header: InstanceHeader, rules: EligibilitySection
) -> EligibilityDecision:
    """Apply the eligibility rules to a received instance (its dataset and header)."""
    if carries_our_signature(
        ds.get("Manufacturer"), ds.get("ManufacturerModelName"), ds.get("SeriesDescription")
    ):
        return EligibilityDecision(False, OWN_RESULT_REASON, own_result=True)
    if not header.has_pixel_data:
        return EligibilityDecision(False, "no pixel data (not an image)")
    decision = _tag_rules(header.modality, header.body_part, header.view_position, rules)
    if not decision.eligible:
        return decision
    if header.number_of_frames != 1:
        return EligibilityDecision(False, f"{header.number_of_frames} frames (one expected)")
    photometric = (header.photometric_interpretation or "").upper()
    if photometric not in GRAYSCALE:
        return EligibilityDecision(
            False, f"photometric interpretation {photometric or '(empty)'} is not grayscale"
        )
    if ds.get("SamplesPerPixel", 1) != 1:
        return EligibilityDecision(False, f"{ds.SamplesPerPixel} samples per pixel (one expected)")
    for key, wanted in rules.require.items():
        elem = ds.get(rule_tag(key))
        actual = "" if elem is None or elem.value is None else str(elem.value).strip()
        if actual.upper() != wanted.strip().upper():
            return EligibilityDecision(
                False, f"{key} is {actual or '(empty)'!s}, rule requires {wanted}"
            )
    return EligibilityDecision(True)


def _tag_rules(
    modality: str | None,
    body_part: str | None,
    view_position: str | None,
    rules: EligibilitySection,
) -> EligibilityDecision:
    """The rules on Modality, Body Part Examined and View Position."""
    modality = (modality or "").upper()
    if modality not in _upper(rules.modalities):
        return EligibilityDecision(
            False, f"modality {modality or '(empty)'} is not one of {', '.join(rules.modalities)}"
        )
    body_part = (body_part or "").upper()
    if body_part not in _upper(rules.body_parts):
        return EligibilityDecision(
            False,
            f"body part {body_part or '(empty)'} is not one of {', '.join(rules.body_parts)}",
        )
    view = (view_position or "").upper()
    if view not in _upper(rules.view_positions):
        allowed = ", ".join(v or "(empty)" for v in rules.view_positions)
        return EligibilityDecision(
            False, f"view position {view or '(empty)'} is not one of {allowed}"
        )
    return EligibilityDecision(True)


def decide_listed_eligibility(
    *,
    modality: str | None,
    body_part: str | None,
    view_position: str | None,
    manufacturer: str | None = None,
    model_name: str | None = None,
    series_description: str | None = None,
    rules: EligibilitySection,
) -> EligibilityDecision:
    """Whether an instance an archive lists for a study (a C-FIND answer) would be scored.

    The same rules as :func:`decide_eligibility` as far as a query answer can tell:
    our own results are not, Modality, Body Part Examined and View Position must
    match. What only the instance itself shows (pixel data, frames, photometric
    interpretation, ``require`` rules) is decided when it arrives: an instance
    listed here that then turns out not eligible is still *held* by the node.
    """
    if carries_our_signature(manufacturer, model_name, series_description):
        return EligibilityDecision(False, OWN_RESULT_REASON, own_result=True)
    return _tag_rules(modality, body_part, view_position, rules)
