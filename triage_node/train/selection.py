"""Feature selection as in the paper: LASSO per feature group, optional bilateral agreement.

Feature names carry their group and side:

* ``clinical:<name>`` (age, sex, weight) -- clinical, never selected away
  (the paper keeps all three);
* ``<side>:deep_NNN`` -- deep (Siamese pooled features);
* ``<side>:<pyradiomics name>`` -- texture.

Each image-feature group in a variant is selected on its own with LassoCV
(5 folds) on standard-scaled columns and ``SelectFromModel`` with a small
threshold, like the paper's code. With ``bilateral=True`` LASSO runs on each
side's columns separately and only base names chosen on *both* sides are kept
(both sides' columns of them).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectFromModel, f_classif
from sklearn.linear_model import LassoCV
from sklearn.preprocessing import StandardScaler

from triage_node.score.manifest import VARIANTS

CLINICAL_PREFIX = "clinical:"
SIDES = ("left", "right")
#: |coef| above which SelectFromModel keeps a feature (scaled inputs).
DEFAULT_THRESHOLD = 1e-5


def feature_group(name: str) -> str:
    """``"clinical"``, ``"deep"`` or ``"texture"`` for a feature name (see module doc)."""
    if name.startswith(CLINICAL_PREFIX):
        return "clinical"
    side, sep, base = name.partition(":")
    if not sep or side not in SIDES or not base:
        raise ValueError(f"feature name {name!r}: expected 'clinical:x' or '<left|right>:x'")
    return "deep" if base.startswith("deep_") else "texture"


def columns_for_variant(variant: str, names: Sequence[str]) -> list[int]:
    """Indices of ``names`` whose group the variant (``C`` ... ``DTC``) uses."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {sorted(VARIANTS)}")
    groups = VARIANTS[variant]
    return [i for i, name in enumerate(names) if feature_group(name) in groups]


@dataclass(frozen=True)
class SelectionSettings:
    """LASSO settings: ``folds`` of LassoCV, ``threshold`` on |coef|, ``seed`` for the folds."""

    folds: int = 5
    threshold: float = DEFAULT_THRESHOLD
    bilateral: bool = False
    seed: int = 0


def lasso_select(
    X: np.ndarray, y: np.ndarray, names: Sequence[str], settings: SelectionSettings | None = None
) -> list[str]:
    """Names of the columns LASSO keeps (LassoCV on scaled columns + SelectFromModel).

    When LASSO keeps nothing, the single column with the largest ANOVA F
    statistic is kept so every group contributes (recorded in the name list
    like any other selection).
    """
    settings = settings or SelectionSettings()
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] != len(names):
        raise ValueError(f"X has {X.shape[1]} columns but {len(names)} names")
    if X.shape[1] == 0:
        return []
    # The same group on the same rows is selected by up to four variants (T, TC, DT, DTC):
    # LassoCV is deterministic, so its answer is remembered (by content) instead of refitted.
    key = hashlib.sha256(
        np.ascontiguousarray(X).tobytes()
        + np.ascontiguousarray(y, dtype=np.float64).tobytes()
        + repr((list(names), settings)).encode()
    ).hexdigest()
    if key in _SELECTED:
        return list(_SELECTED[key])
    picked = _lasso_select(X, y, names, settings)
    if len(_SELECTED) > 64:
        _SELECTED.clear()
    _SELECTED[key] = tuple(picked)
    return picked


_SELECTED: dict[str, tuple[str, ...]] = {}


def _lasso_select(
    X: np.ndarray, y: np.ndarray, names: Sequence[str], settings: SelectionSettings
) -> list[str]:
    scaled = StandardScaler().fit_transform(X)
    scaled = np.nan_to_num(scaled)
    lasso = LassoCV(cv=settings.folds, random_state=settings.seed, max_iter=5000, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lasso.fit(scaled, np.asarray(y, dtype=np.float64))
    selector = SelectFromModel(lasso, threshold=settings.threshold, prefit=True)
    keep = selector.get_support()
    if not keep.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            f_stat, _ = f_classif(scaled, y)
        keep[int(np.nanargmax(np.nan_to_num(f_stat, nan=-1.0)))] = True
    return [name for name, k in zip(names, keep, strict=True) if k]


def select_features(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    variant: str,
    settings: SelectionSettings | None = None,
) -> list[str]:
    """The selected feature names of a variant, in the order of ``names``.

    Clinical columns are all kept; deep and texture groups are each selected
    with :func:`lasso_select` (or bilaterally, see module doc).
    """
    settings = settings or SelectionSettings()
    X = np.asarray(X, dtype=np.float64)
    names = list(names)
    chosen: set[str] = set()
    for group in VARIANTS[variant]:
        columns = [i for i, n in enumerate(names) if feature_group(n) == group]
        if group == "clinical":
            chosen.update(names[i] for i in columns)
        elif settings.bilateral:
            per_side = []
            for side in SIDES:
                side_cols = [i for i in columns if names[i].startswith(f"{side}:")]
                picked = lasso_select(X[:, side_cols], y, [names[i] for i in side_cols], settings)
                per_side.append({p.partition(":")[2] for p in picked})
            both = per_side[0] & per_side[1]
            chosen.update(f"{side}:{base}" for side in SIDES for base in both)
        else:
            chosen.update(lasso_select(X[:, columns], y, [names[i] for i in columns], settings))
    return [n for n in names if n in chosen]
