"""``triage-node evaluate``: the seven-model report of a bundle on a labelled set of radiographs.

Prints the report (Markdown, or with ``--json`` one JSON document), with the
bundle variant's subgroups (scanner, sex, age band, hips assessed), and with
``--report DIR`` writes report.md, report.json, roc.png, calibration.png,
subgroups.png and predictions.csv (every image's values, decision and reasons).
With ``--hold-out-profile P ...`` it trains a bundle per held-out acquisition
profile on the others and evaluates it on that profile's images
(``train/holdout.py``; docs/model.md "Held-out profiles").
Exit 0 ok, 1 when the bundle or the data cannot be used, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triage_node.assessment import ModelUnavailable
from triage_node.commands.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_bundle_argument,
    add_jobs_argument,
    add_progress_argument,
    error,
    existing_directory,
    existing_file,
    resolve_bundle,
)
from triage_node.commands.train import add_fitting_arguments, fitting_options
from triage_node.config import load_settings
from triage_node.score.texture import ZSCORE
from triage_node.train.evaluate import cohort_report, score_cohort
from triage_node.train.holdout import HoldoutOptions, HoldoutUsageError, render_holdout, run_holdout
from triage_node.train.presets import training_options
from triage_node.train.report import render_markdown

#: The flags of the held-out-profile mode only (dest names).
HOLDOUT_ONLY = (
    "test_data", "test_labels", "networks_from", "cache", "seed", "threads",
    "texture_normalisation", "texture_stability", "texture_budget",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``evaluate [--bundle B] --data DIR --labels CSV [--report DIR] [--json]``."""
    add_bundle_argument(
        parser,
        default="[model] bundle of the config; with --hold-out-profile: none, else the "
        "in-profile bundle scored on the same held-out images",
    )
    parser.add_argument(
        "--data",
        type=existing_directory,
        required=True,
        metavar="DIR",
        help="directory of DICOM files",
    )
    parser.add_argument(
        "--labels",
        type=existing_file,
        required=True,
        metavar="CSV",
        help="labels CSV (as for train)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="write report.md, report.json, roc.png, calibration.png, subgroups.png and "
        "predictions.csv here",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    add_jobs_argument(parser)
    add_progress_argument(parser)
    holdout = parser.add_argument_group(
        "held-out profiles",
        "--hold-out-profile P [P ...] --report DIR: per profile P, train a bundle on the "
        "--data/--labels images of every other profile (the 'default' profile, the "
        "project's own images, is never held out and always trained on) into DIR/P/bundle "
        "and evaluate it on P's images; DIR/holdout.md, holdout.json, holdout.png. "
        "--networks-from is refused when the bundle's model.json does not record the "
        "profiles its networks were trained on, or names a held-out one",
    )
    holdout.add_argument(
        "--hold-out-profile",
        nargs="+",
        default=None,
        metavar="P",
        help="acquisition profile(s) of the labels' 'profile' column to hold out, or 'all' "
        "(every profile but default)",
    )
    holdout.add_argument(
        "--test-data",
        type=existing_directory,
        default=None,
        metavar="DIR",
        help="score each fold on this set's images of the held-out profile (default: "
        "those of --data, which the fold does not train on)",
    )
    holdout.add_argument(
        "--test-labels", type=existing_file, default=None, metavar="CSV", help="its labels"
    )
    add_fitting_arguments(holdout)  # as for train: each fold is fitted so


def main(args: argparse.Namespace) -> int:
    """Evaluate, print (and write) the report."""
    if args.hold_out_profile:
        return _holdout(args)
    given = [f"--{n.replace('_', '-')}" for n in HOLDOUT_ONLY if _given(args, n)]
    if given:
        return error(args.command, f"{', '.join(given)} only with --hold-out-profile", EXIT_USAGE)
    # The config is read only for its [model] bundle.
    settings = load_settings(args.config) if args.bundle is None else None
    path = resolve_bundle(args.bundle, settings)
    try:
        report = cohort_report(
            score_cohort(path, args.data, args.labels, args.jobs, args.progress), args.report
        )
    except (ModelUnavailable, ValueError) as exc:
        return error(args.command, str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=float))
    else:
        print(render_markdown(report))
        if args.report:
            print(f"evaluate: report written to {args.report}")
    return EXIT_OK


def _given(args: argparse.Namespace, name: str) -> bool:
    defaults = {"seed": 0, "texture_normalisation": ZSCORE, "texture_budget": 0.25}
    return getattr(args, name) != defaults.get(name)


def _holdout(args: argparse.Namespace) -> int:
    """``--hold-out-profile``: the folds (``train/holdout.py``), then print holdout.md/json."""
    if args.report is None:
        return error(args.command, "--hold-out-profile needs --report DIR", EXIT_USAGE)
    try:
        training = training_options("cpu", {}, **fitting_options(args))
        options = HoldoutOptions(
            data=args.data,
            labels=args.labels,
            report=args.report,
            profiles=args.hold_out_profile,
            test_data=args.test_data,
            test_labels=args.test_labels,
            bundle=None if args.bundle is None else resolve_bundle(args.bundle, None),
            training=training,
            jobs=args.jobs,
            progress=args.progress,
        )
    except ValueError as exc:
        return error(args.command, str(exc), EXIT_USAGE)
    try:
        document = run_holdout(options)
    except HoldoutUsageError as exc:
        return error(args.command, str(exc), EXIT_USAGE)
    except (ModelUnavailable, ValueError) as exc:
        return error(args.command, str(exc), EXIT_FAILURE)
    if args.json:
        print(json.dumps(document, indent=2, default=float))
    else:
        print(render_holdout(document))
        print(f"evaluate: held-out report written to {args.report}")
    return EXIT_OK
