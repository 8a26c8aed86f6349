"""Input checks across other sites' acquisition profiles, through the real scoring path.

Each image is rendered by ``triage_node.synth`` with a site profile and scored
by the shipped demo bundle (decode with field detection and the saturation
mask, femur finder, per-hip checks). The hard cases are chosen so that a
rule deciding metal from a fraction of the displayed grey range (the rule
before these checks) would call them metal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from triage_node.display import display_pixels
from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle
from triage_node.score.decode import decode_radiograph
from triage_node.score.features import find_femurs
from triage_node.score.model import BundleScoringModel
from triage_node.score.roi import PROSTHESIS
from triage_node.synth import VENDORS, generate_cohort, render_instance
from triage_node.synth.cohort import cohort_item_options
from triage_node.synth.samples import write_samples

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model() -> BundleScoringModel:
    return BundleScoringModel(load_bundle(DEMO_BUNDLE_DIR))


def _grey_range_rule(ds: pydicom.Dataset, mask: np.ndarray) -> bool:
    """The earlier rule: >= 30 mm2 at >= 98% of the displayed range within 3 px of the femur."""
    pixels = display_pixels(ds, output_range=None, dtype=np.float64, invert="pixel_range")
    lo, hi = float(pixels.min()), float(pixels.max())
    bright = pixels >= lo + 0.98 * (hi - lo)
    labels, count = ndimage.label(bright & ndimage.binary_dilation(mask, iterations=3))
    spacing = float(ds.PixelSpacing[0]) if "PixelSpacing" in ds else float(ds.ImagerPixelSpacing[0])
    return bool(count) and np.bincount(labels.ravel())[1:].max() * spacing**2 >= 30.0


def _outcome(model: BundleScoringModel, ds: pydicom.Dataset) -> dict[str, str]:
    assessment = model.assess(ds)
    return {s.side: s.not_assessable_reason or "scored" for s in assessment.sides}


def test_bright_unshuttered_cr_border_is_not_metal(model: BundleScoringModel) -> None:
    image = render_instance(2, profile="cr_unshuttered")
    assert image.row["border"] == "unshuttered" and image.row["photometric"] == "MONOCHROME1"
    assert not image.row["metal_left"] and not image.row["metal_right"]
    assert _grey_range_rule(image.dataset, image.masks["L"])  # the border reaches the femur
    decoded = decode_radiograph(image.dataset)
    assert decoded.field is not None and decoded.field.collimated(decoded.pixels.shape)
    assert _outcome(model, image.dataset) == {"right": "scored", "left": "scored"}


def test_clipped_bone_highlights_are_not_metal(model: BundleScoringModel) -> None:
    image = render_instance(9, profile="dx_clipped")
    assert image.row["clipped"] == 1 and not (image.row["metal_left"] or image.row["metal_right"])
    decoded = decode_radiograph(image.dataset)
    assert decoded.saturated is not None
    for side in ("L", "R"):  # bone really is clipped at the top of the stored range
        assert decoded.saturated[image.masks[side]].sum() > 300
        assert _grey_range_rule(image.dataset, image.masks[side])
    assert _outcome(model, image.dataset) == {"right": "scored", "left": "scored"}


def test_grid_lines_and_a_lead_marker_beside_the_hip_are_not_metal(
    model: BundleScoringModel,
) -> None:
    for seed in (1, 2, 4):
        image = render_instance(seed, profile="grid_marker")
        assert image.row["grid"] == 1 and image.row["marker_near_hip"] == 1
        assert not (image.row["metal_left"] or image.row["metal_right"])
        outcome = _outcome(model, image.dataset)
        assert PROSTHESIS not in outcome.values(), (seed, outcome)


@pytest.mark.parametrize(
    ("seed", "side", "kind"),
    [(11, "right", "prosthesis"), (16, "right", "screws"), (3, "left", "plate")],
)
def test_saturating_metal_is_called_metal(
    model: BundleScoringModel, seed: int, side: str, kind: str
) -> None:
    image = render_instance(seed, index=1, profile="metal")
    other = "left" if side == "right" else "right"
    assert image.row[f"metal_{side}"] == kind and not image.row[f"metal_{other}"]
    outcome = _outcome(model, image.dataset)
    assert outcome[side] == PROSTHESIS
    assert outcome[other] == "scored"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_images_are_unchanged_by_the_profiles(tmp_path: Path) -> None:
    """The demo bundle's cohorts and the committed samples still come out the same."""
    # first image of the development (seed 20240601) and test (20240602) cohorts, as
    # rendered before site profiles existed
    expected = {
        20240601: "ce394b9e1a3923b6bb563c73020444bb00208328b05ac4ee145a014d36b7f106",
        20240602: "4a6ff93b00363b4735eba2c28118ac07d3d60969e2af7fc875872d893b1b7c8c",
    }
    for seed, digest in expected.items():
        generate_cohort(tmp_path / str(seed), 1, seed=seed, size="small", jobs=1, progress=False)
        assert _sha((tmp_path / str(seed) / "synth_00000.dcm").read_bytes()) == digest
    plain = render_instance(5, vendor="tamarind").dataset
    named = render_instance(5, vendor="tamarind", profile="default").dataset
    assert plain.PixelData == named.PixelData and plain.SOPInstanceUID == named.SOPInstanceUID
    for path in write_samples(tmp_path / "samples"):
        committed = pydicom.dcmread(REPO / "samples" / path.name).pixel_array
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, committed)


def test_a_plate_that_hides_the_femur_from_the_finder_is_still_metal(
    model: BundleScoringModel,
) -> None:
    options = cohort_item_options(9101, 53, sorted(VENDORS), ("cr_unshuttered",))
    image = render_instance(9101, index=53, size="small", **options)
    assert image.row["metal_right"] == "plate" and not image.row["metal_left"]
    decoded = decode_radiograph(image.dataset)
    masks, _ = find_femurs(image.dataset, decoded, model.finder)
    assert masks["right"] is None and masks["left"] is not None  # the finder misses it
    assert _outcome(model, image.dataset) == {"right": PROSTHESIS, "left": "scored"}
