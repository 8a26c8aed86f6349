"""The seven-model report of a bundle on a labelled set of radiographs.

Every image goes through the inference path (decode, femur finder, ROI checks,
features); each of the bundle's seven heads gives its per-side probabilities,
and the image's value is the one the node decides on,
:attr:`~triage_node.assessment.ImageAssessment.probability` (the highest
assessed side, docs/model.md "The decision rule"), judged at the variant's
operating point. The bilateral head's value (both hips together, which decided
before that rule) is carried beside it for comparison. Images with no
assessable hip have no probability and are counted, not scored. The table,
plots and JSON come from :mod:`triage_node.train.report`. When ``oracle.json``
(written by ``triage-node synth``) sits beside the labels, the cohort's oracle
AUC (what the latent bone density plus clinical data can achieve) is printed
with it.

The scoring pass (:func:`score_cohort`) keeps each hip's raw head logit, so the
values under another calibration map (``triage-node calibrate``) come from the
same pass; it also keeps each image's subgroups (:mod:`triage_node.train.subgroups`)
and its hips' not-assessable reasons, which :func:`write_predictions` writes to
``predictions.csv``.
"""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from tqdm import tqdm

from triage_node import durable
from triage_node.assessment import Side
from triage_node.score.bundle import load_bundle
from triage_node.score.features import texture_bases
from triage_node.score.femur_finder import SIDES
from triage_node.score.head import Calibration
from triage_node.score.model import MODEL_FILE, BundleScoringModel
from triage_node.train.head import image_values
from triage_node.train.pipeline import Case, read_cases, single_thread_worker
from triage_node.train.report import (
    EvaluationReport,
    VariantPredictions,
    evaluate_variants,
    write_report,
)
from triage_node.train.subgroups import (
    DIMENSIONS,
    ImageGroups,
    SubgroupRow,
    image_groups,
    subgroup_rows,
)

_WORKER_MODEL: BundleScoringModel | None = None
#: What a hip with no value and no reason from the model was (as the node says it).
FEMUR_NOT_FOUND = "femur not found"


@dataclass(frozen=True)
class CaseScores:
    """One image: each variant's raw head logits, its hips' reasons and its subgroups.

    ``logits[variant][side]``: the head's logit with that hip in both slots
    (assessed hips only); ``bilateral_logits[variant]``: the head on both hips.
    ``side_reasons``: per side, None when assessed, else why not. Probabilities
    are a calibration map of these (:meth:`value`), except that of an image with
    one assessable hip when the bundle has the variant's one-hip head:
    ``onehip[variant]`` is that head's calibrated probability, and the node's value.
    """

    logits: dict[str, dict[Side, float]]
    bilateral_logits: dict[str, float]
    side_reasons: dict[Side, str | None]
    groups: ImageGroups
    sop_instance_uid: str
    onehip: dict[str, float] = field(default_factory=dict)

    @property
    def assessed(self) -> list[Side]:
        return [s for s in SIDES if self.side_reasons.get(s) is None]

    @property
    def reason(self) -> str | None:
        """Why the image has no value (its hips' reasons), or None when it has one."""
        if self.assessed:
            return None
        return "; ".join(sorted({f"{s}: {r}" for s, r in self.side_reasons.items()}))

    def side_values(self, variant: str, calibration: Calibration) -> dict[Side, float]:
        """Each assessed hip's probability under ``calibration`` (a lone hip: the one-hip
        head's own, when there is one)."""
        sides = self.logits[variant]
        if variant in self.onehip:
            return {s: self.onehip[variant] for s in sides}
        probs = calibration.apply(np.array([sides[s] for s in sides]))
        return {s: float(p) for s, p in zip(sides, probs, strict=True)}

    def value(self, variant: str, calibration: Calibration) -> float | None:
        """The image value (highest assessed side) under ``calibration``; None: not assessable."""
        if not self.assessed:
            return None
        per_side = self.side_values(variant, calibration)
        return float(
            image_values({s: np.array([p]) for s, p in per_side.items()}, [self.assessed])[0]
        )


def _init(bundle_path: str) -> None:
    global _WORKER_MODEL
    torch.set_num_threads(1)
    single_thread_worker()
    _WORKER_MODEL = BundleScoringModel(load_bundle(bundle_path))


def _loaded() -> BundleScoringModel:
    if _WORKER_MODEL is None:
        raise RuntimeError("evaluate: no model loaded in this process (_init not run)")
    return _WORKER_MODEL


def _score_case(path: Path) -> CaseScores:
    model = _loaded()
    heads = [*model.heads.values(), *model.onehip_heads.values()]
    names = texture_bases([n for h in heads for n in h.feature_names])
    ds = pydicom.dcmread(path)
    features = model.image_features(ds, texture_names=names)
    reasons: dict[Side, str | None] = {
        s: None if s in features.hips else features.not_assessable.get(s, FEMUR_NOT_FOUND)
        for s in SIDES
    }
    logits: dict[str, dict[Side, float]] = {}
    bilateral: dict[str, float] = {}
    onehip: dict[str, float] = {}
    for variant, head in model.heads.items():
        per_side, combined = model.logits(features, head)
        if combined is not None:  # None: no assessable hip
            logits[variant] = per_side
            bilateral[variant] = combined
        p = model.onehip_probability(features, variant)
        if p is not None:
            onehip[variant] = p
    return CaseScores(
        logits, bilateral, reasons, image_groups(ds), str(ds.get("SOPInstanceUID", "")), onehip
    )


@dataclass(frozen=True)
class ScoredCohort:
    """A labelled set scored by every head of a bundle (see :func:`score_cohort`)."""

    model: BundleScoringModel
    cases: list[Case]
    scores: list[CaseScores]
    data_dir: Path
    labels_csv: Path
    synthetic_data: bool

    @property
    def scored(self) -> list[int]:
        """Indices of the images with an assessable hip."""
        return [i for i, s in enumerate(self.scores) if s.assessed]

    @property
    def labels(self) -> np.ndarray:
        """Labels of the scored images."""
        return np.array([self.cases[i].label for i in self.scored], dtype=int)

    def threshold(self, variant: str) -> float:
        """The variant's operating point in the bundle (the model's own for its variant)."""
        model = self.model
        return model.threshold if variant == model.variant else model.operating_points[variant]

    def values(self, variant: str, calibration: Calibration | None = None) -> np.ndarray:
        """Image values of the scored images (default: the bundle's calibration)."""
        cal = calibration or self.model.heads[variant].calibration
        return np.array([self.scores[i].value(variant, cal) for i in self.scored])

    def bilateral(self, variant: str, calibration: Calibration | None = None) -> np.ndarray:
        """The bilateral head's values of the scored images."""
        cal = calibration or self.model.heads[variant].calibration
        return cal.apply(np.array([self.scores[i].bilateral_logits[variant] for i in self.scored]))

    def reasons(self) -> dict[str, int]:
        """Images with no assessable hip, counted by their hips' reasons."""
        counts: dict[str, int] = {}
        for s in self.scores:
            if s.reason:
                counts[s.reason] = counts.get(s.reason, 0) + 1
        return counts


def score_cohort(
    bundle_path: Path,
    data_dir: Path,
    labels_csv: Path,
    jobs: int = 1,
    progress: bool = False,
    desc: str = "evaluate",
) -> ScoredCohort:
    """Score every listed image with all heads (``jobs`` processes; progress bar on stderr)."""
    case_set = read_cases(labels_csv, data_dir)
    cases = case_set.cases
    paths = [c.path for c in cases]
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    scores: list[CaseScores] = []
    if jobs <= 1:
        _init(str(bundle_path))
        for p in paths:
            scores.append(_score_case(p))
            bar.update()
    else:
        with ProcessPoolExecutor(jobs, initializer=_init, initargs=(str(bundle_path),)) as pool:
            for s in pool.map(_score_case, paths, chunksize=1):
                scores.append(s)
                bar.update()
        _init(str(bundle_path))
    bar.close()
    return ScoredCohort(_loaded(), cases, scores, data_dir, labels_csv, case_set.synthetic)


def bilateral_operating_points(model: BundleScoringModel) -> dict[str, float]:
    """Each variant's operating point chosen for the bilateral value, when the bundle keeps one.

    Bundles whose operating points were chosen for the highest side keep the
    earlier, bilateral ones in ``model.json`` ``bilateral_thresholds``; in older
    bundles the operating points themselves were chosen for the bilateral value.
    """
    kept = model.bundle.read_json(MODEL_FILE).get("bilateral_thresholds")
    if isinstance(kept, dict):
        return {str(v): float(t) for v, t in kept.items()}
    return {
        v: (model.threshold if v == model.variant else t) for v, t in model.operating_points.items()
    }


def variant_predictions(cohort: ScoredCohort) -> list[VariantPredictions]:
    """Each variant's image values, labels and operating points, for the report."""
    model = cohort.model
    labels = cohort.labels
    bilateral_thresholds = bilateral_operating_points(model)
    return [
        VariantPredictions(
            variant=v,
            labels=labels,
            probability=cohort.values(v),
            threshold=cohort.threshold(v),
            bilateral=cohort.bilateral(v),
            bilateral_threshold=bilateral_thresholds.get(v),
        )
        for v in model.heads
    ]


def dataset_summary(cohort: ScoredCohort) -> dict[str, Any]:
    """What the data were: counts, not-assessable reasons, the bundle, the oracle AUC."""
    model = cohort.model
    reasons = cohort.reasons()
    dataset: dict[str, Any] = {
        "labels": str(cohort.labels_csv),
        "images listed": len(cohort.cases),
        "images scored": len(cohort.scored),
        "not assessable": sum(reasons.values()),
        "bundle": f"{model.name} {model.version}",
    }
    if reasons:
        dataset["not assessable reasons"] = reasons
    oracle = cohort.labels_csv.parent / "oracle.json"
    if oracle.exists():
        info = json.loads(oracle.read_text())
        if info.get("oracle_auc") is not None:
            dataset["oracle AUC (synth, latent density + clinical)"] = round(
                float(info["oracle_auc"]), 3
            )
    return dataset


#: The subgroup of a labels CSV's ``profile`` column (synth cohorts with several profiles).
PROFILE_DIMENSION = "acquisition profile"


def subgroups(cohort: ScoredCohort, variant: str | None = None) -> list[SubgroupRow]:
    """The subgroup rows (:mod:`triage_node.train.subgroups`) of one variant (default: the
    bundle's), at its operating point; by acquisition profile too when the labels name
    more than one."""
    variant = variant or cohort.model.variant
    scored = cohort.scored
    dropped = sorted(set(range(len(cohort.scores))) - set(scored))
    labels, values, threshold = cohort.labels, cohort.values(variant), cohort.threshold(variant)

    def of(index: int, dimension: str) -> str:
        s = cohort.scores[index]
        if dimension == "hips assessed":
            return {1: "one hip", 2: "two hips"}.get(len(s.assessed), "none")
        if dimension == PROFILE_DIMENSION:
            return cohort.cases[index].profile or "unknown"
        g = s.groups
        return {"scanner": g.scanner, "sex": g.sex, "age band": g.age_band}[dimension]

    dimensions = list(DIMENSIONS)
    if len({c.profile for c in cohort.cases} - {None}) > 1:  # synth cohorts of several sites
        dimensions.append(PROFILE_DIMENSION)
    rows: list[SubgroupRow] = []
    for dimension in dimensions:
        not_assessable = [] if dimension == "hips assessed" else [of(i, dimension) for i in dropped]
        rows += subgroup_rows(
            dimension, [of(i, dimension) for i in scored], labels, values, threshold, not_assessable
        )
    return rows


def cohort_report(cohort: ScoredCohort, report_dir: Path | None = None) -> EvaluationReport:
    """The report ``triage-node evaluate`` prints: all variants, the bundle variant's
    subgroups; with ``report_dir`` also its files (:func:`~triage_node.train.report.write_report`
    and ``predictions.csv``). ``ValueError`` when no image had an assessable hip."""
    if not len(cohort.scored):
        reasons = "; ".join(f"{n} x {r}" for r, n in cohort.reasons().items())
        raise ValueError(f"none of {len(cohort.cases)} images had an assessable hip ({reasons})")
    model = cohort.model
    predictions, dataset = variant_predictions(cohort), dataset_summary(cohort)
    groups = subgroups(cohort)
    if report_dir is None:
        return evaluate_variants(predictions, dataset, model.synthetic, groups, model.variant)
    report = write_report(
        predictions,
        report_dir,
        dataset,
        model.synthetic,
        subgroups=groups,
        subgroup_variant=model.variant,
    )
    write_predictions(cohort, report_dir / "predictions.csv")
    return report


def _decision(value: float | None, threshold: float) -> str:
    if value is None:
        return "not assessable"
    return "DXA recommended" if value >= threshold else "low likelihood"


def write_predictions(cohort: ScoredCohort, path: Path) -> Path:
    """``predictions.csv``: one row per listed image (see docs/model.md "predictions.csv").

    File (relative to the data directory), SOP Instance UID, label, subgroups (with
    the acquisition profile when the labels CSV has one),
    each hip's reason, the bundle variant's decision at its operating point, then
    per variant the image value, each hip's value and the bilateral value. No
    patient name, ID or birth date (the age is a band).
    """
    model = cohort.model
    variants = list(model.heads)
    header = [
        "file", "sop_instance_uid", "label", "manufacturer", "model_name", "sex", "age_band",
        "hips_assessed", "reason_right", "reason_left", "variant", "threshold", "decision",
    ]  # fmt: skip
    profiles = any(c.profile is not None for c in cohort.cases)
    if profiles:  # a labels CSV that names the acquisition profile (synth)
        header.insert(7, "profile")
    for v in variants:
        header += [f"{v}_value", f"{v}_right", f"{v}_left", f"{v}_bilateral", f"{v}_positive"]
    lines = []
    for case, s in zip(cohort.cases, cohort.scores, strict=True):
        g = s.groups
        try:
            file = str(case.path.relative_to(cohort.data_dir))
        except ValueError:
            file = case.path.name
        value = s.value(model.variant, model.head.calibration)
        row: list[Any] = [
            file, s.sop_instance_uid, case.label, g.manufacturer, g.model_name, g.sex,
            g.age_band, len(s.assessed), s.side_reasons.get("right") or "",
            s.side_reasons.get("left") or "", model.variant, f"{model.threshold:.6f}",
            _decision(value, model.threshold),
        ]  # fmt: skip
        if profiles:
            row.insert(7, case.profile or "")
        for v in variants:
            head = model.heads[v]
            if not s.assessed:
                row += ["", "", "", "", ""]
                continue
            sides = s.side_values(v, head.calibration)
            image = s.value(v, head.calibration)
            bilateral = float(head.calibration.apply(np.array([s.bilateral_logits[v]]))[0])
            row += [
                f"{image:.6f}",
                f"{sides['right']:.6f}" if "right" in sides else "",
                f"{sides['left']:.6f}" if "left" in sides else "",
                f"{bilateral:.6f}",
                int(image is not None and image >= cohort.threshold(v)),
            ]
        lines.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *lines])
    durable.write_text(path, buffer.getvalue())
    return path
