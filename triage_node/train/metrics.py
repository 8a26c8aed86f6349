"""Diagnostic-accuracy statistics: AUC with DeLong CI, DeLong test, Wilson CIs at a threshold.

DeLong's variance uses the fast midrank algorithm of Sun & Xu (IEEE Signal
Processing Letters 2014, "Fast implementation of DeLong's algorithm for
comparing the areas under correlated receiver operating characteristic
curves"), the method pROC's ``roc.test`` uses. Labels are 0/1 with 1 =
osteoporosis; higher scores mean more likely positive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from triage_node.assessment import is_positive

Z_95 = float(stats.norm.ppf(0.975))


def _check(y: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    y = np.asarray(y).astype(int)
    if y.ndim != 1 or not set(np.unique(y)) <= {0, 1}:
        raise ValueError("y: must be a 1-D array of 0/1 labels")
    if y.min() == y.max():
        raise ValueError("y: both classes are needed for an ROC analysis")
    for s in scores:
        if np.shape(s) != y.shape:
            raise ValueError(f"scores shape {np.shape(s)} != labels shape {y.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("scores: contain NaN or inf")
    return y


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (K,) and DeLong covariance matrix (K, K) for K score vectors ``scores`` (K, N)."""
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    y = _check(y, *scores)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.apply_along_axis(stats.rankdata, 1, pos)
    ty = np.apply_along_axis(stats.rankdata, 1, neg)
    tz = np.apply_along_axis(stats.rankdata, 1, np.concatenate([pos, neg], axis=1))
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: share of negatives scored lower (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: share of positives scored higher
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


@dataclass(frozen=True)
class AucResult:
    """AUC with its DeLong standard error and 95% CI (clipped to [0, 1])."""

    auc: float
    se: float
    ci_low: float
    ci_high: float


def auc_with_ci(y: np.ndarray, scores: np.ndarray) -> AucResult:
    """AUC of ``scores`` for labels ``y`` with a DeLong 95% confidence interval."""
    aucs, cov = delong_covariance(y, np.asarray(scores, dtype=np.float64)[None])
    auc, se = float(aucs[0]), float(np.sqrt(max(cov[0, 0], 0.0)))
    return AucResult(auc, se, max(0.0, auc - Z_95 * se), min(1.0, auc + Z_95 * se))


@dataclass(frozen=True)
class DelongComparison:
    """DeLong's test for two correlated ROC curves on the same cases (two-sided)."""

    auc_a: float
    auc_b: float
    difference: float
    z: float
    p_value: float


def delong_test(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DelongComparison:
    """Compare the AUCs of two scores on the same cases; z = (AUC_a - AUC_b) / SE(diff)."""
    aucs, cov = delong_covariance(y, np.vstack([scores_a, scores_b]))
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        z, p = 0.0, 1.0
    else:
        z = diff / float(np.sqrt(var))
        p = float(2.0 * stats.norm.sf(abs(z)))
    return DelongComparison(float(aucs[0]), float(aucs[1]), diff, float(z), p)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    order = np.argsort(p_values)
    k = len(p_values)
    adjusted = np.empty(k)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class Proportion:
    """A proportion ``successes / total`` with its Wilson 95% interval."""

    value: float
    successes: int
    total: int
    ci_low: float
    ci_high: float


def wilson(successes: int, total: int) -> Proportion:
    """Wilson score 95% CI for a binomial proportion (scipy ``binomtest``)."""
    if total <= 0:
        raise ValueError(f"total: {total} must be > 0")
    ci = stats.binomtest(int(successes), int(total)).proportion_ci(0.95, method="wilson")
    return Proportion(successes / total, int(successes), int(total), float(ci.low), float(ci.high))


@dataclass(frozen=True)
class ThresholdMetrics:
    """Sensitivity, specificity and accuracy at ``threshold`` (decisions by ``is_positive``)."""

    threshold: float
    sensitivity: Proportion
    specificity: Proportion
    accuracy: Proportion

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def metrics_at_threshold(
    y: np.ndarray, probability: np.ndarray, threshold: float
) -> ThresholdMetrics:
    """Counts and Wilson CIs of the decisions ``is_positive(probability, threshold)``."""
    y = _check(y, np.asarray(probability, dtype=np.float64))
    called = is_positive(np.asarray(probability), threshold)
    tp = int((called & (y == 1)).sum())
    tn = int((~called & (y == 0)).sum())
    return ThresholdMetrics(
        threshold=float(threshold),
        sensitivity=wilson(tp, int((y == 1).sum())),
        specificity=wilson(tn, int((y == 0).sum())),
        accuracy=wilson(tp + tn, len(y)),
    )
