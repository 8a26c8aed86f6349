"""``triage-node evaluate``: the seven-model report of a bundle on a labelled set of radiographs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from triage_node.train.evaluate import evaluate_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``triage-node evaluate`` (cheap: no heavy imports)."""
    parser.add_argument(
        "--bundle",
        default=None,
        help="bundle directory, or 'demo' (default: [model] bundle of the config)",
    )
    parser.add_argument("--data", type=Path, required=True, help="directory of DICOM files")
    parser.add_argument("--labels", type=Path, required=True, help="labels CSV (as for train)")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write report.md, report.json, roc.png, calibration.png here",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes for feature extraction"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print (and write) the report; 0 ok, 1 failure, 2 bad usage."""
    from triage_node.assessment import ModelUnavailable
    from triage_node.config import load_settings
    from triage_node.score.bundle import DEMO_BUNDLE_DIR, bundle_path
    from triage_node.train.report import evaluate_variants, render_markdown, write_report

    if args.bundle == "demo":
        path = DEMO_BUNDLE_DIR
    elif args.bundle:
        path = Path(args.bundle)
    else:
        path = bundle_path(load_settings(args.config))
    if not args.labels.is_file() or not args.data.is_dir():
        print("evaluate: --labels must be a file and --data a directory")
        return 2
    try:
        model, predictions, dataset = evaluate_bundle(
            path, args.data, args.labels, max(1, args.jobs), not args.quiet
        )
        if args.report:
            report = write_report(predictions, args.report, dataset, model.synthetic)
        else:
            report = evaluate_variants(predictions, dataset, model.synthetic)
    except ModelUnavailable as exc:
        print(f"evaluate: {exc}")
        return 1
    except ValueError as exc:
        print(f"evaluate: {exc}")
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=float))
    else:
        print(render_markdown(report))
        if args.report:
            print(f"evaluate: report written to {args.report}")
    return 0
