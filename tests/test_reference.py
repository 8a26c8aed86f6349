"""The bundle's validation reference: built from assessments, stored in a bundle, read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triage_node.assessment import ImageAssessment, ModelUnavailable, Side, SideAssessment
from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle, read_manifest, write_bundle
from triage_node.score.reference import REFERENCE_FILE, ValidationReference, read_reference


def _image(
    left: float | None, right: float | None, reason: str = "femur not found"
) -> ImageAssessment:
    def side(s: Side, p: float | None) -> SideAssessment:
        return SideAssessment(s, p, None if p is not None else reason)

    return ImageAssessment(
        sides=(side("right", right), side("left", left)),
        model_name="m",
        model_version="v",
        threshold=0.5,
        synthetic_model=True,
    )


def test_reference_counts_images_hips_and_values() -> None:
    images = [
        _image(0.9, 0.2),
        _image(0.1, None),
        _image(None, None, "prosthesis or metal in the hip"),
    ]
    ref = ValidationReference.from_assessments(images, threshold=0.5, source="three images")
    assert (ref.images, ref.scored, ref.positives, ref.sides) == (3, 2, 1, 6)
    assert ref.side_reasons == {"femur not found": 1, "prosthesis or metal in the hip": 2}
    assert ref.positive_rate == 0.5 and ref.not_assessable_rate == pytest.approx(1 / 3)
    assert ref.reason_rate("prosthesis or metal in the hip") == pytest.approx(2 / 6)
    assert ref.histogram[9] == 1 and ref.histogram[1] == 1  # values 0.9 and 0.1
    assert ValidationReference.from_json(json.loads(ref.dumps())) == ref


def test_expected_range_widens_with_few_images_and_excludes_a_jump() -> None:
    low_few, high_few = ValidationReference.expected_range(0.02, 10)
    low_many, high_many = ValidationReference.expected_range(0.02, 500)
    assert high_few - low_few > high_many - low_many
    assert high_many < 0.06  # 30 of 500 not assessable is out of range for a 2% reference
    assert low_many <= 0.02 <= high_many


def test_reference_travels_in_a_bundle_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    manifest = read_manifest(DEMO_BUNDLE_DIR)
    ref = ValidationReference.from_assessments([_image(0.7, 0.3)], 0.5, "one image")
    out = write_bundle(tmp_path / "b", manifest, {REFERENCE_FILE: ref.dumps().encode()})
    assert read_reference(load_bundle(out)) == ref
    bad = write_bundle(tmp_path / "bad", manifest, {REFERENCE_FILE: b'{"source": "x"}'})
    with pytest.raises(ModelUnavailable, match="reference.json"):
        read_reference(load_bundle(bad))
    none = write_bundle(tmp_path / "none", manifest, {"x.json": b"{}"})
    assert read_reference(load_bundle(none)) is None
