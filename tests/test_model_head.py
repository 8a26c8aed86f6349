"""Selection (LASSO, bilateral, seven variants) and the head (fit, calibrate, operating point)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from triage_node.score.head import Calibration, LinearHead
from triage_node.score.manifest import VARIANTS
from triage_node.score.texture import texture_cost, texture_group
from triage_node.train.head import HeadSettings, calibrate, choose_operating_point, fit_head
from triage_node.train.selection import (
    SelectionSettings,
    columns_for_variant,
    feature_group,
    lasso_select,
    select_features,
    texture_groups_by_cost,
)

NAMES = (
    ["clinical:age", "clinical:sex", "clinical:weight"]
    + [f"{side}:deep_{i:03d}" for side in ("left", "right") for i in range(6)]
    + [f"{side}:original_glcm_{f}" for side in ("left", "right") for f in ("A", "B", "C", "D")]
)


def _cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of NAMES; label depends on age, deep_001 (both sides), glcm_B (left side only)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(NAMES)))
    col = {name: i for i, name in enumerate(NAMES)}
    risk = 2.0 * X[:, col["left:deep_001"]] + 2.0 * X[:, col["right:deep_001"]]
    risk += 1.5 * X[:, col["left:original_glcm_B"]] + 0.8 * X[:, col["clinical:age"]]
    y = (risk + rng.normal(size=n) > 1.5).astype(int)  # imbalanced, ~30% positive
    X[:, col["clinical:age"]] = 70 + 10 * X[:, col["clinical:age"]]  # raw units
    return X, y


def test_groups_and_variants() -> None:
    assert feature_group("clinical:age") == "clinical"
    assert feature_group("left:deep_003") == "deep"
    assert feature_group("right:wavelet-HH_glcm_Idmn") == "texture"
    with pytest.raises(ValueError, match="middle:deep_000"):
        feature_group("middle:deep_000")
    sizes = {v: len(columns_for_variant(v, NAMES)) for v in VARIANTS}
    assert sizes == {"C": 3, "T": 8, "TC": 11, "D": 12, "DC": 15, "DT": 20, "DTC": 23}
    with pytest.raises(ValueError, match="XYZ"):
        columns_for_variant("XYZ", NAMES)


def test_lasso_keeps_informative_features() -> None:
    X, y = _cohort(400, seed=0)
    picked = lasso_select(X[:, 3:], y, NAMES[3:])
    for name in ("left:deep_001", "right:deep_001", "left:original_glcm_B"):
        assert name in picked
    assert len(picked) < len(NAMES) - 3


def test_variant_and_bilateral_selection() -> None:
    X, y = _cohort(400, seed=0)
    dtc = select_features(X, y, NAMES, "DTC")
    assert dtc[:3] == ["clinical:age", "clinical:sex", "clinical:weight"]
    assert "left:original_glcm_B" in dtc
    d = select_features(X, y, NAMES, "D")
    assert d and all(feature_group(n) == "deep" for n in d)
    bilateral = select_features(X, y, NAMES, "DT", SelectionSettings(bilateral=True))
    assert {"left:deep_001", "right:deep_001"} <= set(bilateral)
    # glcm_B carries signal on the left only: the bilateral option drops it.
    assert "left:original_glcm_B" not in bilateral
    bases = {n.partition(":")[2] for n in bilateral}
    assert set(bilateral) == {f"{s}:{b}" for s in ("left", "right") for b in bases}


def test_empty_lasso_falls_back_to_best_single_feature() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4))
    y = (rng.random(60) < 0.5).astype(int)
    X[:, 2] += 0.3 * y
    assert len(lasso_select(X, y, ["a", "b", "c", "d"], SelectionSettings(threshold=1e9))) == 1


#: Six texture groups, four features each per side; see _texture_cohort.
GROUP_FEATURES = {
    ("original", "shape2D"): ["Elongation", "MajorAxisLength", "Perimeter", "Sphericity"],
    ("original", "glcm"): ["Contrast", "Idm", "Id", "JointEnergy"],
    ("wavelet-LH", "glszm"): [
        "ZoneEntropy",
        "ZonePercentage",
        "SizeZoneNonUniformity",
        "ZoneVariance",
    ],
    ("wavelet-HL", "glrlm"): ["RunEntropy", "RunPercentage", "RunVariance", "ShortRunEmphasis"],
    ("wavelet-HH", "firstorder"): ["Energy", "Entropy", "Kurtosis", "Skewness"],
    ("wavelet-HH", "ngtdm"): ["Busyness", "Coarseness", "Complexity", "Contrast"],
}
TEXTURE_NAMES = [
    f"{side}:{t}_{c}_{f}" for side in ("left", "right") for (t, c), fs in GROUP_FEATURES.items()
    for f in fs
]  # fmt: skip


def _texture_cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label from one density factor that several groups measure with noise: the cheapest
    (original/shape2D) as well as costlier wavelet groups; original/glcm does not measure
    it; one column is constant."""
    rng = np.random.default_rng(seed)
    density = rng.normal(size=n)
    y = (density + 0.5 * rng.normal(size=n) > 0.3).astype(int)
    X = rng.normal(size=(n, len(TEXTURE_NAMES)))
    for j, name in enumerate(TEXTURE_NAMES):
        carries = name.endswith(("_Perimeter", "_Energy", "_RunEntropy", "_ZoneEntropy"))
        X[:, j] += (1.5 if carries else 0) * density
    X[:, TEXTURE_NAMES.index("left:original_shape2D_Elongation")] = 3.0  # never varies
    return X, y


def test_cost_aware_selection_keeps_few_cheap_groups() -> None:
    X, y = _texture_cohort(500, seed=1)
    settings = SelectionSettings()
    choice = texture_groups_by_cost(X, y, TEXTURE_NAMES, range(len(TEXTURE_NAMES)), [], settings)
    assert choice.groups[0] == ("original", "shape2D")  # same signal, the cheapest group
    assert len(choice.groups) <= 2 and choice.cost_fraction <= settings.texture_budget
    assert choice.steps[0].auc > choice.base_auc == 0.5
    selected = select_features(X, y, TEXTURE_NAMES, "T", settings)
    groups = {texture_group(n.partition(":")[2]) for n in selected}
    assert groups <= set(choice.groups) and "left:original_shape2D_Perimeter" in selected
    assert "left:original_shape2D_Elongation" not in selected  # constant: never selected
    # without the cost, LASSO reads every group that carries the factor: inference pays for all
    plain = select_features(X, y, TEXTURE_NAMES, "T", SelectionSettings(cost_aware=False))
    plain_groups = {texture_group(n.partition(":")[2]) for n in plain}
    assert len(plain_groups) > len(groups)
    assert texture_cost(plain_groups) > texture_cost(groups)


def test_a_variant_with_texture_keeps_at_least_one_group() -> None:
    """Deep features that already explain the label: texture adds nothing, one group stays."""
    X, y = _texture_cohort(300, seed=2)
    deep = np.column_stack([X[:, TEXTURE_NAMES.index("left:original_shape2D_Perimeter")]] * 2)
    names = ["clinical:age", "left:deep_000", "right:deep_000", *TEXTURE_NAMES]
    rows = np.column_stack([np.random.default_rng(0).normal(size=len(y)), deep, X])
    selected = select_features(rows, y, names, "DTC", SelectionSettings(min_gain=0.05))
    texture = [n for n in selected if feature_group(n) == "texture"]
    assert texture and len({texture_group(n.partition(":")[2]) for n in texture}) == 1
    with pytest.raises(ValueError, match="texture_budget"):
        SelectionSettings(texture_budget=0)


def test_head_fit_round_trip_and_softmax_equivalence() -> None:
    X, y = _cohort(400, seed=0)
    cols = columns_for_variant("DTC", NAMES)
    head = fit_head(X[:, cols], y, [NAMES[i] for i in cols])
    X_val, y_val = _cohort(300, seed=1)
    p = head.probability(X_val[:, cols])
    order = np.argsort(p)
    assert y_val[order[-50:]].mean() > 0.8 and y_val[order[:50]].mean() < 0.1
    restored = LinearHead.from_json(json.loads(json.dumps(head.to_json())))
    np.testing.assert_array_equal(restored.probability(X_val[:, cols]), p)
    # The paper's layer: Linear(F, 2) + softmax with rows (0, coef) equals the sigmoid head.
    layer = torch.nn.Linear(len(cols), 2).double()
    with torch.no_grad():
        layer.weight[0] = 0.0
        layer.bias[0] = 0.0
        layer.weight[1] = torch.from_numpy(head.coef)
        layer.bias[1] = head.intercept
    scaled, _ = head.prepare(X_val[:, cols])
    softmax = torch.softmax(layer(torch.from_numpy(scaled)), dim=1)[:, 1].detach().numpy()
    np.testing.assert_allclose(softmax, p, rtol=1e-10)
    # Missing values are imputed with the training median, not propagated as NaN.
    row = X_val[:1, cols].copy()
    row[0, 0] = np.nan
    assert np.isfinite(head.probability(row)).all()
    with pytest.raises(ValueError, match="bad.json"):
        LinearHead.from_json({"coef": [1.0]}, source="bad.json")


def test_oversampling_and_calibration() -> None:
    X, y = _cohort(600, seed=0)
    X_val, y_val = _cohort(600, seed=1)
    balanced = fit_head(X, y, NAMES, HeadSettings(oversample=True))
    plain = fit_head(X, y, NAMES, HeadSettings(oversample=False))
    # Oversampling moves the log-odds towards the balanced prior: more calls at p >= 0.5.
    assert balanced.intercept > plain.intercept + 0.2
    assert (balanced.probability(X_val) >= 0.5).sum() > (plain.probability(X_val) >= 0.5).sum()
    platt = calibrate(balanced, X_val, y_val, "platt")
    assert platt.calibration.kind == "platt"
    assert platt.probability(X_val).mean() == pytest.approx(y_val.mean(), abs=0.02)
    iso = calibrate(balanced, X_val, y_val, "isotonic")
    p_iso = iso.probability(X_val)
    assert np.all(np.diff(p_iso[np.argsort(balanced.logit(X_val))]) >= -1e-12)
    restored = LinearHead.from_json(iso.to_json())
    np.testing.assert_array_equal(restored.probability(X_val), p_iso)
    with pytest.raises(ValueError, match="kind"):
        Calibration("beta")


def test_operating_point_meets_target_sensitivity() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(int)
    p = np.clip(0.35 + 0.25 * y + 0.2 * rng.normal(size=500), 0, 1)
    op = choose_operating_point(y, p, 0.90)
    assert op.validation_sensitivity >= 0.90
    assert 0 < op.validation_specificity < 1
    # Highest such threshold: the next larger score drops below target.
    higher = np.min(p[p > op.threshold])
    assert (p[y == 1] >= higher).mean() < 0.90
    strict = choose_operating_point(y, p, 0.99)
    assert strict.threshold <= op.threshold and strict.validation_sensitivity >= 0.99
    with pytest.raises(ValueError, match="both classes"):
        choose_operating_point(np.zeros(5), np.arange(5) / 5)
