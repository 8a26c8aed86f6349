"""Cutting each hip's ROI from a femur mask, or saying why that side is not assessable.

Given the decoded image and a per-side proximal-femur mask (from the synthetic
cohort, a site's annotations, or -- later -- the segmentation network), this
module checks the side (found, not cut off, no prosthesis) and cuts a square
ROI of 128 mm (:class:`RoiSettings`: 256 px at 0.5 mm; the CNN may see it
block-averaged to 128 px at 1.0 mm): its top edge just above the femoral
head, centred on the mask's columns, so it holds head, neck, trochanters and
upper shaft like the paper's crop ("top of mask, fixed length").

Orientation: on an AP view the patient's right hip is on the image's left.
The paper's code flips the image's right half, i.e. the patient's **left**
hip; we do the same, so every ROI shows a hip as the patient's right one
does (femoral head towards the ROI's right edge).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from triage_node.assessment import Side
from triage_node.score.geometry import RoiGeometry
from triage_node.score.input_checks import MetalRule, metal_in_hip, saturated_pixels
from triage_node.score.siamese import (
    DEFAULT_ROI_SIZE_PX,
    ROI_SIZE_PX,
    ROI_SPACING_MM,
)

NOT_FOUND = "femur not found"
CUT_OFF = "femur cut off at the image edge"
PROSTHESIS = "prosthesis or metal in the hip"


@dataclass(frozen=True)
class RoiChecks:
    """Thresholds of the not-assessable checks.

    ``min_area_mm2``: smallest believable femur mask. ``top_margin_mm``: space
    above the mask top in the ROI. ``metal``: the signature of metal in or at
    the femur (saturated stored values, compact after an opening, a sharp
    step to the bone around it; :class:`~triage_node.score.input_checks.MetalRule`).
    """

    min_area_mm2: float = 800.0
    top_margin_mm: float = 5.0
    metal: MetalRule = MetalRule()


@dataclass(frozen=True)
class RoiSettings:
    """The ROI grid: ``size_px`` x ``size_px`` pixels at ``spacing_mm``; the CNN's grid.

    Texture is extracted on the ROI grid; the Siamese branch sees the ROI
    block-averaged by ``deep_factor`` (1: the same grid). Default (the demo
    build): 256 px at 0.5 mm for texture, the CNN at 128 px / 1.0 mm
    (``deep_factor`` 2): trabecular texture keeps its resolution, a Siamese
    step costs a quarter. :data:`FINE_ROI` (the earlier configuration): both
    branches at 256 px / 0.5 mm. Stored in a bundle's ``model.json`` under
    ``roi``; bundles without it used :data:`FINE_ROI`.
    """

    spacing_mm: float = ROI_SPACING_MM
    size_px: int = ROI_SIZE_PX
    deep_factor: int = ROI_SIZE_PX // DEFAULT_ROI_SIZE_PX

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0 or self.size_px < 16:
            raise ValueError(f"RoiSettings: need spacing_mm > 0 and size_px >= 16: {self}")
        if self.deep_factor < 1 or self.size_px % self.deep_factor:
            raise ValueError(f"RoiSettings: deep_factor must divide size_px: {self}")

    @property
    def deep_size_px(self) -> int:
        return self.size_px // self.deep_factor

    @property
    def deep_spacing_mm(self) -> float:
        return self.spacing_mm * self.deep_factor

    def deep_input(self, image: np.ndarray) -> np.ndarray:
        """The CNN's view of an ROI image: ``deep_factor`` x ``deep_factor`` block means."""
        f = self.deep_factor
        if f == 1:
            return image
        n = self.deep_size_px
        return np.asarray(image, np.float64).reshape(n, f, n, f).mean(axis=(1, 3))

    def to_json(self) -> dict[str, float | int]:
        return {
            "size_px": self.size_px,
            "spacing_mm": self.spacing_mm,
            "deep_factor": self.deep_factor,
        }

    @classmethod
    def from_json(cls, data: dict[str, float | int] | None) -> RoiSettings:
        """Inverse of :meth:`to_json`; ``None`` (older bundles) gives :data:`FINE_ROI`."""
        if not data:
            return FINE_ROI
        return cls(
            spacing_mm=float(data["spacing_mm"]),
            size_px=int(data["size_px"]),
            deep_factor=int(data.get("deep_factor", 1)),
        )


FINE_ROI = RoiSettings(spacing_mm=ROI_SPACING_MM, size_px=ROI_SIZE_PX, deep_factor=1)


@dataclass(frozen=True)
class SideRoi:
    """One assessable hip: oriented ROI image and mask plus where it sits on the source."""

    side: Side
    image: np.ndarray  # (size, size) float64, source intensities
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
    saturated: np.ndarray | None = None,
) -> SideRoi | NotAssessable:
    """Check one hip's mask on the decoded image and cut its oriented ROI.

    ``pixels``: decoded image (bone bright); ``spacing_mm``: its (row, column)
    spacing; ``mask``: that hip's femur mask on the same grid (non-zero inside).
    ``saturated``: the stored values' saturation mask from decoding
    (:attr:`~triage_node.score.decode.DecodedImage.saturated`); None takes
    the pixels at the top of ``pixels``' own range.
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
    rows, cols = np.nonzero(inside)
    if saturated is None:
        saturated = saturated_pixels(pixels, "MONOCHROME2")
    if metal_in_hip(pixels, saturated, inside, spacing_mm, checks.metal).found:
        return NotAssessable(side, PROSTHESIS)
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
    # Smooth only the ROI's box (plus the filter's reach): on a full-size image the whole
    # frame is ~10 times the ROI, and the result inside the box is the same.
    margin = int(np.ceil(4.0 * max(sigma))) + 2
    r0, c0 = geometry.roi_to_source(np.array([0.0, size - 1.0]), np.array([0.0, size - 1.0]))
    row_lo = max(int(np.floor(min(r0))) - margin, 0)
    row_hi = min(int(np.ceil(max(r0))) + margin + 1, pixels.shape[0])
    col_lo = max(int(np.floor(min(c0))) - margin, 0)
    col_hi = min(int(np.ceil(max(c0))) + margin + 1, pixels.shape[1])
    region = np.asarray(pixels[row_lo:row_hi, col_lo:col_hi], np.float64)
    smooth = ndimage.gaussian_filter(region, sigma) if any(sigma) else region
    in_box = replace(
        geometry, origin_row=geometry.origin_row - row_lo, origin_col=geometry.origin_col - col_lo
    )
    # fill value outside the image: the image median (of every 4th row and column: the same
    # to a grey level or two, 16 times cheaper on a full-size image)
    fill = float(np.median(pixels[::4, ::4]))
    roi_image = in_box.cut(smooth, order=1, cval=fill)
    # nearest-pixel sampling of the mask as it is (no float64 copy of the whole frame)
    roi_mask = (geometry.cut(inside.view(np.uint8), order=0) > 0.5).astype(np.uint8)
    return SideRoi(side, roi_image, roi_mask, geometry)
