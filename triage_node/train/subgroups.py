"""Subgroups of an evaluation: scanner, sex, age band and how many hips were assessed.

A model that is good on average can fail on one scanner or one group of
patients, so ``evaluate`` reports AUC (DeLong 95% CI) and sensitivity and
specificity at the operating point (Wilson 95% CIs) within each group. A group
with fewer than :data:`MIN_PER_CLASS` images of either class is flagged as small
and shown without an AUC (the DeLong interval is unreliable there), never
hidden: a scanner with few images is exactly the one a site should look at.

The groups come from the DICOM header (:func:`image_groups`): Manufacturer and
Manufacturer's Model Name, Patient's Sex, and the age band computed from
Patient's Age or from the birth date and the study date
(:func:`triage_node.score.clinical.age_years`). Only the band leaves this
module: no name, ID or birth date is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from matplotlib.figure import Figure

from triage_node.assessment import is_positive
from triage_node.score.clinical import age_years
from triage_node.train.metrics import AucResult, Proportion, auc_with_ci, wilson

#: Below this many images of either class a group is "small": no AUC, flagged.
MIN_PER_CLASS = 10
UNKNOWN = "unknown"
#: Age bands (years, lower bound inclusive) and their labels.
AGE_BANDS: tuple[tuple[float, str], ...] = ((0, "<60"), (60, "60-69"), (70, "70-79"), (80, ">=80"))
#: The subgroup dimensions, in report order.
DIMENSIONS = ("scanner", "sex", "age band", "hips assessed")


def age_band(age: float | None) -> str:
    """``<60``, ``60-69``, ``70-79``, ``>=80``, or ``unknown``."""
    if age is None:
        return UNKNOWN
    label = UNKNOWN
    for lower, name in AGE_BANDS:
        if age >= lower:
            label = name
    return label


@dataclass(frozen=True)
class ImageGroups:
    """What an image's subgroups are read from: no patient-identifying value."""

    manufacturer: str
    model_name: str
    sex: str
    age_band: str

    @property
    def scanner(self) -> str:
        return f"{self.manufacturer} / {self.model_name}"


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip() or UNKNOWN


def image_groups(ds: pydicom.Dataset) -> ImageGroups:
    """The subgroup labels of one image from its header."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return ImageGroups(
        manufacturer=_text(ds, "Manufacturer"),
        model_name=_text(ds, "ManufacturerModelName"),
        sex=sex if sex in ("F", "M") else UNKNOWN,
        age_band=age_band(age_years(ds)),
    )


@dataclass(frozen=True)
class SubgroupRow:
    """One group of one dimension: counts, AUC (None when small), decisions at the threshold.

    ``not_assessable``: listed images of the group with no assessable hip (not in ``n``).
    """

    dimension: str
    group: str
    n: int
    positives: int
    not_assessable: int
    auc: AucResult | None
    sensitivity: Proportion | None
    specificity: Proportion | None
    small: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def subgroup_rows(
    dimension: str,
    groups: Sequence[str],
    labels: np.ndarray,
    values: np.ndarray,
    threshold: float,
    not_assessable: Sequence[str] = (),
) -> list[SubgroupRow]:
    """Rows of one dimension; ``groups[k]`` is scored image k's group, ``not_assessable``
    the groups of the listed images that had no assessable hip."""
    labels = np.asarray(labels).astype(int)
    values = np.asarray(values, dtype=np.float64)
    names = sorted(set(groups) | set(not_assessable), key=_order)
    rows = []
    for name in names:
        member = np.array([g == name for g in groups], dtype=bool)
        y, v = labels[member], values[member]
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        called = is_positive(v, threshold)
        small = min(pos, neg) < MIN_PER_CLASS
        rows.append(
            SubgroupRow(
                dimension=dimension,
                group=name,
                n=len(y),
                positives=pos,
                not_assessable=sum(1 for g in not_assessable if g == name),
                auc=None if small else auc_with_ci(y, v),
                sensitivity=wilson(int(called[y == 1].sum()), pos) if pos else None,
                specificity=wilson(int((~called[y == 0]).sum()), neg) if neg else None,
                small=small,
            )
        )
    return rows


def _order(name: str) -> tuple[int, str]:
    bands = [label for _, label in AGE_BANDS]
    if name in bands:
        return (bands.index(name), name)
    return (len(bands) + (name == UNKNOWN), name)


def _pct(p: Proportion | None) -> str:
    if p is None:
        return "-"
    interval = f"{100 * p.ci_low:.1f}-{100 * p.ci_high:.1f}"
    return f"{100 * p.value:.1f} ({interval}) [{p.successes}/{p.total}]"


def render_subgroups(rows: Sequence[SubgroupRow], variant: str, threshold: float) -> list[str]:
    """The subgroup table as Markdown lines."""
    if not rows:
        return []
    lines = [
        "",
        f"## Subgroups ({variant} at its operating point {threshold:.3f})",
        "",
        f"Groups with fewer than {MIN_PER_CLASS} images of either class are flagged "
        "(small) and shown without an AUC. Not assessable: listed images of the group "
        "with no assessable hip (not in n).",
        "",
        "| Subgroup | Group | n (osteoporosis) | Not assessable | AUC (95% CI) "
        "| Sensitivity % (95% CI) | Specificity % (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        auc = (
            "small group: no AUC"
            if r.auc is None
            else f"{r.auc.auc:.3f} ({r.auc.ci_low:.3f}-{r.auc.ci_high:.3f})"
        )
        lines.append(
            f"| {r.dimension} | {r.group}{' (small)' if r.small else ''} | {r.n} ({r.positives}) "
            f"| {r.not_assessable} | {auc} | {_pct(r.sensitivity)} | {_pct(r.specificity)} |"
        )
    return lines


def plot_subgroups(rows: Sequence[SubgroupRow], variant: str, path: Path) -> Path:
    """A forest plot of the subgroups' AUCs with their CIs (small groups named, no point)."""
    fig = Figure(figsize=(9.5, 0.32 * len(rows) + 1.2), dpi=120)  # room for scanner names
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows, strict=True):
        if r.auc is None:
            ax.text(0.505, y, "small group", va="center", fontsize="small", color="grey")
        else:
            ax.errorbar(
                r.auc.auc,
                y,
                xerr=[[r.auc.auc - r.auc.ci_low], [r.auc.ci_high - r.auc.auc]],
                fmt="o",
                color="black",
                markersize=4,
                capsize=2,
            )
    ax.set_yticks(ys, [f"{r.dimension}: {r.group} (n {r.n})" for r in rows], fontsize="small")
    ax.set(xlim=(0.5, 1.0), xlabel="AUC (DeLong 95% CI)", title=f"{variant} by subgroup")
    ax.grid(axis="x", linestyle=":", linewidth=0.5)
    fig.tight_layout()
    fig.savefig(path)
    return path
