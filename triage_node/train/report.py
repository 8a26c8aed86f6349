"""The evaluation report: the seven-model table, DeLong vs D, ROC and calibration plots.

Input is each variant's image values on one labelled set (the value the node
decides on: the highest assessed side) plus its operating point, and optionally
the bilateral head's value for the same images; output is ``report.md``,
``report.json``, ``roc.png`` and ``calibration.png`` in a directory. The main
table is the node's decision rule; a second table gives the bilateral value
beside it (AUC, sensitivity and specificity at its operating point, DeLong test
of the difference); optionally a third gives the bundle's variant by subgroup
(:mod:`triage_node.train.subgroups`, plotted in ``subgroups.png``). Every number
in the Markdown is in the JSON with the counts it came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from triage_node.assessment import is_positive
from triage_node.score.manifest import NOT_FOR_CLINICAL_USE, VARIANTS
from triage_node.train.metrics import (
    AucResult,
    DelongComparison,
    ThresholdMetrics,
    auc_with_ci,
    delong_test,
    holm_adjust,
    metrics_at_threshold,
)
from triage_node.train.subgroups import SubgroupRow, plot_subgroups, render_subgroups

REFERENCE_VARIANT = "D"
CALIBRATION_BINS = 10
#: What the main table's value is (docs/model.md, "The decision rule").
IMAGE_VALUE = (
    "image/study value = highest probability of the assessed sides; "
    "DXA recommended iff at least one assessed side is at or above the operating point"
)


@dataclass(frozen=True)
class VariantPredictions:
    """One variant's calibrated probabilities for the cases of the evaluation set.

    ``probability``: the image value the node decides on (the highest assessed
    side), decided at ``threshold``. ``bilateral``: optionally the bilateral
    head's value for the same cases, decided at ``bilateral_threshold``
    (default ``threshold``). ``labels`` (0/1) and case order must be the same
    for every variant.
    """

    variant: str
    labels: np.ndarray
    probability: np.ndarray
    threshold: float
    bilateral: np.ndarray | None = None
    bilateral_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: {self.variant!r} is not one of {sorted(VARIANTS)}")
        if np.shape(self.labels) != np.shape(self.probability):
            raise ValueError(f"variant {self.variant}: labels and probability lengths differ")
        if self.bilateral is not None and np.shape(self.bilateral) != np.shape(self.labels):
            raise ValueError(f"variant {self.variant}: labels and bilateral lengths differ")


@dataclass(frozen=True)
class BilateralComparison:
    """The bilateral head's value on the same cases, and how the image value compares.

    ``vs_image_value``: DeLong test, a = the image value (highest side), b = bilateral.
    """

    auc: AucResult
    at_threshold: ThresholdMetrics
    vs_image_value: DelongComparison


@dataclass(frozen=True)
class VariantRow:
    """One line of the table."""

    variant: str
    n: int
    positives: int
    auc: AucResult
    at_threshold: ThresholdMetrics
    vs_reference: DelongComparison | None = None
    vs_reference_p_adjusted: float | None = None
    bilateral: BilateralComparison | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """All rows plus what the data were."""

    rows: list[VariantRow]
    dataset: dict[str, Any] = field(default_factory=dict)
    reference: str = REFERENCE_VARIANT
    synthetic_model: bool = False
    value: str = IMAGE_VALUE
    subgroups: list[SubgroupRow] = field(default_factory=list)
    subgroup_variant: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_variants(
    predictions: Sequence[VariantPredictions],
    dataset: dict[str, Any] | None = None,
    synthetic_model: bool = False,
    subgroups: Sequence[SubgroupRow] = (),
    subgroup_variant: str = "",
) -> EvaluationReport:
    """AUC (DeLong CI), metrics at each operating point, DeLong vs ``D`` (Holm-adjusted);
    ``subgroups`` (of ``subgroup_variant``) are carried into the report as given."""
    if not predictions:
        raise ValueError("predictions: no variants to evaluate")
    labels = np.asarray(predictions[0].labels).astype(int)
    for p in predictions:
        if not np.array_equal(np.asarray(p.labels).astype(int), labels):
            raise ValueError(f"variant {p.variant}: labels differ from {predictions[0].variant}")
    by_name = {p.variant: p for p in predictions}
    reference = by_name.get(REFERENCE_VARIANT)
    comparisons: dict[str, DelongComparison] = {}
    if reference is not None:
        for p in predictions:
            if p.variant != REFERENCE_VARIANT:
                comparisons[p.variant] = delong_test(labels, p.probability, reference.probability)
    adjusted = dict(
        zip(comparisons, holm_adjust([c.p_value for c in comparisons.values()]), strict=True)
    )
    rows = [
        VariantRow(
            variant=p.variant,
            n=len(labels),
            positives=int(labels.sum()),
            auc=auc_with_ci(labels, p.probability),
            at_threshold=metrics_at_threshold(labels, p.probability, p.threshold),
            vs_reference=comparisons.get(p.variant),
            vs_reference_p_adjusted=adjusted.get(p.variant),
            bilateral=_bilateral(labels, p),
        )
        for p in sorted(predictions, key=lambda p: list(VARIANTS).index(p.variant))
    ]
    return EvaluationReport(
        rows,
        dict(dataset or {}),
        REFERENCE_VARIANT,
        synthetic_model,
        subgroups=list(subgroups),
        subgroup_variant=subgroup_variant,
    )


def _bilateral(labels: np.ndarray, p: VariantPredictions) -> BilateralComparison | None:
    if p.bilateral is None:
        return None
    threshold = p.threshold if p.bilateral_threshold is None else p.bilateral_threshold
    return BilateralComparison(
        auc=auc_with_ci(labels, p.bilateral),
        at_threshold=metrics_at_threshold(labels, p.bilateral, threshold),
        vs_image_value=delong_test(labels, p.probability, p.bilateral),
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_markdown(report: EvaluationReport, title: str = "Model evaluation") -> str:
    """The report as Markdown: caveat, dataset, the seven-model table, figure links."""
    lines = [f"# {title}", ""]
    if report.synthetic_model:
        lines += [f"**{NOT_FOR_CLINICAL_USE}**", ""]
    first = report.rows[0]
    lines += [
        f"Cases: {first.n} ({first.positives} with osteoporosis). "
        "AUC 95% CI by DeLong; sensitivity, specificity and accuracy at each model's "
        "operating point with Wilson 95% CIs; P: DeLong test against "
        f"{report.reference}, Holm-adjusted.",
        "",
        f"Decision rule (the node's): {report.value}.",
        "",
    ]
    for key, value in sorted(report.dataset.items()):
        lines.append(f"- {key}: {value}")
    if report.dataset:
        lines.append("")
    lines += [
        "| Model | AUC (95% CI) | Threshold | Sensitivity % (95% CI) | Specificity % (95% CI) "
        f"| Accuracy % (95% CI) | P vs {report.reference} (adjusted) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        t = row.at_threshold
        cells = [
            row.variant,
            f"{row.auc.auc:.3f} ({row.auc.ci_low:.3f}-{row.auc.ci_high:.3f})",
            f"{t.threshold:.3f}",
        ]
        for prop in (t.sensitivity, t.specificity, t.accuracy):
            cells.append(
                f"{_pct(prop.value)} ({_pct(prop.ci_low)}-{_pct(prop.ci_high)}) "
                f"[{prop.successes}/{prop.total}]"
            )
        if row.vs_reference is None:
            cells.append("reference" if row.variant == report.reference else "-")
        else:
            cells.append(f"{row.vs_reference.p_value:.3g} ({row.vs_reference_p_adjusted:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _bilateral_table(report.rows)
    if report.subgroups:
        threshold = next(
            r.at_threshold.threshold for r in report.rows if r.variant == report.subgroup_variant
        )
        lines += render_subgroups(report.subgroups, report.subgroup_variant, threshold)
    lines += ["", "![ROC curves](roc.png)", "", "![Calibration](calibration.png)", ""]
    if report.subgroups:
        lines += ["![Subgroups](subgroups.png)", ""]
    return "\n".join(lines)


def _bilateral_table(rows: Sequence[VariantRow]) -> list[str]:
    """Before the decision rule: the bilateral head's value (both hips together) beside it."""
    compared = [(r.variant, r.bilateral) for r in rows if r.bilateral is not None]
    if not compared:
        return []
    lines = [
        "",
        "For comparison, the bilateral head's value (both hips together; it decided "
        "before the rule above and now decides nothing), on the same cases at its own "
        "operating point; P: DeLong test of the two AUCs.",
        "",
        "| Model | Bilateral AUC (95% CI) | Threshold | Sensitivity % (95% CI) "
        "| Specificity % (95% CI) | AUC highest side - bilateral (P) |",
        "|---|---|---|---|---|---|",
    ]
    for variant, b in compared:
        t = b.at_threshold
        cells = [
            variant,
            f"{b.auc.auc:.3f} ({b.auc.ci_low:.3f}-{b.auc.ci_high:.3f})",
            f"{t.threshold:.3f}",
        ]
        for prop in (t.sensitivity, t.specificity):
            cells.append(
                f"{_pct(prop.value)} ({_pct(prop.ci_low)}-{_pct(prop.ci_high)}) "
                f"[{prop.successes}/{prop.total}]"
            )
        cells.append(f"{b.vs_image_value.difference:+.3f} ({b.vs_image_value.p_value:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_roc(predictions: Sequence[VariantPredictions], path: Path) -> Path:
    """ROC curves of all variants with their operating points, as a PNG."""
    fig = Figure(figsize=(5.5, 5.5), dpi=120)  # no pyplot: no global state, no GUI backend
    ax = fig.subplots()
    for p in predictions:
        fpr, tpr, _ = roc_curve(p.labels, p.probability)
        auc = roc_auc_score(p.labels, p.probability)
        line = ax.plot(fpr, tpr, label=f"{p.variant} (AUC {auc:.3f})")[0]
        called = is_positive(np.asarray(p.probability), p.threshold)
        labels = np.asarray(p.labels).astype(bool)
        ax.plot(called[~labels].mean(), called[labels].mean(), "o", color=line.get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC curves (dots: operating points)",
    )
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_calibration(predictions: Sequence[VariantPredictions], path: Path) -> Path:
    """Reliability diagram (observed vs predicted, quantile bins) of all variants, as a PNG."""
    fig = Figure(figsize=(5.5, 5.5), dpi=120)
    ax = fig.subplots()
    for p in predictions:
        observed, predicted = calibration_curve(
            p.labels, p.probability, n_bins=CALIBRATION_BINS, strategy="quantile"
        )
        ax.plot(predicted, observed, "o-", label=p.variant, markersize=3)
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set(
        xlabel="predicted probability",
        ylabel="observed proportion",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Calibration",
    )
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(
    predictions: Sequence[VariantPredictions],
    out_dir: Path,
    dataset: dict[str, Any] | None = None,
    synthetic_model: bool = False,
    title: str = "Model evaluation",
    subgroups: Sequence[SubgroupRow] = (),
    subgroup_variant: str = "",
) -> EvaluationReport:
    """Evaluate and write ``report.md``, ``report.json``, ``roc.png``, ``calibration.png``
    (and ``subgroups.png`` with subgroups)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = evaluate_variants(predictions, dataset, synthetic_model, subgroups, subgroup_variant)
    (out_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report, title))
    plot_roc(predictions, out_dir / "roc.png")
    plot_calibration(predictions, out_dir / "calibration.png")
    if report.subgroups:
        plot_subgroups(report.subgroups, subgroup_variant, out_dir / "subgroups.png")
    return report
