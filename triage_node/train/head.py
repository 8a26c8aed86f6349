"""Training the head: scaler + L2 logistic regression with minority oversampling, calibration,
and the operating point for a target sensitivity.

Equivalence with the paper's head (dropout, linear layer, softmax, oversampling):
see :mod:`triage_node.score.head`. ``C`` is sklearn's inverse L2 strength and
plays the role of the dropout rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.preprocessing import StandardScaler

from triage_node.assessment import ImageAssessment, Side, SideAssessment, is_positive
from triage_node.score.head import Calibration, LinearHead
from triage_node.score.manifest import OperatingPoint
from triage_node.train.deep import oversample_minority


@dataclass(frozen=True)
class HeadSettings:
    """``C``: inverse L2 strength; ``oversample``: balance classes by repetition; ``seed``."""

    C: float = 1.0
    oversample: bool = True
    seed: int = 0


def fit_head(
    X: np.ndarray, y: np.ndarray, names: Sequence[str], settings: HeadSettings | None = None
) -> LinearHead:
    """Fit scaler and logistic regression on raw features ``X`` (N, F) and 0/1 labels ``y``.

    NaNs are imputed with the column median of the training rows (stored in
    the head). The returned head has no calibration yet (see :func:`calibrate`).
    """
    settings = settings or HeadSettings()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if X.shape != (len(y), len(names)):
        raise ValueError(f"X shape {X.shape} does not match {len(y)} labels x {len(names)} names")
    impute = np.nanmedian(X, axis=0)
    impute = np.where(np.isfinite(impute), impute, 0.0)
    X = np.where(np.isnan(X), impute, X)
    scaler = StandardScaler().fit(X)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    scaled = (X - scaler.mean_) / scale
    index = (
        oversample_minority(y, np.random.default_rng(settings.seed))
        if settings.oversample
        else np.arange(len(y))
    )
    model = LogisticRegression(C=settings.C, max_iter=2000)
    model.fit(scaled[index], y[index])
    return LinearHead(
        feature_names=tuple(names),
        coef=model.coef_[0],
        intercept=float(model.intercept_[0]),
        scaler_mean=scaler.mean_,
        scaler_scale=scale,
        impute=impute,
    )


def calibrate(
    head: LinearHead, X_val: np.ndarray, y_val: np.ndarray, kind: str = "platt"
) -> LinearHead:
    """Fit a calibration map on validation data and return the head with it.

    ``platt``: 1-D logistic regression on the head's logit (no oversampling,
    so probabilities reflect the validation prevalence); a non-positive slope
    (validation disagrees with training) is replaced by slope 1 with a fitted
    offset, so calibration never inverts the ranking. ``isotonic``:
    sklearn ``IsotonicRegression`` on the raw probability, stored as its
    breakpoints.
    """
    logit = head.logit(X_val)
    y_val = np.asarray(y_val).astype(int)
    if kind == "platt":
        return head.with_calibration(fit_platt(logit, y_val))
    if kind == "isotonic":
        raw = 1.0 / (1.0 + np.exp(-logit))
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y_val)
        return head.with_calibration(
            Calibration(
                "isotonic",
                x=tuple(float(v) for v in iso.X_thresholds_),
                y=tuple(float(v) for v in iso.y_thresholds_),
            )
        )
    if kind == "none":
        return head.with_calibration(Calibration())
    raise ValueError(f"calibration kind: {kind!r} is not platt, isotonic or none")


def fit_platt(logit: np.ndarray, y: np.ndarray) -> Calibration:
    """Platt calibration ``sigmoid(a * logit + b)`` fitted on raw logits and 0/1 labels.

    1-D logistic regression, unpenalised in effect and without oversampling, so the
    probabilities reflect the prevalence of ``y``; a non-positive slope is replaced
    by slope 1 with a fitted offset, so calibration never inverts the ranking.
    """
    logit = np.asarray(logit, dtype=np.float64)
    y = np.asarray(y).astype(int)
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit[:, None], y)
    slope, offset = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if slope <= 0:
        # A small validation set can make the fitted slope negative, which would invert
        # the ranking the head learned. Keep slope 1 and fit only the offset instead.
        slope, offset = 1.0, _fit_offset(logit, y)
    return Calibration("platt", params=(slope, offset))


def _fit_offset(logit: np.ndarray, y: np.ndarray) -> float:
    """The b minimising the log-loss of sigmoid(logit + b) on labels y."""

    def loss(b: float) -> float:
        z = logit + b
        return float(-(y * log_expit(z) + (1 - y) * log_expit(-z)).sum())

    return float(minimize_scalar(loss, bounds=(-50.0, 50.0), method="bounded").x)


def image_values(
    per_side: Mapping[Side, np.ndarray], assessed: Sequence[Sequence[Side]]
) -> np.ndarray:
    """Each case's image value as the node computes it, for choosing the operating point on it.

    ``per_side[side][k]``: case ``k``'s probability with that hip in both slots of the
    head; ``assessed[k]``: its assessable sides (at least one). The value is
    :attr:`~triage_node.assessment.ImageAssessment.probability` (the highest assessed side,
    docs/model.md "The decision rule"), taken from there so that the rule is defined once.
    """
    values = []
    for k, sides in enumerate(assessed):
        assessment = ImageAssessment(
            sides=tuple(SideAssessment(s, float(per_side[s][k])) for s in sides),
            model_name="",
            model_version="",
            threshold=0.0,
            synthetic_model=False,
        )
        if assessment.probability is None:
            raise ValueError(f"case {k}: no assessable side")
        values.append(assessment.probability)
    return np.asarray(values, dtype=np.float64)


def choose_operating_point(
    y_val: np.ndarray, p_val: np.ndarray, target_sensitivity: float = 0.90
) -> OperatingPoint:
    """The highest threshold on ``p_val`` whose validation sensitivity is >= the target.

    A case is positive when ``is_positive(p, threshold)`` (``p >= threshold``).
    Returns the threshold with the sensitivity and specificity it achieves on
    the validation data.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity: {target_sensitivity} not in (0, 1]")
    y_val = np.asarray(y_val).astype(int)
    p_val = np.asarray(p_val, dtype=np.float64)
    if y_val.min() == y_val.max():
        raise ValueError("y_val: both classes are needed to choose an operating point")
    fpr, tpr, thresholds = roc_curve(y_val, p_val, drop_intermediate=False)
    # roc_curve's thresholds decrease; the first reaching the target is the highest.
    i = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    threshold = float(min(thresholds[i], 1.0))
    predicted = is_positive(p_val, threshold)
    sensitivity = float(predicted[y_val == 1].mean())
    specificity = float((~predicted[y_val == 0]).mean())
    return OperatingPoint(
        threshold=threshold,
        target_sensitivity=float(target_sensitivity),
        validation_sensitivity=sensitivity,
        validation_specificity=specificity,
    )
