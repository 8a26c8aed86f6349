"""Features that survive processing: ICC, the stability filter before selection, ROI
normalisation, and the same synthetic subject under several acquisition profiles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from triage_node.score.roi import RoiSettings
from triage_node.score.texture import (
    RANK,
    ZSCORE,
    TextureSettings,
    extract_selected_texture,
    rank_normal_in_mask,
    texture_feature_names,
)
from triage_node.train.presets import training_options
from triage_node.train.selection import SelectionSettings, select_features
from triage_node.train.stability import (
    Stability,
    feature_iccs,
    group_table,
    icc,
    measure_subject,
    render_subject,
    stable_features,
)

# Shrout and Fleiss (1979), Table 2: 6 targets rated by 4 judges. Their Table 4 gives
# ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=float,
)


def test_icc_matches_the_textbook_example() -> None:
    assert icc(SHROUT_FLEISS, "ICC(2,1)") == pytest.approx(0.29, abs=0.005)
    assert icc(SHROUT_FLEISS, "ICC(3,1)") == pytest.approx(0.71, abs=0.005)
    # a judge who adds a constant: consistency unchanged, absolute agreement lower
    shifted = SHROUT_FLEISS + np.array([0, 0, 0, 5.0])
    assert icc(shifted, "ICC(3,1)") == pytest.approx(icc(SHROUT_FLEISS, "ICC(3,1)"))
    assert icc(shifted, "ICC(2,1)") < icc(SHROUT_FLEISS, "ICC(2,1)")
    assert icc(np.tile([[1.0], [2.0], [3.0]], (1, 3))) == pytest.approx(1.0)
    assert np.isnan(icc(np.ones((5, 3))))
    with pytest.raises(ValueError, match="kind"):
        icc(SHROUT_FLEISS, "ICC(1,1)")


def test_feature_iccs_and_the_kept_list() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(40, 1))
    stable = truth + 0.1 * rng.normal(size=(40, 3))  # the same value under every profile
    unstable = rng.normal(size=(40, 3))  # what the profile did, not the subject
    values = np.stack([stable, unstable, np.ones((40, 3))], axis=2)
    values[3, 1, 0] = np.nan  # a hip missing under one profile: left out of that ICC
    iccs = feature_iccs(values, ["a", "b", "c"])
    assert iccs["a"] > 0.9 and iccs["b"] < 0.3 and np.isnan(iccs["c"])
    assert stable_features(iccs, 0.75) == ("a",)
    names = ["original_glcm_Contrast", "wavelet-HH_glcm_Contrast", "original_shape2D_Perimeter"]
    table = group_table(dict(zip(names, [0.8, 0.2, 0.9], strict=True)), 0.75)
    assert table == {"original": 2, "wavelet-HH": 0, "glcm": 1, "shape2D": 1, "all": 2}


def _texture_cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The label is carried best by glcm_Contrast, less well by glrlm_RunEntropy."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    bases = ["original_glcm_Contrast", "original_glrlm_RunEntropy"]
    names = [f"{side}:{b}" for side in ("left", "right") for b in bases]
    X = rng.normal(size=(n, len(names)))
    for j, name in enumerate(names):
        X[:, j] += (2.0 if "Contrast" in name else 0.8) * y
    return X, y, names


@pytest.mark.parametrize("cost_aware", [True, False])
def test_selection_drops_an_unstable_feature(cost_aware: bool) -> None:
    X, y, names = _texture_cohort(400, seed=3)
    plain = select_features(X, y, names, "T", SelectionSettings(cost_aware=cost_aware))
    assert "left:original_glcm_Contrast" in plain
    settings = SelectionSettings(
        cost_aware=cost_aware, stable_texture=("original_glrlm_RunEntropy",)
    )
    filtered = select_features(X, y, names, "T", settings)
    assert filtered and all("RunEntropy" in n for n in filtered)
    # nothing stable: the variant has no texture at all
    none = select_features(X, y, names, "T", SelectionSettings(stable_texture=()))
    assert none == []


def _roi(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A trabecular-like texture (smoothed noise on a gradient) inside an elliptical mask."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64]
    image = 800 + 4 * cols + 300 * ndimage.gaussian_filter(rng.normal(size=(64, 64)), 1.5)
    mask = ((rows - 32) / 28) ** 2 + ((cols - 30) / 20) ** 2 < 1
    return image, mask.astype(np.uint8)


def test_rank_normalisation_survives_a_contrast_change_that_zscore_does_not() -> None:
    """A site's gamma and range compression (a monotone, non-linear contrast change)."""
    image, mask = _roi()
    lo, hi = image.min(), image.max()
    processed = 4000 * ((image - lo) / (hi - lo)) ** 0.5 + 100  # gamma 0.5, new range
    names = [n for n in texture_feature_names() if n.startswith("original_") and "shape" not in n]

    def change(normalisation: str) -> float:
        settings = TextureSettings(normalisation=normalisation)
        before = extract_selected_texture(image, mask, names, settings)
        after = extract_selected_texture(processed, mask, names, settings)
        rel = [abs(after[n] - before[n]) / max(abs(before[n]), 1e-6) for n in names]
        return float(np.median(rel))

    on, off = change(RANK), change(ZSCORE)
    assert off > 0.01  # the z-score does not undo a non-linear contrast change
    assert on < 1e-6 < off
    r = rank_normal_in_mask(image, mask)
    inside = mask.astype(bool)
    assert abs(r[inside].mean()) < 1e-9 and r[inside].std() == pytest.approx(1.0, abs=0.05)
    assert (r[~inside] == 0).all()


def test_bundles_record_the_normalisation_and_old_ones_mean_zscore() -> None:
    old = {"original_bin_width": 0.2, "wavelet_bin_width": 0.1, "spacing_mm": [0.5, 0.5]}
    assert TextureSettings.from_json(old) == TextureSettings()
    assert TextureSettings().to_json() == old  # the default writes what it always wrote
    rank = TextureSettings(normalisation=RANK)
    assert rank.to_json()["normalisation"] == RANK
    assert TextureSettings.from_json(rank.to_json()) == rank
    with pytest.raises(ValueError, match="normalisation"):
        TextureSettings(normalisation="minmax")


def test_stability_file_round_trip_and_its_normalisation_must_match(tmp_path) -> None:
    stability = Stability(
        kept=("original_glcm_Contrast",),
        threshold=0.75,
        kind="ICC(2,1)",
        normalisation=RANK,
        profiles=("cr_unshuttered", "dx_clipped"),
        subjects=2,
        hips=4,
        seed=1,
        icc={"original_glcm_Contrast": 0.9, "original_glcm_Idm": float("nan")},
    )
    path = tmp_path / "stability.json"
    path.write_text(json.dumps(stability.to_json()))
    back = Stability.load(path)
    assert back.kept == stability.kept and np.isnan(back.icc["original_glcm_Idm"])
    assert "icc" not in back.record() and back.record()["threshold"] == 0.75
    with pytest.raises(ValueError, match="normalisation"):
        training_options(texture_stability=stability)  # zscore training, rank stability
    options = training_options(
        texture=TextureSettings(normalisation=RANK), texture_stability=stability
    )
    assert options.texture_stability is stability
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a texture stability file"):
        Stability.load(tmp_path / "bad.json")


def test_a_profile_left_out_recomputes_the_iccs_from_the_raw_values(tmp_path) -> None:
    names = texture_feature_names()
    rng = np.random.default_rng(0)
    hips = rng.normal(size=(40, 1, len(names)))
    values = np.repeat(hips, 3, axis=1) + 0.05 * rng.normal(size=(40, 3, len(names)))
    values[:, 0, :300] += 3.0 * rng.normal(size=(40, 300))  # the CR moves 300 features
    iccs = feature_iccs(values, names)
    profiles = ("cr_unshuttered", "dx_clipped", "compressed")
    stability = Stability(
        stable_features(iccs), 0.75, "ICC(2,1)", RANK, profiles, 20, 40, 1, iccs, values
    )
    assert len(stability.kept) == len(names) - 300
    path = stability.write(tmp_path / "stability.json", values)
    loaded = Stability.load(path)
    assert loaded.values is not None and loaded.values.shape == values.shape
    without = loaded.without("cr_unshuttered")
    assert without.profiles == ("dx_clipped", "compressed")
    assert without.kept == tuple(names)  # without the CR every feature agrees
    assert without.record()["profiles"] == ["dx_clipped", "compressed"]
    assert loaded.without("metal") is loaded  # not measured: nothing to leave out
    with pytest.raises(ValueError, match="fewer than 2"):
        without.without("dx_clipped")
    (tmp_path / "stability.values.npz").unlink()  # a file without its raw values
    with pytest.raises(ValueError, match="cannot be left out"):
        Stability.load(path).without("cr_unshuttered")


def test_the_same_subject_under_several_profiles() -> None:
    rows = [render_subject(20250101, 3, p).row for p in ("default", "cr_unshuttered", "compressed")]
    for key in ("patient_id", "age", "sex", "weight", "t_score", "density_left", "label"):
        assert len({r[key] for r in rows}) == 1, key
    assert len({r["vendor"] for r in rows}) == 3  # rendered by three different vendors
    other = render_subject(20250101, 4, "default").row
    assert other["patient_id"] != rows[0]["patient_id"]
    # both hips of that subject measured under two profiles, on its true femur masks
    values = measure_subject(
        20250101, 3, ("cr_unshuttered", "dx_clipped"), [TextureSettings()], RoiSettings()
    )
    assert values is not None and values[0].shape == (2, 2, 325)
    shape = texture_feature_names().index("original_shape2D_Perimeter")
    first = texture_feature_names().index("original_firstorder_Entropy")
    perimeter = values[0][:, :, shape]  # the same femur: about the same outline
    assert perimeter[:, 1] == pytest.approx(perimeter[:, 0], rel=0.1)
    assert np.isfinite(values[0][:, :, first]).all()
