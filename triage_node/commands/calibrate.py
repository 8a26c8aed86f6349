"""``triage-node calibrate``: refit a bundle's probability map and operating point on site images.

Scores the site's labelled images with the bundle (as ``evaluate``), refits each
head's Platt map and the operating point for ``--target-sensitivity`` with
cross-validation, without retraining anything else (``train/calibration.py``),
and writes a new bundle version to ``--out`` (never over the input) with the
site's validation reference, plus the calibration report (calibration.md,
calibration.json, reliability.png) to ``--report`` (default: ``OUT-calibration``
beside the bundle). Exit 0 ok, 1 when the bundle or the data cannot be used or
are too few (nothing written), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triage_node.assessment import ModelUnavailable
from triage_node.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_bundle_argument,
    add_jobs_argument,
    add_progress_argument,
    error,
    existing_directory,
    existing_file,
    fraction,
    positive_int,
    resolve_bundle,
)
from triage_node.config import load_settings
from triage_node.train.calibration import (
    DEFAULT_FOLDS,
    DEFAULT_TARGET,
    calibrate_cohort,
    check_sample_size,
    write_calibrated_bundle,
    write_report,
)
from triage_node.train.evaluate import score_cohort
from triage_node.train.pipeline import read_cases

#: More folds than this leave too few images of a class in each (35 of each is the floor).
MAX_FOLDS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``calibrate [--bundle B] --data DIR --labels CSV --out DIR [--report DIR] ...``."""
    add_bundle_argument(parser, default="[model] bundle of the config")
    parser.add_argument(
        "--data", type=existing_directory, required=True, metavar="DIR", help="directory of DICOM"
    )
    parser.add_argument(
        "--labels",
        type=existing_file,
        required=True,
        metavar="CSV",
        help="site labels CSV (as for evaluate; patient_id groups the folds)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="new bundle directory (must not exist)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="calibration report directory (default: OUT-calibration)",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=fraction,
        default=DEFAULT_TARGET,
        help=f"sensitivity the operating point is chosen for (default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--folds",
        type=positive_int,
        default=DEFAULT_FOLDS,
        help=f"cross-validation folds (default {DEFAULT_FOLDS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    add_jobs_argument(parser)
    add_progress_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Calibrate, write the bundle and the report, print the summary."""
    settings = load_settings(args.config) if args.bundle is None else None
    path = resolve_bundle(args.bundle, settings)
    out: Path = args.out
    if out.resolve() == path.resolve():
        return error(
            args.command, f"--out {out} is the input bundle; give a new directory", EXIT_USAGE
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return error(
            args.command, f"--out {out} exists and is not empty; give a new directory", EXIT_USAGE
        )
    if not 2 <= args.folds <= MAX_FOLDS:
        return error(args.command, f"--folds must be 2 to {MAX_FOLDS}", EXIT_USAGE)
    report_dir: Path = args.report or out.with_name(f"{out.name}-calibration")
    try:
        # The labels alone can already show that there are too few: say so before scoring.
        listed = [c.label for c in read_cases(args.labels, args.data).cases]
        check_sample_size(sum(listed), len(listed) - sum(listed), args.target_sensitivity, "listed")
        cohort = score_cohort(path, args.data, args.labels, args.jobs, args.progress, "calibrate")
        result, reference = calibrate_cohort(cohort, args.target_sensitivity, args.folds, args.seed)
        if result.warning:
            print(f"triage-node calibrate: warning: {result.warning}", file=sys.stderr)
        manifest = write_calibrated_bundle(path, result, reference, out)
        write_report(result, manifest, report_dir)
    except (ModelUnavailable, ValueError) as exc:  # TooFewImages among them: nothing written
        return error(args.command, str(exc))
    chosen = result.variants[result.variant]
    before, after = chosen.at_old, chosen.at_new
    print(
        f"calibrate: {result.variant} threshold {chosen.old_threshold:.3f} -> "
        f"{chosen.new_threshold:.3f}; sensitivity {before.sensitivity.value:.3f} -> "
        f"{after.sensitivity.value:.3f}, specificity {before.specificity.value:.3f} -> "
        f"{after.specificity.value:.3f} (after: out of fold); ECE {chosen.ece_before:.3f} -> "
        f"{chosen.ece_after:.3f}"
    )
    print(f"calibrate: wrote bundle {out} (version {manifest.version}), report {report_dir}")
    return EXIT_OK
