"""``triage-node evaluate``: the seven-model report of a bundle on a labelled set of radiographs.

Prints the report (Markdown, or with ``--json`` one JSON document), with the
bundle variant's subgroups (scanner, sex, age band, hips assessed), and with
``--report DIR`` writes report.md, report.json, roc.png, calibration.png,
subgroups.png and predictions.csv (every image's values, decision and reasons).
Exit 0 ok, 1 when the bundle or the data cannot be used, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triage_node.assessment import ModelUnavailable
from triage_node.commands.common import (
    EXIT_OK,
    add_bundle_argument,
    add_jobs_argument,
    add_progress_argument,
    error,
    existing_directory,
    existing_file,
    resolve_bundle,
)
from triage_node.config import load_settings
from triage_node.train.evaluate import (
    dataset_summary,
    score_cohort,
    subgroups,
    variant_predictions,
    write_predictions,
)
from triage_node.train.report import evaluate_variants, render_markdown, write_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``evaluate [--bundle B] --data DIR --labels CSV [--report DIR] [--json]``."""
    add_bundle_argument(parser, default="[model] bundle of the config")
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


def main(args: argparse.Namespace) -> int:
    """Evaluate, print (and write) the report."""
    # The config is read only for its [model] bundle.
    settings = load_settings(args.config) if args.bundle is None else None
    path = resolve_bundle(args.bundle, settings)
    try:
        cohort = score_cohort(path, args.data, args.labels, args.jobs, args.progress)
        model = cohort.model
        predictions, dataset = variant_predictions(cohort), dataset_summary(cohort)
        groups = subgroups(cohort)
        if args.report:
            report = write_report(
                predictions,
                args.report,
                dataset,
                model.synthetic,
                subgroups=groups,
                subgroup_variant=model.variant,
            )
            write_predictions(cohort, args.report / "predictions.csv")
        else:
            report = evaluate_variants(predictions, dataset, model.synthetic, groups, model.variant)
    except (ModelUnavailable, ValueError) as exc:
        return error(args.command, str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=float))
    else:
        print(render_markdown(report))
        if args.report:
            print(f"evaluate: report written to {args.report}")
    return EXIT_OK
