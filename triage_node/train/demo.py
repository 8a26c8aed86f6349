"""The demo bundle build (``bench/build_demo_bundle``): cohorts, networks, bundle, figures.

``python -m triage_node.train.demo [--work cohorts/demo-bundle] [--out DIR] ...``

The multi-site recipe (docs/model.md "Demo bundle"): the networks learn from the
generator's own images, the bundle's heads from images of every acquisition
profile. Each step calls what the ``triage-node`` command named beside it calls,
with the same options, and skips what an earlier (interrupted) run already did:

Resumable: rerun the same command after an interruption.

1. Synthetic cohorts under ``WORK``, written image by image (a finished image
   leaves its labels row in ``WORK/.rows/<cohort>/``; images without one are
   rendered again). Image ``i`` of a cohort depends only on ``(seed, i)``, so
   the files, ``labels.csv`` and ``oracle.json`` are those ``triage-node synth
   --out DIR --n N --seed S --size small [--profile P ...]`` writes:

   * ``dev-small``: 1,600 images, seed 20240601 (the networks' development images);
   * ``test``: 400 images, seed 20240602 (held out);
   * ``dev-sites``: 1,400 images, seed 20241201, the seven profiles of
     :data:`SITE_PROFILES` mixed one per image (the bundle's development images);
   * ``test-sites``: 1,050 images, seed 20241202, the same profiles (held out);
   * optional full-size ``dev-full`` (seed 20240603, joined to ``dev-small`` in
     ``WORK/dev/labels.csv``) and ``test-full`` (seed 20240604), 0 by default.
2. ``WORK/stability-rank.json``: texture reproducibility across acquisition profiles
   with the rank normalisation, as ``bench/texture_stability --n 60 --normalisation
   rank --out ...`` measures it (:func:`~triage_node.train.stability.measure_stability`:
   seed 7700, profiles cr_unshuttered, dx_clipped, compressed); kept when it exists.
3. ``WORK/networks``: ``triage-node train --data WORK/dev-small`` (cpu preset: femur
   finder, Siamese with processing augmentation, heads) with the feature cache
   ``WORK/cache``; kept when its ``manifest.json`` exists.
4. The bundle (``--out``): ``triage-node train --data WORK/dev-sites --networks-from
   WORK/networks --texture-normalisation rank --texture-stability
   WORK/stability-rank.json``: selection, heads, calibration, operating points and
   reference on the multi-site images, on those networks.
5. ``triage-node evaluate --bundle OUT --report WORK/report-<cohort>`` on each test
   cohort (``test``, ``test-sites``, ``test-full``).
6. ``triage-node evaluate --hold-out-profile all`` on ``dev-sites`` with
   ``--test-data WORK/test-sites``, the bundle beside it and the step-3 networks,
   into ``WORK/holdout`` (``--no-holdout``: skipped).

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
from triage_node.score.texture import RANK, ZSCORE, TextureSettings
from triage_node.synth.cohort import LABEL_COLUMNS, _write_item, oracle_auc
from triage_node.synth.instance import SITE_COLUMNS
from triage_node.synth.vendors import VENDORS
from triage_node.train.evaluate import cohort_report, score_cohort
from triage_node.train.holdout import ALL, HoldoutOptions, render_holdout, run_holdout
from triage_node.train.pipeline import TrainingOptions, train_bundle
from triage_node.train.presets import PRESETS, training_options
from triage_node.train.report import render_markdown
from triage_node.train.stability import (
    DEFAULT_PROFILES,
    DEFAULT_SEED,
    DEFAULT_THRESHOLD,
    Stability,
    measure_stability,
)

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
#: Each stability subject is rendered and measured under this many profiles.
STABILITY_PROFILES = len(DEFAULT_PROFILES)
#: Typical epochs before early stopping ends Siamese training (patience 5): 16-19 measured.
TYPICAL_EPOCHS = 18
#: torch on 2 free cores vs 1 thread (measured 1.4x; slower than 1 thread when cores are shared).
TWO_THREAD_SPEEDUP = 1.4

DEV_SMALL_SEED = 20240601
TEST_SEED = 20240602
DEV_FULL_SEED = 20240603
TEST_FULL_SEED = 20240604
DEV_SITES_SEED = 20241201
TEST_SITES_SEED = 20241202
#: The acquisition profiles of the multi-site cohorts (``synth --profile``), in this order.
SITE_PROFILES = (
    "default", "cr_unshuttered", "dx_clipped", "shutter", "compressed", "grid_marker", "metal",
)  # fmt: skip
PREVALENCE = 0.38
STABILITY_FILE = "stability-rank.json"
NETWORKS = "networks"


@dataclass(frozen=True)
class CohortSpec:
    name: str
    n: int
    seed: int
    size: str
    profiles: tuple[str, ...] = ()  # synth --profile: one of them per image; (): none


def _item(task: tuple[Any, ...]) -> dict[str, Any]:
    """Render image ``index`` of a cohort: ``(out, rows_dir, seed, index, size[, profiles])``."""
    out, rows_dir, seed, index, size = task[:5]
    profiles = task[5] if len(task) > 5 else None
    row = _write_item(
        (out, seed, index, size, PREVALENCE, tuple(sorted(VENDORS))), profiles=profiles or None
    )
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
    # as generate_cohort: each profile once, in the order given
    profiles = tuple(dict.fromkeys(spec.profiles))
    todo = [
        i
        for i in range(spec.n)
        if not (rows_dir / f"{i:05d}.json").exists() or not (out / f"synth_{i:05d}.dcm").exists()
    ]
    tasks = [(out, rows_dir, spec.seed, i, spec.size, profiles) for i in todo]
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
        columns = LABEL_COLUMNS + (SITE_COLUMNS if profiles else ())
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    auc, note = oracle_auc(rows)
    labels = [int(r["label"]) for r in rows]
    oracle: dict[str, Any] = {
        "oracle_auc": auc,
        "method": note.strip("()"),
        "features": ["density_left", "density_right", "age", "sex", "weight"],
        "n": spec.n,
        "seed": spec.seed,
        "size": spec.size,
        "prevalence_requested": PREVALENCE,
        "prevalence_observed": sum(labels) / len(labels),
    }
    if profiles:
        oracle["profiles"] = list(profiles)
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
    specs: list[CohortSpec],
    jobs: int,
    threads: int,
    finder_images: int,
    finder_epochs: int,
    stability_subjects: int = 0,
    holdout: bool = True,
) -> dict[str, float]:
    """Minutes per stage for a fresh run on ``jobs`` cores (nothing cached yet).

    ``dev-small``/``dev-full`` train the networks (and their own heads), ``dev-sites``
    the bundle's heads; every ``test*`` cohort is evaluated; the held-out-profile
    evaluation fits the heads once per profile but ``default`` on the other profiles'
    ``dev-sites`` images and scores that profile's ``test-sites`` images (and the
    bundle all of them).
    """
    by_name = {s.name: s for s in specs}
    networks = [s for s in specs if s.name in ("dev-small", "dev-full")]
    tests = [s for s in specs if s.name.startswith("test")]
    n_net = sum(s.n for s in networks)
    sites = by_name.get("dev-sites")
    n_sites = sites.n if sites else 0
    profiles = len(sites.profiles) if sites else 0
    folds = max(0, profiles - 1) if holdout else 0  # default is never held out
    test_sites = by_name.get("test-sites")
    held = test_sites.n if test_sites else n_sites  # images of the held-out profiles, all folds
    held = held * folds // max(1, profiles)
    speedup = TWO_THREAD_SPEEDUP if min(jobs, threads) > 1 else 1.0
    render_measure = COST_S["synth small"] + COST_S["features small"]
    out = {
        "cohorts": sum(s.n * COST_S[f"synth {s.size}"] for s in specs) / jobs,
        "texture stability": stability_subjects * STABILITY_PROFILES * render_measure / jobs,
        "features (networks)": sum(s.n * COST_S[f"features {s.size}"] for s in networks) / jobs,
        "femur finder": min(finder_images, n_net) * finder_epochs * COST_S["finder step"] / speedup,
        # 75% train split, minority oversampled (~+25% pairs), plus validation forward passes
        "siamese": n_net * 0.75 * 1.25 * TYPICAL_EPOCHS * COST_S["siamese step"] / speedup
        + n_net * 0.25 * TYPICAL_EPOCHS * COST_S["siamese step"] / 3,
        "heads (networks bundle)": n_net * COST_S["lasso"],
        "features (dev-sites)": n_sites * COST_S["features small"] / jobs,
        "heads (the bundle, dev-sites)": n_sites * COST_S["lasso"],
        "evaluate": sum(s.n * COST_S[f"evaluate {s.size}"] for s in tests) / jobs,
        # per fold the heads on the other profiles' images; the held-out images scored by
        # their fold's bundle and by the bundle
        "held-out profiles": folds * n_sites * (profiles - 1) / max(1, profiles) * COST_S["lasso"]
        + 2 * held * COST_S["evaluate small"] / jobs,
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
    parser.add_argument(
        "--dev-small", type=int, default=1600, help="small development images of the networks"
    )
    parser.add_argument(
        "--dev-full",
        type=int,
        default=0,
        help="full-size development images of the networks (with dev-small)",
    )
    parser.add_argument("--test", type=int, default=400, help="small held-out test images")
    parser.add_argument(
        "--dev-sites",
        type=int,
        default=1400,
        help="small multi-site development images of the bundle's heads",
    )
    parser.add_argument(
        "--test-sites", type=int, default=1050, help="small multi-site held-out test images"
    )
    parser.add_argument("--test-full", type=int, default=0, help="full-size held-out test images")
    parser.add_argument(
        "--stability-subjects",
        type=int,
        default=60,
        help="subjects of the texture stability measurement (bench/texture_stability --n)",
    )
    parser.add_argument(
        "--no-holdout",
        dest="holdout",
        action="store_false",
        help="skip the held-out-profile evaluation (WORK/holdout)",
    )
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
    for flag in ("dev_small", "dev_sites", "stability_subjects"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("dev_full", "test", "test_sites", "test_full"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0")

    work: Path = args.work.resolve()
    out: Path = args.out
    jobs = max(1, args.jobs)
    threads = max(1, args.threads or jobs)
    specs = [
        s
        for s in (
            CohortSpec("dev-small", args.dev_small, DEV_SMALL_SEED, "small"),
            CohortSpec("dev-full", args.dev_full, DEV_FULL_SEED, "full"),
            CohortSpec("test", args.test, TEST_SEED, "small"),
            CohortSpec("test-full", args.test_full, TEST_FULL_SEED, "full"),
            CohortSpec("dev-sites", args.dev_sites, DEV_SITES_SEED, "small", SITE_PROFILES),
            CohortSpec("test-sites", args.test_sites, TEST_SITES_SEED, "small", SITE_PROFILES),
        )
        if s.n > 0
    ]
    estimate = estimate_minutes(
        specs,
        jobs,
        threads,
        args.finder_images,
        args.finder_epochs,
        args.stability_subjects,
        args.holdout,
    )
    print(f"demo bundle build in {work} -> {out}")
    for s in specs:
        mix = f", profiles {' '.join(s.profiles)}" if s.profiles else ""
        print(f"  cohort {s.name:10s} {s.n:5d} {s.size:5s} images, seed {s.seed}{mix}")
    print(f"estimate for a fresh run on {jobs} core(s) (cached steps are skipped):")
    for stage, minutes in estimate.items():
        print(f"  {stage:30s} {minutes:6.1f} min")
    print(f"  {'total':30s} {sum(estimate.values()):6.1f} min")
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

    def failed(what: str, exc: Exception) -> int:
        print(f"demo bundle: {what} failed: {exc}", file=sys.stderr)
        return 1

    # 1. cohorts (triage-node synth)
    dirs = {}
    for spec in specs:
        dirs[spec.name], rendered = resumable_cohort(work, spec, jobs, args.progress)
        print(f"cohort {spec.name}: {rendered} rendered, {spec.n - rendered} already there")
    done("cohorts")

    # 2. texture stability (bench/texture_stability --normalisation rank --out ...)
    stability_file = work / STABILITY_FILE
    if stability_file.exists():
        stability = Stability.load(stability_file)
        print(f"texture stability {stability_file}: already there ({stability.subjects} subjects)")
    else:
        try:
            stability = measure_stability(
                args.stability_subjects,
                DEFAULT_SEED,
                DEFAULT_PROFILES,
                (RANK,),
                DEFAULT_THRESHOLD,
                "small",
                jobs,
                args.progress,
            ).stabilities[0]
        except ValueError as exc:
            return failed("texture stability", exc)
        stability.write(stability_file, stability.values)
        print(f"wrote {stability_file}: {len(stability.kept)} features kept ({RANK})")
    done(f"texture stability ({stability_file})")

    def options(**given: Any) -> TrainingOptions:
        """``triage-node train``'s options (commands/train.py) with its defaults."""
        return training_options(
            args.preset,
            {"epochs": args.epochs or None},
            variant="DTC",
            seed=args.seed,
            finder_epochs=args.finder_epochs,
            finder_images=args.finder_images or None,
            jobs=jobs,
            torch_threads=threads,
            cache_dir=work / "cache",
            progress=args.progress,
            **given,
        )

    # 3. the networks (triage-node train --data WORK/dev-small ...)
    networks = work / NETWORKS
    if (networks / "manifest.json").exists():
        print(f"networks {networks}: already there")
    else:
        if "dev-full" in dirs:
            data, labels = (
                work,
                join_labels(work, [dirs["dev-small"], dirs["dev-full"]], work / "dev"),
            )
        else:
            data, labels = dirs["dev-small"], dirs["dev-small"] / "labels.csv"
        try:
            train_bundle(
                data, labels, networks, options(texture=TextureSettings(normalisation=ZSCORE))
            )
        except ValueError as exc:
            return failed("training the networks", exc)
    done(f"networks ({networks})")

    # 4. the bundle (triage-node train --data WORK/dev-sites --networks-from WORK/networks ...)
    rank = TextureSettings(normalisation=RANK)
    sites = dirs["dev-sites"]
    try:
        train_bundle(
            sites,
            sites / "labels.csv",
            out,
            options(networks_from=networks, texture=rank, texture_stability=stability),
        )
    except ValueError as exc:
        return failed("training the bundle", exc)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"bundle {out}: {size_mb:.2f} MB")
    done(f"bundle ({out})")

    # 5. figures (triage-node evaluate --bundle OUT --report WORK/report-<cohort>)
    for name in ("test", "test-sites", "test-full"):
        if name not in dirs:
            continue
        report_dir = work / f"report-{name}"
        try:
            cohort = score_cohort(out, dirs[name], dirs[name] / "labels.csv", jobs, args.progress)
            report = cohort_report(cohort, report_dir)
        except (ModelUnavailable, ValueError) as exc:
            return failed(f"evaluating {name}", exc)
        print(render_markdown(report))
        done(f"evaluate {name} ({report_dir})")

    # 6. held-out profiles (triage-node evaluate --hold-out-profile all ...)
    if args.holdout:
        holdout_dir = work / "holdout"
        test_sites = dirs.get("test-sites")
        holdout = HoldoutOptions(
            data=sites,
            labels=sites / "labels.csv",
            report=holdout_dir,
            profiles=[ALL],
            test_data=test_sites,
            test_labels=None if test_sites is None else test_sites / "labels.csv",
            bundle=out,
            # evaluate's held-out options (commands/evaluate.py): cpu preset, no overrides
            training=training_options(
                "cpu",
                {},
                seed=args.seed,
                jobs=jobs,
                torch_threads=threads,
                cache_dir=work / "cache",
                networks_from=networks,
                texture=rank,
                texture_stability=stability,
                progress=args.progress,
            ),
            jobs=jobs,
            progress=args.progress,
        )
        try:
            document = run_holdout(holdout)
        except (ModelUnavailable, ValueError) as exc:
            return failed("the held-out-profile evaluation", exc)
        print(render_holdout(document))
        done(f"held-out profiles ({holdout_dir})")
    print(f"demo bundle built in {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
