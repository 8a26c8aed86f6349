"""The seven-model report of a bundle on a labelled set of radiographs.

Every image goes through the inference path (decode, femur finder, ROI checks,
features); each of the bundle's seven heads gives its bilateral probability
and is judged at its own operating point. Images with no assessable hip have
no probability and are counted, not scored. The table, plots and JSON come
from :mod:`triage_node.train.report`. When ``oracle.json`` (written by
``triage-node synth``) sits beside the labels, the cohort's oracle AUC (what
the latent bone density plus clinical data can achieve) is printed with it.
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
from triage_node.score.model import BundleScoringModel
from triage_node.train.pipeline import read_cases, single_thread_worker
from triage_node.train.report import VariantPredictions

_WORKER_MODEL: BundleScoringModel | None = None


@dataclass(frozen=True)
class CaseScores:
    """One image's combined probability under each variant (None: no assessable hip)."""

    probabilities: dict[str, float] | None
    reason: str | None


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
    combined: dict[str, float] = {}
    for variant, head in model.heads.items():
        probability = model.probabilities(features, head)[1]
        if probability is not None:  # never None: the image has an assessable hip
            combined[variant] = probability
    return CaseScores(combined, None)


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
    predictions = [
        VariantPredictions(
            variant=v,
            labels=labels,
            probability=np.array([scores[i].probabilities[v] for i in scored]),  # type: ignore[index]
            threshold=model.threshold if v == model.variant else model.operating_points[v],
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
