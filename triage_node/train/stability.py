"""Texture features that survive a site's processing: a reproducibility filter before selection.

The same synthetic subject (same ``--seed`` and index) is rendered under several
acquisition profiles (:data:`~triage_node.synth.sites.SITE_PROFILES`); each hip's
325 texture features are measured on every rendering, and a feature is kept for
selection only when its intraclass correlation across the profiles is at least
``threshold`` (0.75, the usual radiomics reproducibility cut-off).

The ICC is ICC(2,1) of Shrout and Fleiss (1979): two-way random effects, absolute
agreement, single measurement (McGraw and Wong's ICC(A,1)). Absolute agreement,
not consistency (ICC(3,1)), because a shift that a profile applies to every hip
is exactly what moves a head's probabilities at a new site; ICC(3,1) would not see it.

A subject renders the same under every profile only when its vendor does not come
from the subject's random stream: a profile with its own vendor (``cr_unshuttered``,
``dx_clipped``, ``shutter``, ``compressed``, ``grid_marker``) draws the subject from
the first numbers of ``(seed, index)``, and so does an explicit ``vendor``;
:func:`render_subject` passes one for the profiles without (``default``, ``metal``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from triage_node.assessment import Side
from triage_node.score.decode import decode_radiograph
from triage_node.score.features import measure_hips
from triage_node.score.femur_finder import SIDES
from triage_node.score.roi import RoiSettings
from triage_node.score.texture import TextureSettings, texture_feature_names
from triage_node.synth.instance import render_instance
from triage_node.synth.sites import SITE_PROFILES

ICC_KIND = "ICC(2,1)"
DEFAULT_THRESHOLD = 0.75
#: the vendor used for profiles that do not bring their own (see module doc)
SUBJECT_VENDOR = "kestrel"


def icc(ratings: np.ndarray, kind: str = ICC_KIND) -> float:
    """Shrout-Fleiss intraclass correlation of ``ratings`` (n targets x k raters).

    ``kind``: ``"ICC(2,1)"`` (two-way random, absolute agreement, single rater) or
    ``"ICC(3,1)"`` (two-way mixed, consistency, single rater). From the two-way
    ANOVA mean squares of rows (MSR), columns (MSC) and error (MSE):
    ICC(2,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n),
    ICC(3,1) = (MSR - MSE) / (MSR + (k-1) MSE).
    NaN when the ratings do not vary at all or fewer than 2 targets or raters.
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ratings: need a 2-D array (targets x raters), got shape {x.shape}")
    n, k = x.shape
    if n < 2 or k < 2:
        return float("nan")
    grand = x.mean()
    ss_rows = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_error = float(((x - grand) ** 2).sum()) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = max(ss_error, 0.0) / ((n - 1) * (k - 1))
    if kind == "ICC(3,1)":
        denominator = msr + (k - 1) * mse
    elif kind == "ICC(2,1)":
        denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    else:
        raise ValueError(f"kind: {kind!r} is not 'ICC(2,1)' or 'ICC(3,1)'")
    if denominator <= 0 or not np.isfinite(denominator):
        return float("nan")
    return (msr - mse) / denominator


def feature_iccs(
    values: np.ndarray, names: Sequence[str], kind: str = ICC_KIND
) -> dict[str, float]:
    """ICC per feature of ``values`` (targets x profiles x features); targets with a
    missing value of that feature are left out of its ICC."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3 or values.shape[2] != len(names):
        raise ValueError(f"values: shape {values.shape} is not (targets, profiles, {len(names)})")
    out = {}
    for j, name in enumerate(names):
        column = values[:, :, j]
        column = column[np.isfinite(column).all(axis=1)]
        out[name] = icc(column, kind)
    return out


@dataclass(frozen=True)
class Stability:
    """The stable texture features and how they were found (``model.json``'s
    ``texture_stability``): ``kept`` the base names whose ICC >= ``threshold``."""

    kept: tuple[str, ...]
    threshold: float
    kind: str
    normalisation: str
    profiles: tuple[str, ...]
    subjects: int
    hips: int
    seed: int
    icc: dict[str, float]
    #: the raw values (hips x profiles x 325) when known (:meth:`load` of a file with its
    #: sidecar, :func:`measure_stability`); not part of the file or of the bundle's record
    values: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """Everything, ICCs rounded to 4 places (NaN as null)."""
        return {
            "kept": list(self.kept),
            "threshold": self.threshold,
            "icc_kind": self.kind,
            "normalisation": self.normalisation,
            "profiles": list(self.profiles),
            "subjects": self.subjects,
            "hips": self.hips,
            "seed": self.seed,
            "icc": {n: (round(v, 4) if np.isfinite(v) else None) for n, v in self.icc.items()},
        }

    def record(self) -> dict[str, Any]:
        """What a bundle records (no per-feature ICCs: the kept list and the recipe)."""
        data = self.to_json()
        del data["icc"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stability:
        """Read :meth:`to_json` output."""
        return cls(
            kept=tuple(data["kept"]),
            threshold=float(data["threshold"]),
            kind=str(data["icc_kind"]),
            normalisation=str(data["normalisation"]),
            profiles=tuple(data["profiles"]),
            subjects=int(data["subjects"]),
            hips=int(data["hips"]),
            seed=int(data["seed"]),
            icc={n: (float("nan") if v is None else float(v)) for n, v in data["icc"].items()},
        )

    def write(self, path: Path, values: np.ndarray | None = None) -> Path:
        """Write the stability file (:meth:`to_json`; ``train --texture-stability``) and,
        with ``values`` (hips x profiles x 325, this measurement's), the sidecar
        :func:`values_path` that :meth:`without` needs."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        if values is not None:
            np.savez_compressed(
                values_path(path), values=np.asarray(values, dtype=np.float64),
                names=np.array(texture_feature_names()), profiles=np.array(self.profiles),
            )  # fmt: skip
        return path

    @classmethod
    def load(cls, path: Path) -> Stability:
        """Read a stability file (``bench/texture_stability --out``); ValueError when bad.

        The raw values of its sidecar (:func:`values_path`), when there is one, come
        along (``values``), so that :meth:`without` can leave a profile out."""
        try:
            stability = cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a texture stability file ({exc})") from exc
        sidecar = values_path(Path(path))
        if sidecar.exists():
            with np.load(sidecar) as data:
                if tuple(str(p) for p in data["profiles"]) != stability.profiles:
                    raise ValueError(f"{sidecar}: its profiles are not those of {path}")
                object.__setattr__(stability, "values", np.array(data["values"]))
        return stability

    def without(self, profile: str) -> Stability:
        """The same measurement with ``profile`` left out: the ICCs recomputed over the
        other profiles' renderings of the same hips (a held-out profile must not choose
        the features a model trained without it uses). Itself when ``profile`` was not
        measured; ValueError when fewer than 2 profiles would remain or the raw values
        are not at hand (a stability file written without its sidecar)."""
        if profile not in self.profiles:
            return self
        keep = [i for i, p in enumerate(self.profiles) if p != profile]
        if len(keep) < 2:
            raise ValueError(
                f"texture stability: leaving {profile} out leaves fewer than 2 profiles "
                f"({', '.join(self.profiles)})"
            )
        if self.values is None:
            raise ValueError(
                f"texture stability: measured with {profile}, and without its raw values "
                f"({VALUES_SUFFIX} beside the file) it cannot be left out; measure again with "
                "bench/texture_stability --out FILE (which writes them)"
            )
        values = self.values[:, keep, :]
        iccs = feature_iccs(values, texture_feature_names(), self.kind)
        return replace(
            self,
            kept=stable_features(iccs, self.threshold),
            profiles=tuple(self.profiles[i] for i in keep),
            icc=iccs,
            values=values,
        )


#: The raw values beside a stability file ``x.json``: ``x.values.npz``.
VALUES_SUFFIX = ".values.npz"


def values_path(path: Path) -> Path:
    """Where the raw values of the stability file ``path`` are kept."""
    return path.with_name(path.stem + VALUES_SUFFIX)


def stable_features(
    iccs: dict[str, float], threshold: float = DEFAULT_THRESHOLD
) -> tuple[str, ...]:
    """Names whose ICC is at least ``threshold`` (NaN: never), in the order given."""
    return tuple(n for n, v in iccs.items() if np.isfinite(v) and v >= threshold)


def render_subject(seed: int, index: int, profile: str, size: str = "small") -> Any:
    """Subject ``(seed, index)`` rendered under ``profile`` (see module doc)."""
    vendor = None if SITE_PROFILES[profile].vendor else SUBJECT_VENDOR
    return render_instance(seed, size=size, index=index, profile=profile, vendor=vendor)


def measure_subject(
    seed: int,
    index: int,
    profiles: Sequence[str],
    settings: Iterable[TextureSettings],
    roi: RoiSettings,
    size: str = "small",
) -> list[np.ndarray] | None:
    """Per settings, the (2 hips x profiles x 325) texture values of one subject with its
    true femur masks; None when a hip is not assessable or carries metal under a profile."""
    settings = list(settings)
    names = texture_feature_names()
    out = [np.full((2, len(profiles), len(names)), np.nan) for _ in settings]
    for p, profile in enumerate(profiles):
        image = render_subject(seed, index, profile, size)
        row = image.row
        if row.get("metal_left") or row.get("metal_right"):
            return None
        decoded = decode_radiograph(image.dataset)
        masks: dict[Side, np.ndarray | None] = {
            "right": image.masks.get("R"),
            "left": image.masks.get("L"),
        }
        for s, texture in enumerate(settings):
            hips = measure_hips(decoded, masks, {}, roi, texture, names)
            if hips.not_assessable or hips.warnings:
                return None
            for h, side in enumerate(SIDES):
                out[s][h, p] = hips.texture_vector(side, names)
    return out


def stability_cohort(
    seed: int,
    n: int,
    profiles: Sequence[str],
    settings: Sequence[TextureSettings],
    roi: RoiSettings,
    size: str = "small",
    map_fn: Callable[..., Iterable[Any]] = map,
) -> tuple[list[np.ndarray], int]:
    """Texture values (per settings: hips x profiles x 325) of subjects 0..n-1 and how many
    subjects were usable. ``map_fn``: e.g. a process pool's ``map``."""
    if len(profiles) < 2:
        raise ValueError("profiles: need at least 2 to measure reproducibility")
    unknown = [p for p in profiles if p not in SITE_PROFILES]
    if unknown:
        raise ValueError(f"unknown profiles {unknown}; known: {sorted(SITE_PROFILES)}")
    args = [(seed, i, tuple(profiles), tuple(settings), roi, size) for i in range(n)]
    results = [r for r in map_fn(_measure, args) if r is not None]
    if not results:
        raise ValueError("no subject was assessable under every profile")
    stacked = [np.concatenate([r[s] for r in results]) for s in range(len(settings))]
    return stacked, len(results)


def _measure(args: tuple[Any, ...]) -> list[np.ndarray] | None:
    return measure_subject(*args)


def _one_thread() -> None:
    torch.set_num_threads(1)


#: The profiles, subjects and seed of the shipped stability file (``bench/texture_stability``).
DEFAULT_PROFILES = ("cr_unshuttered", "dx_clipped", "shutter", "compressed", "grid_marker")
DEFAULT_SUBJECTS = 60
DEFAULT_SEED = 7700


@dataclass(frozen=True)
class StabilityMeasurement:
    """:func:`measure_stability`'s result: per normalisation its :class:`Stability`
    (ICC(2,1) per feature, the kept list) and the raw values (hips x profiles x 325)."""

    stabilities: tuple[Stability, ...]
    values: tuple[np.ndarray, ...]
    subjects: int

    @property
    def hips(self) -> int:
        """Hips measured under every profile."""
        return int(self.values[0].shape[0])


def measure_stability(
    n: int = DEFAULT_SUBJECTS,
    seed: int = DEFAULT_SEED,
    profiles: Sequence[str] = DEFAULT_PROFILES,
    normalisations: Sequence[str] = ("rank",),
    threshold: float = DEFAULT_THRESHOLD,
    size: str = "small",
    jobs: int = 1,
    progress: bool = False,
) -> StabilityMeasurement:
    """Render subjects 0..n-1 of ``seed`` under every one of ``profiles``, measure both
    hips' texture on their true masks on the ROI grid (:func:`stability_cohort`) with each
    of ``normalisations`` and keep, per normalisation, the features whose ICC(2,1) reaches
    ``threshold``. ``jobs`` processes of one torch thread each."""
    roi = RoiSettings()
    spacing = (roi.spacing_mm, roi.spacing_mm)
    settings = [TextureSettings(spacing_mm=spacing, normalisation=x) for x in normalisations]

    def bar(items: Iterable[Any]) -> Iterable[Any]:
        return tqdm(items, total=n, desc="stability", unit="subject", disable=not progress)

    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=_one_thread) as pool:
            values, subjects = stability_cohort(
                seed, n, profiles, settings, roi, size, lambda f, a: bar(pool.map(f, a))
            )
    else:
        threads = torch.get_num_threads()
        _one_thread()
        try:
            values, subjects = stability_cohort(
                seed, n, profiles, settings, roi, size, lambda f, a: bar(map(f, a))
            )
        finally:
            torch.set_num_threads(threads)
    names = texture_feature_names()
    stabilities = []
    for normalisation, v in zip(normalisations, values, strict=True):
        iccs = feature_iccs(v, names, ICC_KIND)
        stabilities.append(
            Stability(
                kept=stable_features(iccs, threshold),
                threshold=threshold,
                kind=ICC_KIND,
                normalisation=normalisation,
                profiles=tuple(profiles),
                subjects=subjects,
                hips=int(v.shape[0]),
                seed=seed,
                icc=iccs,
                values=v,
            )
        )
    return StabilityMeasurement(tuple(stabilities), tuple(values), subjects)


def group_table(iccs: dict[str, float], threshold: float = DEFAULT_THRESHOLD) -> dict[str, int]:
    """How many features pass, per image type and per class (keys ``original``,
    ``wavelet-LH``, ..., ``glcm``, ...) and ``all``."""
    counts: dict[str, int] = {}
    for name, value in iccs.items():
        image_type, feature_class, _ = name.split("_", 2)
        ok = int(bool(np.isfinite(value) and value >= threshold))
        for key in (image_type, feature_class, "all"):
            counts[key] = counts.get(key, 0) + ok
    return counts
