"""The classifier head at inference: scaled selected features -> calibrated probability.

The paper's head is dropout + one linear layer + softmax over two classes on
standard-scaled inputs. Softmax over two logits ``z0, z1`` is
``sigmoid(z1 - z0)``, so the layer is a logistic regression with
``coef = w1 - w0`` and ``intercept = b1 - b0``; dropout on the inputs acts as
an adaptive L2 penalty (Wager et al., NeurIPS 2013), which the trainer uses
instead (``train/head.py``). The head is stored as plain numbers in JSON --
coefficients, intercept, scaler mean/scale, feature names, imputation values
and the calibration map -- so inference needs neither sklearn nor pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import expit

CALIBRATIONS = ("none", "platt", "isotonic")


@dataclass(frozen=True)
class Calibration:
    """Map from the head's raw logit to a calibrated probability.

    ``platt``: ``sigmoid(a * logit + b)`` (``params = [a, b]``). ``isotonic``:
    piecewise-linear through ``(x, y)`` points of the raw *probability*
    (``x`` increasing, ``y`` in [0, 1]). ``none``: ``sigmoid(logit)``.
    """

    kind: str = "none"
    params: tuple[float, ...] = ()
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CALIBRATIONS:
            raise ValueError(f"calibration kind: {self.kind!r} is not one of {CALIBRATIONS}")
        if self.kind == "platt" and len(self.params) != 2:
            raise ValueError(f"platt calibration needs params [a, b], got {self.params}")
        if self.kind == "isotonic":
            if len(self.x) < 2 or len(self.x) != len(self.y) or np.any(np.diff(self.x) < 0):
                raise ValueError("isotonic calibration needs >= 2 increasing x with matching y")

    def apply(self, logit: np.ndarray) -> np.ndarray:
        """Calibrated probability for raw logits (same shape)."""
        logit = np.asarray(logit, dtype=np.float64)
        if self.kind == "platt":
            return expit(self.params[0] * logit + self.params[1])
        if self.kind == "isotonic":
            return np.clip(np.interp(expit(logit), self.x, self.y), 0.0, 1.0)
        return expit(logit)


@dataclass(frozen=True)
class LinearHead:
    """A trained head: ``p = calibration(coef . (x - mean) / scale + intercept)``.

    ``feature_names`` gives the input order; ``impute`` the value used for a
    missing (NaN) raw feature, usually the training median.
    """

    feature_names: tuple[str, ...]
    coef: np.ndarray
    intercept: float
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    impute: np.ndarray
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        n = len(self.feature_names)
        for name in ("coef", "scaler_mean", "scaler_scale", "impute"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (n,):
                raise ValueError(f"head {name}: shape {value.shape}, expected ({n},)")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"head {name}: contains NaN or inf")
            object.__setattr__(self, name, value)
        if np.any(self.scaler_scale <= 0):
            raise ValueError("head scaler_scale: must be > 0")
        if not np.isfinite(self.intercept):
            raise ValueError("head intercept: not finite")

    def prepare(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Impute NaNs and scale; returns (scaled X, mask of imputed cells)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"X has {X.shape[1]} columns, the head takes {len(self.feature_names)}"
            )
        missing = np.isnan(X)
        X = np.where(missing, self.impute, X)
        return (X - self.scaler_mean) / self.scaler_scale, missing

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Raw (uncalibrated) log-odds of osteoporosis for rows of raw features."""
        scaled, _ = self.prepare(X)
        return scaled @ self.coef + self.intercept

    def probability(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability of osteoporosis for rows of raw features."""
        return self.calibration.apply(self.logit(X))

    def with_calibration(self, calibration: Calibration) -> LinearHead:
        """A copy with another calibration map."""
        return LinearHead(
            self.feature_names,
            self.coef,
            self.intercept,
            self.scaler_mean,
            self.scaler_scale,
            self.impute,
            calibration,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (lists of floats) for ``head.json`` in a bundle."""
        return {
            "feature_names": list(self.feature_names),
            "coef": self.coef.tolist(),
            "intercept": float(self.intercept),
            "scaler_mean": self.scaler_mean.tolist(),
            "scaler_scale": self.scaler_scale.tolist(),
            "impute": self.impute.tolist(),
            "calibration": {
                "kind": self.calibration.kind,
                "params": list(self.calibration.params),
                "x": list(self.calibration.x),
                "y": list(self.calibration.y),
            },
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "head.json") -> LinearHead:
        """Rebuild from :meth:`to_json` output; ``ValueError`` naming ``source`` on bad input."""
        try:
            cal = data["calibration"]
            return cls(
                feature_names=tuple(str(n) for n in data["feature_names"]),
                coef=np.asarray(data["coef"], dtype=np.float64),
                intercept=float(data["intercept"]),
                scaler_mean=np.asarray(data["scaler_mean"], dtype=np.float64),
                scaler_scale=np.asarray(data["scaler_scale"], dtype=np.float64),
                impute=np.asarray(data["impute"], dtype=np.float64),
                calibration=Calibration(
                    kind=str(cal["kind"]),
                    params=tuple(float(v) for v in cal["params"]),
                    x=tuple(float(v) for v in cal["x"]),
                    y=tuple(float(v) for v in cal["y"]),
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a valid head: {exc!r}") from None
