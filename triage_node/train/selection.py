"""Feature selection: LASSO per feature group as in the paper, texture chosen by its cost first.

Feature names carry their group and side:

* ``clinical:<name>`` (age, sex, weight) -- clinical, never selected away
  (the paper keeps all three);
* ``<side>:deep_NNN`` -- deep (Siamese pooled features);
* ``<side>:<pyradiomics name>`` -- texture.

Each image-feature group in a variant is selected with LassoCV (5 folds) on
standard-scaled columns and ``SelectFromModel`` with a small threshold, like the
paper's code. With ``bilateral=True`` LASSO runs on each side's columns
separately and only base names chosen on *both* sides are kept (both sides'
columns of them). Columns that do not vary on the training rows (e.g. the mean
of the z-scored ROI, 0 by construction) are never selected.

Texture is chosen by cost before LASSO (:func:`texture_groups_by_cost`): what
pyradiomics pays for is each (image type, feature class) group's matrices, not
the features read from them, so selecting features inside all groups saves little
at inference. A greedy forward pass over the groups adds, at each step, the
group with the largest gain in cross-validated AUC (on the training rows, with the
variant's other selected features) per second of estimated extraction time
(:func:`triage_node.score.texture.texture_cost`), while the gain is at least
``min_gain`` and the total cost stays within ``texture_budget`` of the full set.
The first group is kept whatever its gain and cost (a variant named for texture
uses some). LASSO then selects inside the kept groups.

Before both, with ``stable_texture`` set (``train --texture-stability FILE``,
:mod:`triage_node.train.stability`), texture columns whose base name is not in
it are dropped: only features reproducible across acquisition profiles are
candidates.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_selection import SelectFromModel, f_classif
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LassoCV, LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from triage_node.score.manifest import VARIANTS
from triage_node.score.texture import (
    TextureGroup,
    all_texture_groups,
    texture_cost,
    texture_group,
)

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
    """``folds`` of LassoCV and of the group pass, ``threshold`` on |coef|, ``seed`` for
    the folds; texture groups (see module doc): ``cost_aware`` (False: LASSO on all 325
    features per side, as before), ``texture_budget`` (largest estimated cost as a
    fraction of the full set's), ``min_gain`` (smallest cross-validated AUC gain for
    which a group is added); ``stable_texture``: the texture base names allowed as
    candidates (None: all; see module doc)."""

    folds: int = 5
    threshold: float = DEFAULT_THRESHOLD
    bilateral: bool = False
    seed: int = 0
    cost_aware: bool = True
    texture_budget: float = 0.25
    min_gain: float = 0.002
    stable_texture: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.texture_budget <= 1.0:
            raise ValueError(f"texture_budget: {self.texture_budget} not in (0, 1]")
        if self.min_gain < 0:
            raise ValueError(f"min_gain: {self.min_gain} must be >= 0")


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


def _varying(X: np.ndarray) -> np.ndarray:
    """Columns whose finite values vary more than float rounding on these rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        spread = np.nanmax(X, axis=0) - np.nanmin(X, axis=0)
        size = np.nanmax(np.abs(X), axis=0)
    return np.isfinite(spread) & (spread > 1e-9 * np.maximum(np.nan_to_num(size), 1.0))


def _lasso_select(
    X: np.ndarray, y: np.ndarray, names: Sequence[str], settings: SelectionSettings
) -> list[str]:
    varying = _varying(X)
    if not varying.any():
        return []
    picked = _lasso_select_varying(X[:, varying], y, settings)
    kept = iter(picked)
    return [n for n, v in zip(names, varying, strict=True) if v and next(kept)]


def _lasso_select_varying(X: np.ndarray, y: np.ndarray, settings: SelectionSettings) -> np.ndarray:
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
    return np.asarray(keep, dtype=bool)


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
    # texture last: its groups are chosen for what they add to the variant's other features
    for group in sorted(VARIANTS[variant], key=lambda g: g == "texture"):
        columns = [i for i, n in enumerate(names) if feature_group(n) == group]
        if group == "texture" and settings.stable_texture is not None:
            stable = set(settings.stable_texture)
            columns = [i for i in columns if _base(names[i]) in stable]
        if group == "texture" and settings.cost_aware:
            others = [i for i, n in enumerate(names) if n in chosen]
            kept = texture_groups_by_cost(X, y, names, columns, others, settings).groups
            columns = [i for i in columns if texture_group(_base(names[i])) in kept]
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


def _base(name: str) -> str:
    return name.partition(":")[2]


@dataclass(frozen=True)
class GroupStep:
    """One step of the group pass: the group added, its CV AUC gain and estimated cost."""

    group: TextureGroup
    auc: float
    gain: float
    cost: float


@dataclass(frozen=True)
class GroupChoice:
    """The texture groups the greedy pass kept (in the order added) and its steps."""

    groups: tuple[TextureGroup, ...]
    steps: tuple[GroupStep, ...]
    base_auc: float
    cost_fraction: float


def cv_auc(X: np.ndarray, y: np.ndarray, settings: SelectionSettings) -> float:
    """Cross-validated AUC of the head's kind of model (median imputation, scaling, L2
    logistic regression) on the training rows; 0.5 without columns."""
    if X.shape[1] == 0:
        return 0.5
    model = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=2000),
    )
    folds = StratifiedKFold(settings.folds, shuffle=True, random_state=settings.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return float(cross_val_score(model, X, y, cv=folds, scoring="roc_auc").mean())


def texture_groups_by_cost(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    texture_columns: Sequence[int],
    other_columns: Sequence[int],
    settings: SelectionSettings,
) -> GroupChoice:
    """The greedy, cost-aware pass over texture groups (see module doc).

    ``texture_columns``: the candidate texture columns of ``names`` (both sides);
    ``other_columns``: the variant's features already selected (clinical, deep),
    which every candidate set is evaluated with.
    """
    by_group: dict[TextureGroup, list[int]] = {}
    for i in texture_columns:
        by_group.setdefault(texture_group(_base(names[i])), []).append(i)
    y = np.asarray(y).astype(int)
    full = texture_cost(all_texture_groups())
    base = list(other_columns)
    kept: list[TextureGroup] = []
    steps: list[GroupStep] = []
    current = base_auc = cv_auc(X[:, base], y, settings)
    while True:
        best: tuple[float, GroupStep] | None = None
        cost_now = texture_cost(kept)
        for group, columns in by_group.items():
            if group in kept:
                continue
            cost = texture_cost([*kept, group])
            if kept and cost > settings.texture_budget * full:
                continue  # (the first group is kept whatever it costs)
            used = base + [i for g in kept for i in by_group[g]] + columns
            auc = cv_auc(X[:, used], y, settings)
            step = GroupStep(group, auc, auc - current, cost)
            if step.gain < settings.min_gain and kept:
                continue
            # gain per second; the first group is kept even without a gain (then: the best)
            value = step.gain / max(cost - cost_now, 1e-9) if step.gain > 0 else step.gain - 1e9
            if best is None or value > best[0]:
                best = (value, step)
        if best is None:
            break
        kept.append(best[1].group)
        steps.append(best[1])
        current = best[1].auc
    return GroupChoice(tuple(kept), tuple(steps), base_auc, texture_cost(kept) / full)
