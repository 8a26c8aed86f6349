"""Texture features: the paper's classes and wavelet bands, selected-only equals full."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from radiomics import featureextractor

from triage_node.score.texture import (
    all_texture_groups,
    extract_selected_texture,
    extract_texture,
    mirror_for_side,
    texture_cost,
    texture_feature_names,
    texture_group,
    texture_groups,
    wavelet_bands,
    zscore_in_mask,
)

SIZE = 64


def _roi(period: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stripe texture with noise inside an elliptical 'femur' mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    image = 1000 + 200 * np.sin(2 * np.pi * (cols + 0.3 * rows) / period)
    image += 40 * rng.normal(size=image.shape)
    mask = ((rows - 32) / 28) ** 2 + ((cols - 30) / 20) ** 2 < 1
    return image, mask.astype(np.uint8)


@pytest.fixture(scope="module")
def fine_features() -> dict[str, float]:
    image, mask = _roi(period=4)
    return extract_texture(image, mask)


def test_names_and_counts(fine_features: dict[str, float]) -> None:
    names = texture_feature_names()
    assert len(names) == 325 == len(set(names))
    assert list(fine_features) == list(names)
    per_type = Counter(name.split("_", 1)[0] for name in names)
    assert per_type == {"original": 88, "wavelet-LH": 79, "wavelet-HL": 79, "wavelet-HH": 79}
    classes = Counter(name.split("_")[1] for name in names if name.startswith("original_"))
    assert classes == {
        "firstorder": 18,
        "glcm": 24,
        "glszm": 16,
        "glrlm": 16,
        "ngtdm": 5,
        "shape2D": 9,
    }
    assert all(np.isfinite(v) for v in fine_features.values())


def test_intensities_are_z_scored(fine_features: dict[str, float]) -> None:
    assert fine_features["original_firstorder_Mean"] == pytest.approx(0.0, abs=1e-9)
    # Binning gives a meaningful number of grey levels (not the paper's single bin).
    assert fine_features["original_firstorder_Entropy"] > 3.0
    assert fine_features["wavelet-HH_firstorder_Entropy"] > 2.0
    # Scaling the raw intensities changes nothing after z-scoring.
    image, mask = _roi(period=4)
    names = ["original_glcm_Contrast", "wavelet-LH_glrlm_RunEntropy"]
    scaled = extract_selected_texture(3.0 * image + 77.0, mask, names)
    for name in names:
        assert scaled[name] == pytest.approx(fine_features[name], rel=1e-6)


def test_selected_only_equals_full(fine_features: dict[str, float]) -> None:
    image, mask = _roi(period=4)
    names = [
        "wavelet-HH_glszm_ZoneEntropy",
        "original_shape2D_Elongation",
        "original_glcm_Idmn",
        "wavelet-HL_ngtdm_Busyness",
        "original_firstorder_Kurtosis",
    ]
    selected = extract_selected_texture(image, mask, names)
    assert list(selected) == names
    for name in names:
        assert selected[name] == pytest.approx(fine_features[name], rel=1e-9, abs=1e-12)


def test_different_textures_give_different_features(fine_features: dict[str, float]) -> None:
    coarse = extract_texture(*_roi(period=14))
    for name in (
        "original_glcm_Contrast",
        "original_glrlm_RunLengthNonUniformityNormalized",
        "wavelet-LH_firstorder_Energy",
    ):
        assert coarse[name] != pytest.approx(fine_features[name], rel=0.05), name
    # Fine stripes have more local grey-level change than coarse ones.
    assert fine_features["original_glcm_Contrast"] > 2 * coarse["original_glcm_Contrast"]


def test_unknown_names_and_bad_masks_are_refused() -> None:
    image, mask = _roi(period=4)
    with pytest.raises(ValueError, match="wavelet-LL_glcm_Contrast"):
        extract_selected_texture(image, mask, ["wavelet-LL_glcm_Contrast"])
    with pytest.raises(ValueError, match="Nonsense"):
        extract_selected_texture(image, mask, ["original_glcm_Nonsense"])
    with pytest.raises(ValueError, match="shape"):
        extract_selected_texture(image, mask[:10], ["original_glcm_Contrast"])
    with pytest.raises(ValueError, match="constant"):
        zscore_in_mask(np.ones_like(image), mask)


def test_wavelet_bands_and_mirroring() -> None:
    image, _ = _roi(period=4)
    bands = wavelet_bands(image)
    assert set(bands) == {"LH", "HL", "HH"}
    assert all(b.shape == image.shape for b in bands.values())
    flipped = mirror_for_side(image, mirror=True)
    assert np.array_equal(flipped[:, 0], image[:, -1])
    assert mirror_for_side(image, mirror=False) is image


def test_texture_groups_and_their_cost() -> None:
    groups = all_texture_groups()
    assert len(groups) == 21 == len({texture_group(n) for n in texture_feature_names()})
    assert texture_group("wavelet-HH_glcm_Contrast") == ("wavelet-HH", "glcm")
    assert texture_groups(
        ["wavelet-HH_glcm_Contrast", "original_glcm_Idm", "original_glcm_Id"]
    ) == [
        ("original", "glcm"),
        ("wavelet-HH", "glcm"),
    ]
    with pytest.raises(ValueError, match="wavelet-LL"):
        texture_group("wavelet-LL_glcm_Contrast")
    full = texture_cost(groups)
    one = texture_cost([("original", "firstorder")])
    # every image type pays its set-up, a wavelet band its transform: one type is far cheaper
    assert 0 < one < texture_cost([("original", "firstorder"), ("wavelet-HH", "firstorder")])
    assert one < 0.3 * full
    assert texture_cost([]) == 0


def test_only_the_groups_asked_for_are_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference pays for the (image type, class) groups of the head's features, no others."""
    computed: list[tuple[str, ...]] = []
    execute = featureextractor.RadiomicsFeatureExtractor.execute

    def recording(self: featureextractor.RadiomicsFeatureExtractor, *args: object) -> object:
        computed.append(tuple(sorted(c for c, f in self.enabledFeatures.items() if f)))
        return execute(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(featureextractor.RadiomicsFeatureExtractor, "execute", recording)
    image, mask = _roi(period=4)
    bands: list[tuple[str, ...]] = []
    real_bands = wavelet_bands
    monkeypatch.setattr(
        "triage_node.score.texture.wavelet_bands",
        lambda z, wanted: bands.append(tuple(wanted)) or real_bands(z, wanted),
    )
    names = ["original_glcm_Contrast", "original_glcm_Idm", "wavelet-HH_firstorder_Mean"]
    values = extract_selected_texture(image, mask, names)
    assert list(values) == names
    # one pyradiomics run per image type, each with the classes asked for only
    assert sorted(computed) == [("firstorder",), ("glcm",)]
    assert bands == [("HH",)]  # one band resized, not three
    computed.clear()
    bands.clear()
    extract_selected_texture(image, mask, ["original_firstorder_Energy"])
    assert computed == [("firstorder",)] and bands == [()]
