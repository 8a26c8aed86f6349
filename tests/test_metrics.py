"""Evaluation statistics (DeLong, Wilson) against independent computations and published values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from triage_node.score.manifest import VARIANTS
from triage_node.train.metrics import (
    auc_with_ci,
    delong_covariance,
    delong_test,
    holm_adjust,
    metrics_at_threshold,
    wilson,
)
from triage_node.train.report import VariantPredictions, write_report


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two correlated scores (b is a + noise, so weaker)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    a = 1.2 * y + rng.normal(size=n)
    b = a + 1.0 * rng.normal(size=n)
    return y, np.round(a, 1), np.round(b, 1)  # rounding makes ties


def _brute_force_delong(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """DeLong (1988) covariance from the pairwise kernel psi(x, y) = 1, 1/2, 0 (O(m n))."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return np.cov(v10) / pos.shape[1] + np.cov(v01) / neg.shape[1]


def test_auc_matches_sklearn_and_brute_force_delong() -> None:
    y, a, b = _scores(150, seed=0)
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    assert aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert aucs[1] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    np.testing.assert_allclose(cov, _brute_force_delong(y, np.vstack([a, b])), rtol=1e-10)


def test_delong_se_agrees_with_bootstrap() -> None:
    y, a, b = _scores(300, seed=1)
    rng = np.random.default_rng(2)
    boot_auc, boot_diff = [], []
    for _ in range(800):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        auc_a, auc_b = roc_auc_score(y[i], a[i]), roc_auc_score(y[i], b[i])
        boot_auc.append(auc_a)
        boot_diff.append(auc_a - auc_b)
    result = auc_with_ci(y, a)
    assert result.se == pytest.approx(np.std(boot_auc), rel=0.15)
    test = delong_test(y, a, b)
    assert abs(test.difference) / abs(test.z) == pytest.approx(np.std(boot_diff), rel=0.15)
    assert test.auc_a > test.auc_b and test.p_value < 0.05


def test_hanley_mcneil_worked_example() -> None:
    """Hanley & McNeil, Radiology 1982;143:29-36, Table 1: CT ratings 1-5, AUC 0.893, SE 0.032."""
    normal = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    abnormal = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))].astype(int)
    result = auc_with_ci(y, np.r_[normal, abnormal].astype(float))
    assert result.auc == pytest.approx(0.893, abs=5e-4)
    assert result.se == pytest.approx(0.032, abs=0.003)
    assert result.ci_low < 0.893 < result.ci_high <= 1.0


def test_delong_test_of_identical_scores() -> None:
    y, a, _ = _scores(80, seed=3)
    same = delong_test(y, a, a)
    assert same.z == 0.0 and same.p_value == 1.0


def test_wilson_and_threshold_metrics() -> None:
    # Wilson score interval for 8/10: 0.490-0.943 (Newcombe, Stat Med 1998, Table I).
    p = wilson(8, 10)
    assert (p.ci_low, p.ci_high) == (
        pytest.approx(0.4902, abs=1e-4),
        pytest.approx(0.9433, abs=1e-4),
    )
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    prob = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.2, 0.1, 0.1, 0.0])
    m = metrics_at_threshold(y, prob, 0.5)
    assert (m.sensitivity.successes, m.sensitivity.total) == (3, 4)
    assert (m.specificity.successes, m.specificity.total) == (5, 6)
    assert m.accuracy.value == pytest.approx(0.8)
    with pytest.raises(ValueError, match="both classes"):
        metrics_at_threshold(np.zeros(3), np.zeros(3), 0.5)


def test_holm() -> None:
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_report_files(tmp_path: Path) -> None:
    y, a, b = _scores(120, seed=4)
    rng = np.random.default_rng(5)
    predictions = []
    for k, variant in enumerate(VARIANTS):
        score = a + (0.2 * k) * rng.normal(size=len(y))
        prob = 1 / (1 + np.exp(-score))
        predictions.append(VariantPredictions(variant, y, prob, threshold=0.5))
    report = write_report(
        predictions, tmp_path / "report", {"source": "unit test"}, synthetic_model=True
    )
    out = tmp_path / "report"
    for name in ("roc.png", "calibration.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in data["rows"]] == list(VARIANTS)
    d_row = next(r for r in data["rows"] if r["variant"] == "D")
    assert d_row["vs_reference"] is None
    dtc = next(r for r in data["rows"] if r["variant"] == "DTC")
    assert 0 <= dtc["vs_reference_p_adjusted"] <= 1
    assert dtc["vs_reference_p_adjusted"] >= dtc["vs_reference"]["p_value"]
    text = (out / "report.md").read_text()
    assert "NOT FOR CLINICAL USE" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + 7
    assert report.rows[0].auc.auc == pytest.approx(roc_auc_score(y, predictions[0].probability))


def test_report_puts_the_bilateral_value_beside_the_decision_rule(tmp_path: Path) -> None:
    y, a, b = _scores(120, seed=6)
    image_value, bilateral = 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b))
    predictions = [
        VariantPredictions(
            variant, y, image_value, threshold=0.6, bilateral=bilateral, bilateral_threshold=0.4
        )
        for variant in VARIANTS
    ]
    report = write_report(predictions, tmp_path, {"source": "unit test"})
    row = json.loads((tmp_path / "report.json").read_text())["rows"][0]
    assert row["auc"]["auc"] == pytest.approx(roc_auc_score(y, image_value))
    assert row["bilateral"]["auc"]["auc"] == pytest.approx(roc_auc_score(y, bilateral))
    assert row["bilateral"]["at_threshold"]["threshold"] == 0.4  # its own operating point
    comparison = row["bilateral"]["vs_image_value"]
    assert comparison["difference"] == pytest.approx(
        roc_auc_score(y, image_value) - roc_auc_score(y, bilateral)
    )
    assert comparison["difference"] > 0 and 0 < comparison["p_value"] < 1  # b is a + noise
    text = (tmp_path / "report.md").read_text()
    assert "highest probability of the assessed sides" in text
    assert sum(line.startswith("| ") for line in text.splitlines()) == 2 * (1 + 7)
    assert f"| C | {report.rows[0].bilateral.auc.auc:.3f} " in text  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="bilateral lengths"):
        VariantPredictions("C", y, image_value, 0.5, bilateral=bilateral[:-1])
