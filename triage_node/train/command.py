"""``triage-node train``: train a model bundle from labelled radiographs (``train/pipeline.py``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``triage-node train`` (cheap: no heavy imports)."""
    parser.add_argument("--data", type=Path, required=True, help="directory of DICOM files")
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="labels CSV: synth labels.csv, or a site CSV with file or "
        "sop_instance_uid, label or t_score, optional mask_left/mask_right",
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument(
        "--model",
        default="DTC",
        choices=["C", "T", "TC", "D", "DC", "DT", "DTC"],
        help="variant the bundle scores with (all seven heads are stored)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation, sampling")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="feature cache directory (resumable; keyed by file sha256)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for feature extraction (default: all cores)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for the CNNs (default: --jobs)"
    )
    parser.add_argument("--epochs", type=int, default=30, help="Siamese training epochs")
    parser.add_argument("--finder-epochs", type=int, default=40, help="femur finder epochs")
    parser.add_argument(
        "--finder-negatives",
        type=int,
        default=16,
        help="synthetic chest/blank images that teach the finder 'not found'",
    )
    parser.add_argument(
        "--finder-bundle",
        type=Path,
        default=None,
        help="reuse this bundle's femur finder when no masks are given (default: the demo bundle)",
    )
    parser.add_argument("--validation-fraction", type=float, default=0.25)
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.90,
        help="operating point: sensitivity to reach on validation",
    )
    parser.add_argument(
        "--bilateral-selection",
        action="store_true",
        help="keep only texture/deep features LASSO selects on both sides",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Train and write the bundle; 0 ok, 1 on bad data, 2 on bad flags."""
    from triage_node.train.pipeline import TrainingOptions, train_bundle

    if not args.data.is_dir():
        print(f"train: --data {args.data} is not a directory")
        return 2
    if not args.labels.is_file():
        print(f"train: --labels {args.labels} is not a file")
        return 2
    try:
        options = TrainingOptions(
            variant=args.model,
            seed=args.seed,
            epochs=args.epochs,
            finder_epochs=args.finder_epochs,
            finder_negatives=args.finder_negatives,
            jobs=max(1, args.jobs),
            torch_threads=max(1, args.threads or args.jobs),
            cache_dir=args.cache,
            validation_fraction=args.validation_fraction,
            target_sensitivity=args.target_sensitivity,
            bilateral=args.bilateral_selection,
            finder_bundle=args.finder_bundle,
            progress=not args.quiet,
        )
    except ValueError as exc:
        print(f"train: {exc}")
        return 2
    try:
        train_bundle(args.data, args.labels, args.out, options)
    except ValueError as exc:
        print(f"train: {exc}")
        return 1
    return 0
