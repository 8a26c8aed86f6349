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
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from tqdm import tqdm

from triage_node.score.bundle import load_bundle
from triage_node.score.features import texture_bases
from triage_node.score.model import MODEL_FILE, BundleScoringModel
from triage_node.train.head import image_values
from triage_node.train.pipeline import read_cases, single_thread_worker
from triage_node.train.report import VariantPredictions

_WORKER_MODEL: BundleScoringModel | None = None


@dataclass(frozen=True)
class CaseScores:
    """One image's values under each variant (None: no assessable hip).

    ``probabilities``: the image value the node decides on (highest assessed
    side); ``bilateral``: the bilateral head's value on both hips (for comparison).
    """

    probabilities: dict[str, float] | None
    reason: str | None
    bilateral: dict[str, float] | None = None


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
    names = texture_bases([n for h in model.heads.values() for n in h.feature_names])
    features = model.image_features(pydicom.dcmread(path), texture_names=names)
    if not features.hips:
        reasons = sorted({f"{s}: {r}" for s, r in features.not_assessable.items()})
        return CaseScores(None, "; ".join(reasons))
    values: dict[str, float] = {}
    bilateral: dict[str, float] = {}
    for variant, head in model.heads.items():
        per_side, combined = model.probabilities(features, head)
        sides = list(per_side)
        values[variant] = float(
            image_values({s: np.array([per_side[s]]) for s in sides}, [sides])[0]
        )
        if combined is not None:  # never None: the image has an assessable hip
            bilateral[variant] = combined
    return CaseScores(values, None, bilateral)


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


def evaluate_bundle(
    bundle_path: Path, data_dir: Path, labels_csv: Path, jobs: int = 1, progress: bool = False
) -> tuple[Any, list[Any], dict[str, Any]]:
    """Score every listed image with all heads: (model, VariantPredictions list, dataset info)."""
    cases = read_cases(labels_csv, data_dir).cases
    paths = [c.path for c in cases]
    bar = tqdm(total=len(paths), desc="evaluate", unit="img", disable=not progress)
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
    model = _loaded()
    scored = [i for i, s in enumerate(scores) if s.probabilities is not None]
    labels = np.array([cases[i].label for i in scored])
    reasons: dict[str, int] = {}
    for s in scores:
        if s.reason:
            reasons[s.reason] = reasons.get(s.reason, 0) + 1
    bilateral_thresholds = bilateral_operating_points(model)
    predictions = [
        VariantPredictions(
            variant=v,
            labels=labels,
            probability=np.array([scores[i].probabilities[v] for i in scored]),  # type: ignore[index]
            threshold=model.threshold if v == model.variant else model.operating_points[v],
            bilateral=np.array([scores[i].bilateral[v] for i in scored]),  # type: ignore[index]
            bilateral_threshold=bilateral_thresholds.get(v),
        )
        for v in model.heads
    ]
    dataset: dict[str, Any] = {
        "labels": str(labels_csv),
        "images listed": len(cases),
        "images scored": len(scored),
        "not assessable": sum(reasons.values()),
        "bundle": f"{model.name} {model.version}",
    }
    if reasons:
        dataset["not assessable reasons"] = reasons
    oracle = labels_csv.parent / "oracle.json"
    if oracle.exists():
        info = json.loads(oracle.read_text())
        if info.get("oracle_auc") is not None:
            dataset["oracle AUC (synth, latent density + clinical)"] = round(
                float(info["oracle_auc"]), 3
            )
    return model, predictions, dataset
