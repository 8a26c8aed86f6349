"""The demo bundle build (``bench/build_demo_bundle``): cohorts, training, evaluation, resumable.

``python -m triage_node.train.demo [--work cohorts/demo-bundle] [--out DIR] ...``

Steps, each one skipping what an earlier (interrupted) run already did:

1. Synthetic cohorts under ``WORK``, written image by image (a finished image
   leaves its labels row in ``WORK/.rows/<cohort>/``; images without one are
   rendered again). Image ``i`` of a cohort depends only on ``(seed, i)``, so
   the files are those ``triage-node synth --out DIR --n N --seed S --size Z``
   writes, and so are ``labels.csv`` and ``oracle.json``.

   * ``dev-small``: 1,600 small images, seed 20240601 (the development cohort);
   * ``dev-full``: 0 full-size images by default, seed 20240603 (``--dev-full``);
   * ``test``: 400 small images, seed 20240602 (held out);
   * ``test-full``: 0 full-size images by default, seed 20240604 (``--test-full``).

   ``WORK/dev/labels.csv`` joins the development cohorts (paths relative to
   ``WORK``).
2. Training as ``triage-node train`` does it (:func:`~triage_node.train.pipeline.train_bundle`,
   cpu preset unless flags say otherwise) with the feature cache ``WORK/cache``
   (per-image features and the finder weights).
3. Evaluation as ``triage-node evaluate`` does it on each test cohort:
   ``WORK/report-test/`` (and ``WORK/report-test-full/``).

It prints an estimate of the whole run before starting (from the per-image
costs measured on 2 cores, docs/model.md "Training cost on 2 CPUs"), then
each stage's progress and time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from triage_node.assessment import ModelUnavailable
from triage_node.durable import write_text
from triage_node.synth.cohort import LABEL_COLUMNS, _write_item, oracle_auc
from triage_node.synth.vendors import VENDORS
from triage_node.train.evaluate import evaluate_bundle
from triage_node.train.pipeline import train_bundle
from triage_node.train.presets import PRESETS, training_options
from triage_node.train.report import render_markdown, write_report

#: Seconds per image on ONE core of the 2-core reference machine (docs/model.md).
COST_S = {
    "synth small": 0.75,
    "synth full": 2.6,
    # decode, finder input, ROI cut, 325 x 2 texture on the 256 px / 0.5 mm ROI
    "features small": 0.55,
    "features full": 3.5,  # decode and resampling a full-size image dominate
    "finder step": 0.033,  # per image and epoch, one thread
    "siamese step": 0.023,  # per training pair and epoch, one thread, CNN 128 px, 16 channels
    "lasso": 0.25,  # LASSO + seven heads, per development image
    "evaluate small": 0.5,
    "evaluate full": 4.0,
}
#: Typical epochs before early stopping ends Siamese training (patience 5): 16-19 measured.
TYPICAL_EPOCHS = 18
#: torch on 2 free cores vs 1 thread (measured 1.4x; slower than 1 thread when cores are shared).
TWO_THREAD_SPEEDUP = 1.4

DEV_SMALL_SEED = 20240601
TEST_SEED = 20240602
DEV_FULL_SEED = 20240603
TEST_FULL_SEED = 20240604


@dataclass(frozen=True)
class CohortSpec:
    name: str
    n: int
    seed: int
    size: str


def _item(task: tuple[Path, Path, int, int, str]) -> dict[str, Any]:
    out, rows_dir, seed, index, size = task
    row = _write_item((out, seed, index, size, 0.38, tuple(sorted(VENDORS))))
    # the row marks the image as finished
    write_text(rows_dir / f"{index:05d}.json", json.dumps(row), fsync=False)
    return row


def resumable_cohort(
    work: Path, spec: CohortSpec, jobs: int, progress: bool = True
) -> tuple[Path, int]:
    """Write ``spec`` into ``work/spec.name`` (as ``triage-node synth``), skipping done images.

    Returns (cohort directory, images rendered now).
    """
    out = work / spec.name
    rows_dir = work / ".rows" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    rows_dir.mkdir(parents=True, exist_ok=True)
    if (out / "labels.csv").exists() and (out / "oracle.json").exists():
        with open(out / "labels.csv") as fh:
            if sum(1 for _ in fh) - 1 == spec.n:
                return out, 0
    todo = [
        i
        for i in range(spec.n)
        if not (rows_dir / f"{i:05d}.json").exists() or not (out / f"synth_{i:05d}.dcm").exists()
    ]
    tasks = [(out, rows_dir, spec.seed, i, spec.size) for i in todo]
    bar = tqdm(
        total=spec.n,
        initial=spec.n - len(todo),
        desc=f"synth {spec.name}",
        unit="img",
        disable=not progress,
    )
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            _item(task)
            bar.update()
    else:
        with ProcessPoolExecutor(min(jobs, len(tasks))) as pool:
            for _ in pool.map(_item, tasks, chunksize=1):
                bar.update()
    bar.close()
    rows = [json.loads((rows_dir / f"{i:05d}.json").read_text()) for i in range(spec.n)]
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    auc, note = oracle_auc(rows)
    labels = [int(r["label"]) for r in rows]
    oracle = {
        "oracle_auc": auc,
        "method": note.strip("()"),
        "features": ["density_left", "density_right", "age", "sex", "weight"],
        "n": spec.n,
        "seed": spec.seed,
        "size": spec.size,
        "prevalence_requested": 0.38,
        "prevalence_observed": sum(labels) / len(labels),
    }
    (out / "oracle.json").write_text(json.dumps(oracle, indent=2) + "\n")
    return out, len(todo)


def join_labels(work: Path, parts: list[Path], out: Path) -> Path:
    """One labels CSV over several cohorts (``file`` relative to ``work``); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    target = out / "labels.csv"
    writer = None
    with open(target, "w", newline="") as dst:
        for part in parts:
            with open(part / "labels.csv", newline="") as src:
                reader = csv.DictReader(src)
                if writer is None:
                    writer = csv.DictWriter(
                        dst, fieldnames=reader.fieldnames or [], lineterminator="\n"
                    )
                    writer.writeheader()
                for row in reader:
                    row["file"] = str((part / row["file"]).relative_to(work))
                    writer.writerow(row)
    return target


def estimate_minutes(
    specs: list[CohortSpec], jobs: int, threads: int, finder_images: int, finder_epochs: int
) -> dict[str, float]:
    """Minutes per stage for a fresh run on ``jobs`` cores (nothing cached yet)."""
    dev = [s for s in specs if s.name.startswith("dev")]
    tests = [s for s in specs if s.name.startswith("test")]
    n_dev = sum(s.n for s in dev)
    speedup = TWO_THREAD_SPEEDUP if min(jobs, threads) > 1 else 1.0
    out = {
        "cohorts": sum(s.n * COST_S[f"synth {s.size}"] for s in specs) / jobs,
        "features": sum(s.n * COST_S[f"features {s.size}"] for s in dev) / jobs,
        "femur finder": min(finder_images, n_dev) * finder_epochs * COST_S["finder step"] / speedup,
        # 75% train split, minority oversampled (~+25% pairs), plus validation forward passes
        "siamese": n_dev * 0.75 * 1.25 * TYPICAL_EPOCHS * COST_S["siamese step"] / speedup
        + n_dev * 0.25 * TYPICAL_EPOCHS * COST_S["siamese step"] / 3,
        "heads (LASSO, 7 variants)": n_dev * COST_S["lasso"],
        "evaluate": sum(s.n * COST_S[f"evaluate {s.size}"] for s in tests) / jobs,
    }
    return {k: v / 60.0 for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("cohorts/demo-bundle"))
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "score" / "demo_bundle",
        help="bundle directory (default: triage_node/score/demo_bundle)",
    )
    parser.add_argument("--dev-small", type=int, default=1600, help="small development images")
    parser.add_argument("--dev-full", type=int, default=0, help="full-size development images")
    parser.add_argument("--test", type=int, default=400, help="small held-out test images")
    parser.add_argument("--test-full", type=int, default=0, help="full-size held-out test images")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default jobs)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu", help="train preset (default cpu)"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--finder-images", type=int, default=400)
    parser.add_argument("--finder-epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--estimate", action="store_true", help="print the estimate and stop")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars on stderr (default: on)",
    )
    args = parser.parse_args(argv)

    work: Path = args.work.resolve()
    jobs = max(1, args.jobs)
    threads = max(1, args.threads or jobs)
    specs = [
        s
        for s in (
            CohortSpec("dev-small", args.dev_small, DEV_SMALL_SEED, "small"),
            CohortSpec("dev-full", args.dev_full, DEV_FULL_SEED, "full"),
            CohortSpec("test", args.test, TEST_SEED, "small"),
            CohortSpec("test-full", args.test_full, TEST_FULL_SEED, "full"),
        )
        if s.n > 0
    ]
    estimate = estimate_minutes(specs, jobs, threads, args.finder_images, args.finder_epochs)
    print(f"demo bundle build in {work} -> {args.out}")
    for s in specs:
        print(f"  cohort {s.name:10s} {s.n:5d} {s.size:5s} images, seed {s.seed}")
    print(f"estimate for a fresh run on {jobs} core(s) (cached steps are skipped):")
    for stage, minutes in estimate.items():
        print(f"  {stage:28s} {minutes:6.1f} min")
    print(f"  {'total':28s} {sum(estimate.values()):6.1f} min")
    if args.estimate:
        return 0

    started = time.monotonic()
    stage_start = started

    def done(stage: str) -> None:
        nonlocal stage_start
        now = time.monotonic()
        print(
            f"== {stage}: {(now - stage_start) / 60:.1f} min "
            f"(total {(now - started) / 60:.1f} min)",
            flush=True,
        )
        stage_start = now

    dirs = {}
    for spec in specs:
        dirs[spec.name], rendered = resumable_cohort(work, spec, jobs, args.progress)
        print(f"cohort {spec.name}: {rendered} rendered, {spec.n - rendered} already there")
    done("cohorts")
    dev_parts = [dirs[n] for n in ("dev-small", "dev-full") if n in dirs]
    labels = join_labels(work, dev_parts, work / "dev")
    try:
        options = training_options(
            args.preset,
            {"epochs": args.epochs or None},
            variant="DTC",
            seed=args.seed,
            jobs=jobs,
            torch_threads=threads,
            cache_dir=work / "cache",
            finder_images=args.finder_images or None,
            finder_epochs=args.finder_epochs,
            progress=args.progress,
        )
        train_bundle(work, labels, args.out, options)
    except ValueError as exc:
        print(f"demo bundle: training failed: {exc}", file=sys.stderr)
        return 1
    done("training")
    size_mb = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    print(f"bundle {args.out}: {size_mb:.2f} MB")
    for name in ("test", "test-full"):
        if name not in dirs:
            continue
        report_dir = work / f"report-{name}"
        try:
            model, predictions, dataset = evaluate_bundle(
                args.out, dirs[name], dirs[name] / "labels.csv", jobs, args.progress
            )
            report = write_report(predictions, report_dir, dataset, model.synthetic)
        except (ModelUnavailable, ValueError) as exc:
            print(f"demo bundle: evaluating {name} failed: {exc}", file=sys.stderr)
            return 1
        print(render_markdown(report))
        done(f"evaluate {name} ({report_dir})")
    print(f"demo bundle built in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
