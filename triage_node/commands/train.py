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
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="cpu",
        help="cpu (default, the demo build): texture on the 256 px / 0.5 mm ROI, "
        "the CNN on it at 128 px / 1.0 mm, Siamese block 1 with 16 channels, early "
        "stopping on validation AUC (patience 5); paper: the paper's Siamese (32-64-128 "
        "channels, 30 epochs, no early stopping), both branches on the 256 px / 0.5 mm "
        "ROI. The flags below override single settings",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="Siamese epochs (maximum with early stopping)"
    )
    parser.add_argument("--roi-spacing", type=float, default=None, help="ROI pixel size, mm")
    parser.add_argument("--roi-size", type=int, default=None, help="ROI edge, pixels")
    parser.add_argument(
        "--deep-factor",
        type=int,
        default=None,
        help="the CNN sees the ROI block-averaged by this factor (2: 256 px at 0.5 mm -> "
        "128 px at 1.0 mm; 1: the ROI itself)",
    )
    parser.add_argument(
        "--siamese-width", type=int, default=None, help="Siamese base width (32: 32-64-128)"
    )
    parser.add_argument(
        "--siamese-first-width", type=int, default=None, help="channels of Siamese block 1"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop Siamese training after this many epochs without validation-AUC gain "
        "(0: no early stopping, run all epochs)",
    )
    parser.add_argument("--finder-epochs", type=int, default=40, help="femur finder epochs")
    parser.add_argument(
        "--finder-images",
        type=int,
        default=400,
        help="masked images the femur finder trains on (a seeded random subset; 0: all). "
        "Finder training costs ~0.03 s per image and epoch on one core",
    )
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


#: Named configurations (see docs/model.md "Training cost on 2 CPUs").
PRESETS: dict[str, dict[str, float | int | None]] = {
    "cpu": {
        "epochs": 30,
        "roi_spacing": 0.5,
        "roi_size": 256,
        "deep_factor": 2,
        "siamese_width": 32,
        "siamese_first_width": 16,
        "patience": 5,
    },
    "paper": {
        "epochs": 30,
        "roi_spacing": 0.5,
        "roi_size": 256,
        "deep_factor": 1,
        "siamese_width": 32,
        "siamese_first_width": 32,
        "patience": 0,
    },
}


def resolved(args: argparse.Namespace) -> dict[str, float | int | None]:
    """The preset's settings with every explicitly given flag on top."""
    settings = dict(PRESETS[getattr(args, "preset", "cpu")])
    for name in settings:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    return settings


def run(args: argparse.Namespace) -> int:
    """Train and write the bundle; 0 ok, 1 on bad data, 2 on bad flags."""
    from triage_node.score.roi import RoiSettings
    from triage_node.score.siamese import SiameseConfig
    from triage_node.train.pipeline import TrainingOptions, train_bundle

    if not args.data.is_dir():
        print(f"train: --data {args.data} is not a directory")
        return 2
    if not args.labels.is_file():
        print(f"train: --labels {args.labels} is not a file")
        return 2
    chosen = resolved(args)
    try:
        options = TrainingOptions(
            variant=args.model,
            seed=args.seed,
            epochs=int(chosen["epochs"]),  # type: ignore[arg-type]
            roi=RoiSettings(
                float(chosen["roi_spacing"]),  # type: ignore[arg-type]
                int(chosen["roi_size"]),  # type: ignore[arg-type]
                int(chosen["deep_factor"]),  # type: ignore[arg-type]
            ),
            siamese=SiameseConfig(
                width=int(chosen["siamese_width"]),  # type: ignore[arg-type]
                first_width=int(chosen["siamese_first_width"]),  # type: ignore[arg-type]
            ),
            patience=int(chosen["patience"]) or None,  # type: ignore[arg-type]
            finder_epochs=args.finder_epochs,
            finder_negatives=args.finder_negatives,
            finder_images=args.finder_images or None,
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
