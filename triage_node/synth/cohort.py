"""Write a synthetic cohort: DICOM files, femur masks, labels.csv and the oracle AUC."""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from triage_node.synth.instance import SITE_COLUMNS, render_instance
from triage_node.synth.sites import SITE_PROFILES
from triage_node.synth.vendors import VENDORS

PROSTHESIS_RATE = 0.03  # per hip
UNILATERAL_RATE = 0.04  # per image
LABEL_COLUMNS = (
    "file",
    "sop_instance_uid",
    "patient_id",
    "kind",
    "age",
    "sex",
    "weight",
    "height",
    "weight_in_header",
    "height_in_header",
    "t_score",
    "label",
    "density_left",
    "density_right",
    "vendor",
    "modality",
    "photometric",
    "bits_stored",
    "rows",
    "cols",
    "spacing_mm",
    "dose",
    "kvp",
    "prosthesis_left",
    "prosthesis_right",
    "laterality",
    "mask_left",
    "mask_right",
    "transfer_syntax",
)


@dataclass
class CohortSummary:
    """What a cohort run wrote."""

    out_dir: Path
    n: int
    prevalence: float  # observed
    vendors: dict[str, int]
    oracle_auc: float | None
    oracle_note: str

    def describe(self) -> str:
        """One paragraph for the terminal."""
        auc = "n/a" if self.oracle_auc is None else f"{self.oracle_auc:.3f}"
        vend = ", ".join(f"{k} {v}" for k, v in sorted(self.vendors.items()))
        return (
            f"synth: wrote {self.n} images to {self.out_dir} (osteoporosis "
            f"{self.prevalence:.1%}; {vend}); oracle AUC {auc} {self.oracle_note}"
        )


def cohort_item_options(
    seed: int, index: int, vendors: Sequence[str], profiles: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-image choices (vendor, prostheses, laterality, profile), from ``(seed, index)`` only.

    ``profiles`` None: no profile (the default cohort, unchanged); else one
    of them per image, drawn from its own stream.
    """
    rng = np.random.default_rng((int(seed), int(index), 7))
    unilateral = rng.random() < UNILATERAL_RATE
    options: dict[str, Any] = {
        "vendor": vendors[int(rng.integers(len(vendors)))],
        "prosthesis": (bool(rng.random() < PROSTHESIS_RATE), bool(rng.random() < PROSTHESIS_RATE)),
        "laterality": (("L", "R")[int(rng.integers(2))]) if unilateral else None,
    }
    if profiles:
        pick = np.random.default_rng((int(seed), int(index), 8)).integers(len(profiles))
        options["profile"] = profiles[int(pick)]
    return options


def _write_item(
    task: tuple[Path, int, int, str, float, tuple[str, ...]],
    profiles: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    out_dir, seed, index, size, prevalence, vendors = task
    opts = cohort_item_options(seed, index, vendors, profiles)
    image = render_instance(seed, index=index, size=size, prevalence=prevalence, **opts)
    stem = f"synth_{index:05d}"
    # each file appears whole or not at all: an interrupted run leaves no truncated file
    # (a cache is keyed by the bytes, and a half-written mask fails training much later)
    for side, mask in image.masks.items():
        path = out_dir / f"{stem}_femur_{side}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path.with_suffix(".png.part"), "PNG")
        os.replace(path.with_suffix(".png.part"), path)
    path = out_dir / f"{stem}.dcm"
    image.dataset.save_as(path.with_suffix(".dcm.part"), enforce_file_format=True)
    os.replace(path.with_suffix(".dcm.part"), path)
    return {"file": f"{stem}.dcm", **image.row}


def oracle_auc(rows: Sequence[dict[str, Any]], folds: int = 5) -> tuple[float | None, str]:
    """Cross-validated AUC of a logistic regression on latent densities + age, sex, weight."""
    y = np.array([int(r["label"]) for r in rows])
    if min(int(y.sum()), int(len(y) - y.sum())) < folds * 2:
        return None, f"(too few of one class for {folds}-fold CV)"
    x = np.array(
        [
            [
                float(r["density_left"]),
                float(r["density_right"]),
                float(r["age"]),
                float(r["sex"] == "M"),
                float(r["weight"]),
            ]
            for r in rows
        ]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p)), f"({folds}-fold CV, latent density + age/sex/weight)"


def generate_cohort(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: str = "full",
    prevalence: float = 0.38,
    vendors: Sequence[str] | None = None,
    jobs: int | None = None,
    progress: bool = True,
    profiles: Sequence[str] | None = None,
) -> CohortSummary:
    """Write ``n`` hip images to ``out_dir`` with masks, ``labels.csv`` and ``oracle.json``.

    Each image depends only on ``(seed, index)``, so the output is the same for
    any ``jobs``. ``profiles``: site profiles to mix (one per image, drawn
    evenly; a profile may fix the vendor); labels.csv then gains the
    :data:`~triage_node.synth.instance.SITE_COLUMNS`. None: the default
    cohort, byte for byte what it always was.
    """
    names = tuple(sorted(vendors or VENDORS))
    unknown = [v for v in names if v not in VENDORS]
    if unknown:
        raise ValueError(f"unknown vendor(s) {unknown}; known: {sorted(VENDORS)}")
    site_names = tuple(dict.fromkeys(profiles)) if profiles else None
    unknown = [p for p in site_names or () if p not in SITE_PROFILES]
    if unknown:
        raise ValueError(f"unknown profile(s) {unknown}; known: {sorted(SITE_PROFILES)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(out, int(seed), i, size, float(prevalence), names) for i in range(n)]
    write = functools.partial(_write_item, profiles=site_names)
    jobs = max(1, min(jobs or os.cpu_count() or 1, n))
    bar = tqdm(total=n, desc="synth", unit="img", disable=not progress)
    rows: list[dict[str, Any]] = []
    if jobs == 1:
        for task in tasks:
            rows.append(write(task))
            bar.update()
    else:
        with ProcessPoolExecutor(jobs) as pool:
            for row in pool.map(write, tasks, chunksize=1):
                rows.append(row)
                bar.update()
    bar.close()

    with open(out / "labels.csv", "w", newline="") as fh:
        columns = LABEL_COLUMNS + (SITE_COLUMNS if site_names else ())
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    auc, note = oracle_auc(rows)
    labels = np.array([r["label"] for r in rows])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["vendor"]] = counts.get(r["vendor"], 0) + 1
    oracle = {
        "oracle_auc": auc,
        "method": note.strip("()"),
        "features": ["density_left", "density_right", "age", "sex", "weight"],
        "n": n,
        "seed": seed,
        "size": size,
        "prevalence_requested": prevalence,
        "prevalence_observed": float(labels.mean()),
    }
    if site_names:
        oracle["profiles"] = list(site_names)
    (out / "oracle.json").write_text(json.dumps(oracle, indent=2) + "\n")
    return CohortSummary(out, n, float(labels.mean()), counts, auc, note)
