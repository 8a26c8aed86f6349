"""Image -> per-side features: the one implementation that inference and training share.

From a decoded radiograph and a femur mask per side (the bundle's femur finder,
:func:`find_femurs`; or a site's annotated masks in training),
:func:`measure_hips` does, for each hip:

1. :func:`~triage_node.score.roi.cut_side_roi`: checks the side (not found,
   cut off, prosthesis) and cuts its oriented ROI on the bundle's grid;
2. :func:`~triage_node.score.texture.extract_selected_texture`: the texture
   features asked for (the head's at inference, all 325 in training);
3. the Siamese branch's input: the ROI on the CNN grid
   (:meth:`~triage_node.score.roi.RoiSettings.deep_input`), scaled by
   :func:`~triage_node.score.siamese.normalise_roi` (float32, exactly what the
   network sees).

:class:`~triage_node.score.model.BundleScoringModel` runs the trained branch
on that input (:func:`~triage_node.score.siamese.branch_features`); training
caches the measurements per image and trains the branch on the same inputs.
:func:`patient_row` lays clinical values and per-side features out as one head
input row.

Texture-error policy, the same at inference and in training: a hip whose ROI
was cut but whose texture cannot be measured (``ValueError``, e.g. a flat ROI
with no contrast) stays assessable. Its texture values are missing -- NaN in
a head row, which the head imputes with its training medians -- its deep
features are used, and a warning names the side and the cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom

from triage_node.assessment import Side
from triage_node.score.clinical import CLINICAL_FEATURES, CLINICAL_PREFIX
from triage_node.score.decode import DecodedImage
from triage_node.score.femur_finder import SIDES, FemurFinder
from triage_node.score.input_checks import metal_where_femur_missing
from triage_node.score.roi import (
    NOT_FOUND,
    PROSTHESIS,
    NotAssessable,
    RoiSettings,
    SideRoi,
    cut_side_roi,
)
from triage_node.score.siamese import normalise_roi
from triage_node.score.texture import TextureSettings, extract_selected_texture


def split_name(name: str) -> tuple[str, str]:
    """``"right:original_glcm_Contrast"`` -> ``("right", "original_glcm_Contrast")``."""
    prefix, _, base = name.partition(":")
    return prefix, base


def texture_bases(names: Sequence[str]) -> list[str]:
    """The distinct pyradiomics base names among head feature names (both sides)."""
    bases = []
    for name in names:
        prefix, base = split_name(name)
        if prefix in SIDES and not base.startswith("deep_") and base not in bases:
            bases.append(base)
    return bases


@dataclass(frozen=True)
class HipFeatures:
    """Everything the heads need from one assessable hip (oriented ROI)."""

    texture: Mapping[str, float]  # base pyradiomics name -> value (missing: not measured)
    deep: np.ndarray  # pooled Siamese features, float64


def patient_row(
    names: Sequence[str],
    clinical: np.ndarray,
    hips: Mapping[Side, HipFeatures],
) -> np.ndarray:
    """One head input row in ``names`` order from clinical values and per-side hip features.

    ``hips`` must hold the side(s) to use in each slot: pass the same
    :class:`HipFeatures` for both sides to duplicate one hip. A texture name the
    hip lacks is NaN (the head imputes it).
    """
    row = np.full(len(names), np.nan)
    for i, name in enumerate(names):
        prefix, base = split_name(name)
        if name.startswith(CLINICAL_PREFIX):
            row[i] = clinical[CLINICAL_FEATURES.index(base)]
        elif base.startswith("deep_"):
            row[i] = hips[prefix].deep[int(base[5:])]  # type: ignore[index]
        else:
            row[i] = hips[prefix].texture.get(base, np.nan)  # type: ignore[index]
    return row


def image_laterality(dataset: pydicom.Dataset) -> str | None:
    """Image Laterality (``"L"``, ``"R"``; upper-cased), or None when absent or empty."""
    return str(dataset.get("ImageLaterality", "") or "").strip().upper() or None


def find_femurs(
    dataset: pydicom.Dataset, decoded: DecodedImage, finder: FemurFinder
) -> tuple[dict[Side, np.ndarray | None], dict[Side, str | None]]:
    """Each side's femur mask on the source grid (None: not found) and why it was not found."""
    found = finder.find(decoded.pixels, decoded.spacing_mm, image_laterality(dataset))
    return dict(found.masks), dict(found.reasons)


@dataclass(frozen=True)
class MeasuredHips:
    """Both hips of one image, measured (see module doc).

    ``rois``, ``texture`` and ``deep_input`` hold the assessable sides, in
    :data:`~triage_node.score.femur_finder.SIDES` order; ``not_assessable`` the
    others with the reason. ``texture[side]`` is ``{}`` when the texture could
    not be measured (``warnings`` says so). ``deep_input[side]`` is the
    Siamese branch's (H, W) float32 input.
    """

    rois: dict[Side, SideRoi]
    not_assessable: dict[Side, str]
    texture: dict[Side, dict[str, float]]
    deep_input: dict[Side, np.ndarray]
    warnings: tuple[str, ...]

    def texture_vector(self, side: Side, names: Sequence[str]) -> np.ndarray:
        """``side``'s texture values in ``names`` order, float64; NaN where not measured."""
        values = self.texture.get(side, {})
        return np.array([values.get(n, np.nan) for n in names], dtype=np.float64)


def _implant_on_side(decoded: DecodedImage, side: Side, unilateral: bool) -> bool:
    """A missed femur hidden by an implant: implant-sized metal on that side of the image.

    The patient's right is the image's left half; a one-hip view searches it whole.
    """
    if decoded.saturated is None:
        return False
    cols = decoded.pixels.shape[1]
    half = slice(0, cols // 2) if side == "right" else slice(cols // 2, cols)
    region = (slice(0, decoded.pixels.shape[0]), slice(0, cols) if unilateral else half)
    return metal_where_femur_missing(decoded.pixels, decoded.saturated, decoded.spacing_mm, region)


def measure_hips(
    decoded: DecodedImage,
    masks: Mapping[Side, np.ndarray | None],
    reasons: Mapping[Side, str | None],
    roi: RoiSettings,
    texture_settings: TextureSettings,
    texture_names: Sequence[str],
) -> MeasuredHips:
    """Cut, check and measure both hips of ``decoded`` (see module doc).

    ``masks[side]`` is that hip's femur mask on the source grid or None
    (``reasons[side]`` says why; default "femur not found"). A femur not found
    where implant-sized metal lies on its side of the image is reported as
    "prosthesis or metal in the hip" instead (a stem or plate can hide it
    from the finder).
    """
    rois: dict[Side, SideRoi] = {}
    not_assessable: dict[Side, str] = {}
    unilateral = any(r not in (None, NOT_FOUND) for r in reasons.values())
    for side in SIDES:
        mask = masks.get(side)
        if mask is None:
            reason = reasons.get(side) or NOT_FOUND
            if reason == NOT_FOUND and _implant_on_side(decoded, side, unilateral):
                reason = PROSTHESIS
            not_assessable[side] = reason
            continue
        cut = cut_side_roi(
            decoded.pixels,
            decoded.spacing_mm,
            mask,
            side,
            size=roi.size_px,
            roi_spacing_mm=roi.spacing_mm,
            saturated=decoded.saturated,
        )
        if isinstance(cut, NotAssessable):
            not_assessable[side] = cut.reason
        else:
            rois[side] = cut
    texture: dict[Side, dict[str, float]] = {}
    warnings: list[str] = []
    for side, cut in rois.items():
        try:
            texture[side] = extract_selected_texture(
                cut.image, cut.mask, texture_names, texture_settings
            )
        except ValueError as exc:  # e.g. a flat ROI: nothing to measure (see module doc)
            warnings.append(f"{side} hip texture not computed: {exc}")
            texture[side] = {}
    deep_input = {side: normalise_roi(roi.deep_input(cut.image)) for side, cut in rois.items()}
    return MeasuredHips(rois, not_assessable, texture, deep_input, tuple(warnings))
