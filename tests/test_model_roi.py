"""Cutting hip ROIs from masks: orientation, geometry, and the not-assessable reasons."""

from __future__ import annotations

import numpy as np

from triage_node.score.roi import (
    CUT_OFF,
    NOT_FOUND,
    PROSTHESIS,
    NotAssessable,
    SideRoi,
    cut_side_roi,
)

SPACING = (0.4, 0.4)  # mm; ROI of 64 px at 1.0 mm = 64 mm = 160 source px


def _pelvis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 300 x 400 image with two 'femurs': bright ellipses, head marked by a dark dot."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:300, :400]
    image = 100 + 5 * rng.normal(size=rows.shape)
    right_hip = ((rows - 150) / 80) ** 2 + ((cols - 100) / 40) ** 2 < 1  # image left
    left_hip = ((rows - 150) / 80) ** 2 + ((cols - 300) / 40) ** 2 < 1  # image right
    image[right_hip | left_hip] += 200
    image[80:90, 120:130] = 0  # a marker on the medial side of the image-left femur
    return image, right_hip.astype(np.uint8), left_hip.astype(np.uint8)


def _cut(image: np.ndarray, mask: np.ndarray, side: str) -> SideRoi | NotAssessable:
    return cut_side_roi(image, SPACING, mask, side, size=64, roi_spacing_mm=1.0)  # type: ignore[arg-type]


def test_roi_geometry_and_orientation() -> None:
    image, right_mask, left_mask = _pelvis()
    right = _cut(image, right_mask, "right")
    left = _cut(image, left_mask, "left")
    assert isinstance(right, SideRoi) and isinstance(left, SideRoi)
    assert right.image.shape == right.mask.shape == (64, 64)
    assert not right.geometry.mirrored and left.geometry.mirrored
    # Top of the ROI sits 5 mm above the mask top (row 71 -> 71 - 12.5).
    assert right.geometry.origin_row == np.nonzero(right_mask)[0].min() - 5 / 0.4
    # ROI is centred on the mask's columns; the mask fills the middle of the ROI.
    cols = np.nonzero(right.mask)[1]
    assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1
    # Mirroring: both hips look alike; the image-left femur's marker stays on its side.
    assert np.abs(right.mask.astype(int) - left.mask.astype(int)).sum() <= 0.02 * right.mask.sum()
    marker = np.unravel_index(np.argmin(right.image), right.image.shape)
    assert marker[1] > 32
    polygon = left.geometry.polygon()
    assert all(200 <= c <= 400 for c, _ in polygon)


def test_not_assessable_reasons() -> None:
    image, right_mask, left_mask = _pelvis()
    assert _cut(image, np.zeros_like(right_mask), "right") == NotAssessable("right", NOT_FOUND)
    cut_off = right_mask.copy()
    cut_off[:, :75] = 0
    cut_off[100:200, 0:75] = 1
    assert _cut(image, cut_off, "right") == NotAssessable("right", CUT_OFF)
    metal = image.copy()
    metal[120:160, 290:310] = 5000  # a stem inside the left femur
    assert _cut(metal, left_mask, "left") == NotAssessable("left", PROSTHESIS)
    # The metal on the left does not make the right side unassessable.
    assert isinstance(_cut(metal, right_mask, "right"), SideRoi)


def test_roi_settings_default_fine_and_json() -> None:
    from triage_node.score.roi import FINE_ROI, RoiSettings

    default = RoiSettings()
    assert (default.size_px, default.spacing_mm, default.deep_factor) == (256, 0.5, 2)
    assert (default.deep_size_px, default.deep_spacing_mm) == (128, 1.0)
    assert FINE_ROI.deep_factor == 1 and FINE_ROI.deep_size_px == 256
    assert RoiSettings.from_json(default.to_json()) == default
    assert RoiSettings.from_json(None) == FINE_ROI  # bundles from before the setting existed
    image = np.arange(256 * 256, dtype=np.float64).reshape(256, 256)
    pooled = default.deep_input(image)
    assert pooled.shape == (128, 128)
    assert pooled[0, 0] == image[:2, :2].mean() and pooled[-1, -1] == image[-2:, -2:].mean()
    assert FINE_ROI.deep_input(image) is image
