"""Image -> per-side features: one implementation for inference and training, one error policy."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from tests.dicom_files import make_radiograph
from triage_node.score.decode import decode_radiograph
from triage_node.score.features import measure_hips
from triage_node.score.roi import RoiSettings
from triage_node.score.texture import TextureSettings, texture_feature_names
from triage_node.train.pipeline import CACHE_VERSION, Case, _feature_item

ROI = RoiSettings(spacing_mm=1.0, size_px=64, deep_factor=2)
TEXTURE = TextureSettings(spacing_mm=(1.0, 1.0))
NAMES = ["original_firstorder_Entropy", "original_glcm_Contrast"]


def _pelvis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 x 400 px at 0.4 mm: the patient's right hip (image left) on a flat half of the
    image, so its ROI has no contrast to measure; the left hip on a textured half."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:300, :400]
    image = 100 + 5 * rng.normal(size=rows.shape)
    right_hip = ((rows - 150) / 80) ** 2 + ((cols - 100) / 40) ** 2 < 1
    left_hip = ((rows - 150) / 80) ** 2 + ((cols - 300) / 40) ** 2 < 1
    image[left_hip] += 200
    image[:, :200] = 150.0
    return np.round(image).astype(np.uint16), right_hip, left_hip


def _write(tmp_path: Path) -> Case:
    pixels, right_hip, left_hip = _pelvis()
    ds = make_radiograph(rows=pixels.shape[0], columns=pixels.shape[1])
    ds.ImagerPixelSpacing = [0.4, 0.4]
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "hip.dcm"
    ds.save_as(path, enforce_file_format=True)
    masks = {}
    for side, mask in (("right", right_hip), ("left", left_hip)):
        masks[side] = tmp_path / f"hip_femur_{side[0].upper()}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks[side])
    return Case(path, 1, masks, "p1")  # type: ignore[arg-type]


def test_a_hip_without_measurable_texture_stays_assessable(tmp_path: Path) -> None:
    case = _write(tmp_path)
    decoded = decode_radiograph(pydicom.dcmread(case.path))
    _, right_hip, left_hip = _pelvis()
    hips = measure_hips(decoded, {"right": right_hip, "left": left_hip}, {}, ROI, TEXTURE, NAMES)
    assert set(hips.rois) == {"right", "left"} and hips.not_assessable == {}
    assert hips.texture["right"] == {}  # nothing to measure: imputed by the head
    assert set(hips.texture["left"]) == set(NAMES)
    assert len(hips.warnings) == 1 and hips.warnings[0].startswith("right hip texture not computed")
    assert np.isnan(hips.texture_vector("right", NAMES)).all()
    assert np.isfinite(hips.texture_vector("left", NAMES)).all()
    for side in ("right", "left"):  # the CNN's input, as the network sees it
        assert hips.deep_input[side].dtype == np.float32
        assert hips.deep_input[side].shape == (ROI.deep_size_px, ROI.deep_size_px)


def test_training_features_follow_the_inference_policy(tmp_path: Path) -> None:
    case = _write(tmp_path)
    key = json.dumps(
        {"texture": asdict(TEXTURE), "roi": ROI.to_json(), "version": CACHE_VERSION, "finder": ""},
        sort_keys=True,
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    item = _feature_item((case, key, cache))
    assert bool(item["ok_right"]) and bool(item["ok_left"])  # as at inference: not dropped
    assert item["texture_right"].shape == (len(texture_feature_names()),)
    assert np.isnan(item["texture_right"]).all() and np.isfinite(item["texture_left"]).any()
    assert item["deep_input_left"].dtype == np.float32  # no float16 copy of the CNN input
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1
    again = _feature_item((case, key, cache))  # from the cache: the same arrays
    assert set(again) == set(item)
    for name, value in item.items():
        np.testing.assert_array_equal(again[name], value)
