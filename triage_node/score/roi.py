"""Cutting each hip's ROI from a femur mask, or saying why that side is not assessable.

Given the decoded image and a per-side proximal-femur mask (from the synthetic
cohort, a site's annotations, or -- later -- the segmentation network), this
module checks the side (found, not cut off, no prosthesis) and cuts a square
ROI of ``ROI_SIZE_PX`` pixels at ``ROI_SPACING_MM`` (128 mm): its top edge
just above the femoral head, centred on the mask's columns, so it holds head,
neck, trochanters and upper shaft like the paper's crop ("top of mask, fixed
length").

Orientation: on an AP view the patient's right hip is on the image's left.
The paper's code flips the image's right half, i.e. the patient's **left**
hip; we do the same, so every ROI shows a hip as the patient's right one
does (femoral head towards the ROI's right edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from triage_node.score.geometry import RoiGeometry
from triage_node.score.interface import Side
from triage_node.score.siamese import ROI_SIZE_PX, ROI_SPACING_MM

NOT_FOUND = "femur not found"
CUT_OFF = "femur cut off at the image edge"
PROSTHESIS = "prosthesis or metal in the hip"


@dataclass(frozen=True)
class RoiChecks:
    """Thresholds of the not-assessable checks.

    ``min_area_mm2``: smallest believable femur mask. ``top_margin_mm``: space
    above the mask top in the ROI. ``metal_level``: fraction of the image's
    grey range above which a pixel counts as metal (metal saturates on a
    viewer-windowed image; bone does not). ``min_metal_mm2``: connected metal
    area inside the dilated mask that marks a prosthesis, screw or nail.
    """

    min_area_mm2: float = 800.0
    top_margin_mm: float = 5.0
    metal_level: float = 0.98
    min_metal_mm2: float = 30.0


@dataclass(frozen=True)
class SideRoi:
    """One assessable hip: oriented ROI image and mask plus where it sits on the source."""

    side: Side
    image: np.ndarray  # (ROI_SIZE_PX, ROI_SIZE_PX) float64, source intensities
    mask: np.ndarray  # same shape, uint8 0/1
    geometry: RoiGeometry


@dataclass(frozen=True)
class NotAssessable:
    """A hip the model must not score, with the reason for the report."""

    side: Side
    reason: str


def mirrored_side(side: Side) -> bool:
    """Whether this side's ROI is mirrored (the patient's left; see module doc)."""
    return side == "left"


def cut_side_roi(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    mask: np.ndarray,
    side: Side,
    checks: RoiChecks | None = None,
    size: int = ROI_SIZE_PX,
    roi_spacing_mm: float = ROI_SPACING_MM,
) -> SideRoi | NotAssessable:
    """Check one hip's mask on the decoded image and cut its oriented ROI.

    ``pixels``: decoded image (bone bright); ``spacing_mm``: its (row, column)
    spacing; ``mask``: that hip's femur mask on the same grid (non-zero inside).
    """
    checks = checks or RoiChecks()
    if pixels.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} != image shape {pixels.shape}")
    inside = np.asarray(mask) != 0
    pixel_area = spacing_mm[0] * spacing_mm[1]
    if inside.sum() * pixel_area < checks.min_area_mm2:
        return NotAssessable(side, NOT_FOUND)
    if inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any():
        return NotAssessable(side, CUT_OFF)
    lo, hi = float(pixels.min()), float(pixels.max())
    if hi > lo:
        metal = pixels >= lo + checks.metal_level * (hi - lo)
        near = ndimage.binary_dilation(inside, iterations=3)
        labels, count = ndimage.label(metal & near)
        if count:
            largest = np.bincount(labels.ravel())[1:].max()
            if largest * pixel_area >= checks.min_metal_mm2:
                return NotAssessable(side, PROSTHESIS)
    rows, cols = np.nonzero(inside)
    steps = (roi_spacing_mm / spacing_mm[0], roi_spacing_mm / spacing_mm[1])
    geometry = RoiGeometry(
        origin_row=rows.min() - checks.top_margin_mm / spacing_mm[0],
        origin_col=(cols.min() + cols.max()) / 2.0 - (size - 1) / 2.0 * steps[1],
        step_rows=steps[0],
        step_cols=steps[1],
        size=size,
        mirrored=mirrored_side(side),
    )
    sigma = [0.5 * s if s > 1.0 else 0.0 for s in steps]  # anti-alias when shrinking
    smooth = (
        ndimage.gaussian_filter(np.asarray(pixels, np.float64), sigma) if any(sigma) else pixels
    )
    roi_image = geometry.cut(smooth, order=1, cval=float(np.median(pixels)))
    roi_mask = (geometry.cut(inside.astype(np.float64), order=0) > 0.5).astype(np.uint8)
    return SideRoi(side, roi_image, roi_mask, geometry)
