"""Recalibrating a bundle on a site's labelled images: the probability map and the operating point.

``triage-node calibrate`` keeps the networks, the selected features and the
heads' weights; per variant it refits only the head's Platt map
(``sigmoid(a * logit + b)``, :func:`~triage_node.train.head.fit_platt`) and
chooses the operating point again for the target sensitivity, on the value the
node decides on (the highest assessed side, docs/model.md "The decision rule").

* **What the map is fitted on.** Labels are per image (a patient has
  osteoporosis or not), so the map is fitted on the image value's logit: the
  logit of the highest assessed side (a calibration map is increasing, so the
  highest side stays highest) against the image's label. The same map is then
  applied to each side, as before; the image value is calibrated to the site's
  prevalence, a single side's probability reads somewhat low beside it.
* **Cross-validation.** The scored images are split into ``folds`` folds
  (stratified by label, grouped by ``patient_id`` when the labels CSV has it,
  seeded). Each fold's values come from a map fitted on the other folds
  (out-of-fold values): they give the calibration after (ECE, reliability
  diagram), choose the new operating point for the target sensitivity and
  give its sensitivity and specificity. As those are judged on the values that
  chose the threshold, the report also gives the cross-validated figures of
  the whole procedure: each fold decided at a threshold chosen on the other
  folds. The map written into the bundle is fitted on all scored images.
* **Too few images.** The threshold sits where the sensitivity reaches the
  target, so it is only as good as the estimate of the sensitivity; that takes
  positives (:func:`positives_needed`: the normal approximation to the
  binomial, ``n = z^2 p (1 - p) / h^2`` for the target ``p`` and half-width
  ``h`` of the 95% interval). Below :data:`FLOOR_HALF_WIDTH` (+/-0.10: 35
  positives at 0.90) nothing is written; below :data:`GOAL_HALF_WIDTH`
  (+/-0.05: 139 positives at 0.90) the bundle is written with a warning in the
  report and on stderr. Images without osteoporosis are held to the same floor
  (the map's offset and the specificity need them as much).

The new bundle (:func:`write_calibrated_bundle`) has the same weights, new head
files and ``model.json`` thresholds, the site's validation reference
(``reference.json``, :mod:`triage_node.score.reference`, from the out-of-fold
values at the new threshold) and a manifest with a new version (and so a new
Device UID in every object the node makes with it) that records the
calibration.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats
from sklearn.model_selection import StratifiedGroupKFold

from triage_node import durable
from triage_node.score.bundle import load_bundle, write_bundle
from triage_node.score.femur_finder import SIDES
from triage_node.score.head import Calibration
from triage_node.score.manifest import NOT_FOR_CLINICAL_USE, BundleManifest, OperatingPoint
from triage_node.score.model import MODEL_FILE, head_file, onehip_head_file
from triage_node.score.reference import REFERENCE_FILE, ValidationReference
from triage_node.train.evaluate import ScoredCohort, bilateral_operating_points
from triage_node.train.head import choose_operating_point, fit_platt
from triage_node.train.metrics import (
    AucResult,
    Proportion,
    ThresholdMetrics,
    auc_with_ci,
    metrics_at_threshold,
    wilson,
)
from triage_node.train.pipeline import DECISION_VALUE as DECISION

DEFAULT_TARGET = 0.90
DEFAULT_FOLDS = 5
#: Half-width of the 95% interval of the sensitivity below which no bundle is written.
FLOOR_HALF_WIDTH = 0.10
#: Half-width the sensitivity should be known to; fewer positives give a warning.
GOAL_HALF_WIDTH = 0.05
#: Equal-width bins of the expected calibration error and the reliability diagram.
ECE_BINS = 10
Z_95 = float(stats.norm.ppf(0.975))


class TooFewImages(ValueError):
    """The site data cannot estimate the operating point; the message says what is needed."""


def positives_needed(target: float, half_width: float) -> int:
    """Positives to estimate a sensitivity ``target`` within +/-``half_width`` at 95%.

    The normal approximation to the binomial, ``z^2 p (1 - p) / h^2`` rounded up:
    139 for 0.90 within +/-0.05, 35 within +/-0.10.
    """
    return math.ceil(Z_95**2 * target * (1 - target) / half_width**2 - 1e-9)


def half_width(target: float, positives: int) -> float:
    """95% half-width of a sensitivity ``target`` estimated on ``positives`` (normal approx.)."""
    return Z_95 * math.sqrt(target * (1 - target) / positives) if positives else math.inf


def check_sample_size(
    positives: int, negatives: int, target: float, counted: str = "assessable"
) -> str | None:
    """Raise :class:`TooFewImages` below the floor; return a warning below the goal, else None.

    ``counted`` says which images were counted (``listed`` in the labels CSV, or
    ``assessable``: scored by the model).
    """
    floor = positives_needed(target, FLOOR_HALF_WIDTH)
    goal = positives_needed(target, GOAL_HALF_WIDTH)
    why = (
        f"to estimate a sensitivity of {target:.2f} within +/-{FLOOR_HALF_WIDTH:.2f} at 95% "
        f"confidence, n >= 1.96^2 x {target:.2f} x {1 - target:.2f} / {FLOOR_HALF_WIDTH:.2f}^2 "
        f"(normal approximation); {goal} give +/-{GOAL_HALF_WIDTH:.2f}"
    )
    if positives < floor:
        raise TooFewImages(
            f"too few images with osteoporosis to set the operating point: {positives} "
            f"{counted}; at least {floor} are needed {why}. No bundle written."
        )
    if negatives < floor:
        raise TooFewImages(
            f"too few images without osteoporosis: {negatives} {counted}; at least {floor} "
            "are needed (the calibration's offset and the specificity need them as the "
            "sensitivity needs positives). No bundle written."
        )
    if positives < goal:
        return (
            f"{positives} images with osteoporosis estimate the sensitivity of {target:.2f} "
            f"only to about +/-{half_width(target, positives):.3f} (95%); {goal} are needed "
            f"for +/-{GOAL_HALF_WIDTH:.2f}"
        )
    return None


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |observed rate - mean probability| over equal-width bins."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        member = which == b
        if member.any():
            total += member.sum() * abs(y[member].mean() - p[member].mean())
    return float(total / len(y))


@dataclass(frozen=True)
class VariantCalibration:
    """One variant before and after.

    ``at_old``: the bundle's map and threshold on the site images; ``at_new``:
    the out-of-fold values at the new threshold; ``cross_validated``: each fold
    decided at a threshold chosen without it (sensitivity, specificity).
    """

    variant: str
    before: Calibration
    after: Calibration
    old_threshold: float
    new_threshold: float
    old_bilateral_threshold: float | None
    new_bilateral_threshold: float
    auc: AucResult
    ece_before: float
    ece_after: float
    at_old: ThresholdMetrics
    at_new: ThresholdMetrics
    cross_validated: tuple[Proportion, Proportion]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["before"] = {"kind": self.before.kind, "params": list(self.before.params)}
        data["after"] = {"kind": self.after.kind, "params": list(self.after.params)}
        sens, spec = self.cross_validated
        data["cross_validated"] = {"sensitivity": asdict(sens), "specificity": asdict(spec)}
        return data


@dataclass(frozen=True)
class CalibrationResult:
    """Everything ``calibrate`` found, for the bundle, the report and the reference."""

    variants: dict[str, VariantCalibration]
    variant: str
    target: float
    folds: int
    seed: int
    grouped_by_patient: bool
    images: int
    scored: int
    positives: int
    negatives: int
    labels_csv: str
    data_synthetic: bool
    base: str
    created: str
    warning: str | None = None
    not_assessable: dict[str, int] = field(default_factory=dict)
    #: the bundle variant's values: before (bundle's map), after (out of fold), labels
    curves: dict[str, list[float]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of the calibration (``metrics.calibration``)."""
        main = self.variants[self.variant]
        return {
            "date": self.created,
            "data": "site calibration images"
            + (" (synthetic, triage-node synth)" if self.data_synthetic else ""),
            "labels_csv": self.labels_csv,
            "images_listed": self.images,
            "images_scored": self.scored,
            "positives": self.positives,
            "negatives": self.negatives,
            "target_sensitivity": self.target,
            "method": f"Platt map of the {DECISION} logit refitted per variant; "
            f"{self.folds}-fold cross-validation (stratified, "
            + ("patient-grouped" if self.grouped_by_patient else "by image")
            + f", seed {self.seed}); operating point chosen on the out-of-fold values; "
            "final map fitted on all scored images; networks and head weights unchanged",
            "base_bundle": self.base,
            "threshold_before": main.old_threshold,
            "threshold_after": main.new_threshold,
            "ece_before": main.ece_before,
            "ece_after": main.ece_after,
            "out_of_fold_sensitivity": main.at_new.sensitivity.value,
            "out_of_fold_specificity": main.at_new.specificity.value,
            "cross_validated_sensitivity": main.cross_validated[0].value,
            "cross_validated_specificity": main.cross_validated[1].value,
            "warning": self.warning,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": self.record(),
            "variants": {v: c.to_json() for v, c in self.variants.items()},
            "not_assessable": self.not_assessable,
        }


def _folds(
    y: np.ndarray, groups: list[str], folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y, groups))


def calibrate_variant(
    cohort: ScoredCohort,
    variant: str,
    splits: list[tuple[np.ndarray, np.ndarray]],
    target: float,
    old_bilateral_threshold: float | None,
) -> tuple[VariantCalibration, np.ndarray]:
    """Refit one variant's map and operating point (see module doc); also its out-of-fold values."""
    y = cohort.labels
    head = cohort.model.heads[variant]
    # The image value's logit: the highest assessed side's (the map is increasing).
    z = np.array([max(cohort.scores[i].logits[variant].values()) for i in cohort.scored])
    oof = np.empty(len(y))
    oof_bilateral = np.empty(len(y))
    called = np.zeros(len(y), dtype=bool)
    for train, test in splits:
        fold_map = fit_platt(z[train], y[train])
        values = cohort.values(variant, fold_map)
        oof[test] = values[test]
        oof_bilateral[test] = cohort.bilateral(variant, fold_map)[test]
        fold_threshold = choose_operating_point(y[train], values[train], target).threshold
        called[test] = values[test] >= fold_threshold
    before = cohort.values(variant)
    new = choose_operating_point(y, oof, target)
    old_threshold = cohort.threshold(variant)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    result = VariantCalibration(
        variant=variant,
        before=head.calibration,
        after=fit_platt(z, y),
        old_threshold=old_threshold,
        new_threshold=new.threshold,
        old_bilateral_threshold=old_bilateral_threshold,
        new_bilateral_threshold=choose_operating_point(y, oof_bilateral, target).threshold,
        auc=auc_with_ci(y, oof),
        ece_before=expected_calibration_error(y, before),
        ece_after=expected_calibration_error(y, oof),
        at_old=metrics_at_threshold(y, before, old_threshold),
        at_new=metrics_at_threshold(y, oof, new.threshold),
        cross_validated=(
            wilson(int(called[y == 1].sum()), positives),
            wilson(int((~called[y == 0]).sum()), negatives),
        ),
    )
    return result, oof


def calibrate_cohort(
    cohort: ScoredCohort,
    target: float = DEFAULT_TARGET,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    created: str | None = None,
) -> tuple[CalibrationResult, ValidationReference]:
    """Calibrate every variant of a scored site cohort; the result and the site's reference.

    Raises :class:`TooFewImages` when the scored images cannot estimate the threshold.
    """
    created = created or dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    y = cohort.labels
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    warning = check_sample_size(positives, negatives, target)
    groups = [cohort.cases[i].patient for i in cohort.scored]
    grouped = any(c.patient != str(c.path) for c in cohort.cases)
    splits = _folds(y, groups, folds, seed)
    bilateral_old = bilateral_operating_points(cohort.model)
    variants: dict[str, VariantCalibration] = {}
    oof_values: dict[str, np.ndarray] = {}
    for variant in cohort.model.heads:
        variants[variant], oof_values[variant] = calibrate_variant(
            cohort, variant, splits, target, bilateral_old.get(variant)
        )
    main = cohort.model.variant
    model = cohort.model
    result = CalibrationResult(
        variants=variants,
        variant=main,
        target=target,
        folds=folds,
        seed=seed,
        grouped_by_patient=grouped,
        images=len(cohort.cases),
        scored=len(y),
        positives=positives,
        negatives=negatives,
        labels_csv=cohort.labels_csv.name,
        data_synthetic=cohort.synthetic_data,
        base=f"{model.name} {model.version}",
        created=created,
        warning=warning,
        not_assessable=cohort.reasons(),
        curves={
            "labels": y.astype(float).tolist(),
            "before": cohort.values(main).tolist(),
            "after": oof_values[main].tolist(),
        },
    )
    # The reference: every listed image (None: not assessable), out-of-fold values.
    position = {index: k for k, index in enumerate(cohort.scored)}
    values = [
        float(oof_values[main][position[i]]) if i in position else None
        for i in range(len(cohort.cases))
    ]
    reference = ValidationReference.from_outcomes(
        values,
        (s.side_reasons[side] for s in cohort.scores for side in SIDES),
        variants[main].new_threshold,
        f"site calibration images, {len(cohort.cases)} images, {created[:10]}"
        + (" (synthetic)" if cohort.synthetic_data else ""),
    )
    return result, reference


def _onehip_calibration(head: dict[str, Any], cal: VariantCalibration) -> dict[str, Any] | None:
    """The one-hip head ``head`` with the site's recalibration applied to it, or None.

    The one-hip head's Platt map put its values on the same validation scale as the
    bilateral head's. The site refit replaces the bilateral map ``(a0, b0)`` by
    ``(a1, b1)``: on that scale, the calibrated logit ``L`` becomes
    ``a1 / a0 * (L - b0) + b1``. The same move is applied to the one-hip head's
    calibrated logit (its own map composed with it), so that a hip scored alone reads
    on the site's scale and meets the site's threshold like a hip scored as a pair. None
    when either map is not a Platt map (the composition is then not defined; the caller
    drops the one-hip head, and such hips are scored by the refitted bilateral head).
    """
    own = head.get("calibration", {})
    if cal.before.kind != "platt" or own.get("kind") != "platt" or cal.before.params[0] == 0:
        return None
    a0, b0 = cal.before.params
    a1, b1 = cal.after.params
    a, b = own["params"]
    scale = a1 / a0
    moved = dict(head)
    moved["calibration"] = {
        "kind": "platt",
        "params": [scale * a, scale * (b - b0) + b1],
        "x": [],
        "y": [],
    }
    return moved


def write_calibrated_bundle(
    bundle_path: Path,
    result: CalibrationResult,
    reference: ValidationReference,
    out: Path,
) -> BundleManifest:
    """The bundle at ``bundle_path`` with the new maps, thresholds and reference, into ``out``."""
    bundle = load_bundle(bundle_path)
    base = bundle.manifest
    files = {name: bundle.raw(name) for name in base.files if name != REFERENCE_FILE}
    for variant, cal in result.variants.items():
        head = bundle.read_json(head_file(variant))
        head["calibration"] = {"kind": "platt", "params": list(cal.after.params), "x": [], "y": []}
        files[head_file(variant)] = (json.dumps(head, indent=1) + "\n").encode()
        onehip = onehip_head_file(variant)
        if onehip in files:
            moved = _onehip_calibration(bundle.read_json(onehip), cal)
            if moved is None:  # no map to move: one hip is scored by the refitted head
                del files[onehip]
            else:
                files[onehip] = (json.dumps(moved, indent=1) + "\n").encode()
    info = bundle.read_json(MODEL_FILE)
    info["thresholds"] = {v: c.new_threshold for v, c in result.variants.items()}
    info["bilateral_thresholds"] = {
        v: c.new_bilateral_threshold for v, c in result.variants.items()
    }
    info["decision_value"] = DECISION
    info["calibration"] = "platt"
    files[MODEL_FILE] = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    files[REFERENCE_FILE] = reference.dumps().encode()
    # The base bundle's version is hashed too: the same site images calibrating two bundles
    # give two versions (two Device UIDs), even where the refitted files come out the same.
    digest = hashlib.sha256(
        f"{base.name} {base.version}\n".encode() + b"".join(files[k] for k in sorted(files))
    ).hexdigest()[:8]
    main = result.variants[result.variant]
    synthetic = base.synthetic or result.data_synthetic
    validation = {}
    for v, c in result.variants.items():
        kept = base.metrics.get("validation", {}).get(v, {})
        validation[v] = {
            "validation_auc": c.auc.auc,
            "validation_auc_ci": [c.auc.ci_low, c.auc.ci_high],
            "threshold": c.new_threshold,
            "validation_sensitivity": c.at_new.sensitivity.value,
            "validation_specificity": c.at_new.specificity.value,
            "bilateral": {"threshold": c.new_bilateral_threshold},
            **({"selected": kept["selected"]} if "selected" in kept else {}),
        }
    data = base.to_json()
    data.update(
        version=f"{result.created[:10]}.cal.{digest}",
        created=result.created,
        synthetic=synthetic,
        intended_use=(
            base.intended_use
            if not synthetic or NOT_FOR_CLINICAL_USE in base.intended_use
            else NOT_FOR_CLINICAL_USE
        ),
        operating_point=OperatingPoint(
            threshold=main.new_threshold,
            target_sensitivity=result.target,
            validation_sensitivity=main.at_new.sensitivity.value,
            validation_specificity=main.at_new.specificity.value,
        ),
        metrics={
            **base.metrics,
            "validation": validation,
            # what training found on its own validation split (kept through re-calibrations)
            "training_validation": base.metrics.get(
                "training_validation", base.metrics.get("validation", {})
            ),
            "target_sensitivity": result.target,
            "operating_points": f"chosen for the {DECISION} on the out-of-fold values of the "
            f"site calibration images ({result.scored} scored); networks and head weights of "
            f"{result.base}",
            "calibration": result.record(),
        },
    )
    manifest = BundleManifest(**data)
    write_bundle(out, manifest, files)
    load_bundle(out)  # verifies what was written
    return manifest


def _pct(p: Proportion) -> str:
    return (
        f"{100 * p.value:.1f} ({100 * p.ci_low:.1f}-{100 * p.ci_high:.1f}) "
        f"[{p.successes}/{p.total}]"
    )


def render_report(result: CalibrationResult, manifest: BundleManifest | None) -> str:
    """The calibration report as Markdown."""
    main = result.variants[result.variant]
    lines = ["# Calibration on site images", ""]
    if result.data_synthetic or (manifest is not None and manifest.synthetic):
        lines += [f"**{NOT_FOR_CLINICAL_USE}**", ""]
    lines += [
        f"- base bundle: {result.base}",
        f"- new bundle: {manifest.name} {manifest.version}" if manifest else "- new bundle: none",
        f"- labels: {result.labels_csv}; {result.images} images listed, {result.scored} "
        f"scored ({result.positives} with osteoporosis, {result.negatives} without)",
        f"- not assessable: {sum(result.not_assessable.values())}"
        + (f" {result.not_assessable}" if result.not_assessable else ""),
        f"- target sensitivity {result.target:.2f}; {result.folds}-fold cross-validation, "
        + ("patient-grouped" if result.grouped_by_patient else "by image")
        + f", seed {result.seed}; date {result.created}",
        f"- value decided on: {DECISION}",
        "",
    ]
    if result.warning:
        lines += [f"**Warning:** {result.warning}.", ""]
    lines += [
        f"## {result.variant} (the bundle's variant)",
        "",
        "| | Before (bundle's map and threshold) | After (out of fold, new threshold) |",
        "|---|---|---|",
        f"| Threshold | {main.old_threshold:.3f} | {main.new_threshold:.3f} |",
        f"| Platt map (a, b) | {_params(main.before)} | {_params(main.after)} |",
        f"| ECE ({ECE_BINS} bins) | {main.ece_before:.3f} | {main.ece_after:.3f} |",
        f"| Sensitivity % (95% CI) | {_pct(main.at_old.sensitivity)} "
        f"| {_pct(main.at_new.sensitivity)} |",
        f"| Specificity % (95% CI) | {_pct(main.at_old.specificity)} "
        f"| {_pct(main.at_new.specificity)} |",
        "",
        f"AUC of the out-of-fold values {main.auc.auc:.3f} "
        f"({main.auc.ci_low:.3f}-{main.auc.ci_high:.3f}). The new threshold was chosen on the "
        "out-of-fold values it is judged on; cross-validated (each fold decided at a threshold "
        "chosen on the other folds): sensitivity "
        f"{_pct(main.cross_validated[0])}, specificity {_pct(main.cross_validated[1])}.",
        "",
        "![Reliability diagram](reliability.png)",
        "",
        "## All variants",
        "",
        "| Model | Threshold before -> after | ECE before -> after | Sensitivity % before "
        "| Sensitivity % after (95% CI) | Specificity % before | Specificity % after (95% CI) "
        "| Cross-validated sens. / spec. % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, c in result.variants.items():
        lines.append(
            f"| {v} | {c.old_threshold:.3f} -> {c.new_threshold:.3f} "
            f"| {c.ece_before:.3f} -> {c.ece_after:.3f} "
            f"| {100 * c.at_old.sensitivity.value:.1f} | {_pct(c.at_new.sensitivity)} "
            f"| {100 * c.at_old.specificity.value:.1f} | {_pct(c.at_new.specificity)} "
            f"| {100 * c.cross_validated[0].value:.1f} / {100 * c.cross_validated[1].value:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _params(cal: Calibration) -> str:
    if cal.kind != "platt":
        return cal.kind
    return f"{cal.params[0]:.3f}, {cal.params[1]:+.3f}"


def plot_reliability(result: CalibrationResult, path: Path) -> Path:
    """Reliability diagram of the bundle's variant before and after, with the value histograms."""
    y = np.asarray(result.curves["labels"])
    fig = Figure(figsize=(5.5, 7), dpi=120)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    main = result.variants[result.variant]
    for key, label, ece in (
        ("before", "before", main.ece_before),
        ("after", "after", main.ece_after),
    ):
        p = np.asarray(result.curves[key])
        which = np.clip((p * ECE_BINS).astype(int), 0, ECE_BINS - 1)
        xs, ys = [], []
        for b in range(ECE_BINS):
            if (which == b).any():
                xs.append(p[which == b].mean())
                ys.append(y[which == b].mean())
        line = top.plot(xs, ys, "o-", markersize=4, label=f"{label} (ECE {ece:.3f})")[0]
        bottom.hist(p, bins=edges, histtype="step", color=line.get_color())
    top.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    for threshold, style in ((main.old_threshold, "--"), (main.new_threshold, "-")):
        top.axvline(threshold, linestyle=style, color="grey", linewidth=0.8)
    top.set(
        ylabel="observed proportion with osteoporosis",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"{result.variant}: reliability before / after (out of fold)\n"
        f"threshold {main.old_threshold:.3f} (dashed) -> {main.new_threshold:.3f}",
    )
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="image value (highest assessed side)", ylabel="images")
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_report(
    result: CalibrationResult, manifest: BundleManifest | None, report_dir: Path
) -> Path:
    """``calibration.md``, ``calibration.json`` and ``reliability.png`` into ``report_dir``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    data["bundle"] = None if manifest is None else f"{manifest.name} {manifest.version}"
    durable.write_text(report_dir / "calibration.json", json.dumps(data, indent=2) + "\n")
    durable.write_text(report_dir / "calibration.md", render_report(result, manifest))
    plot_reliability(result, report_dir / "reliability.png")
    return report_dir
