"""``triage-node train``: train a model bundle from labelled radiographs (``train/pipeline.py``).

Presets and the options built from them are in ``train/presets.py`` (the demo
bundle build uses the same). Exit 0 ok, 1 on bad data, 2 on bad usage.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from triage_node.commands.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_jobs_argument,
    add_progress_argument,
    error,
    existing_directory,
    existing_file,
    positive_int,
    resolve_bundle,
)
from triage_node.score.texture import NORMALISATIONS, ZSCORE, TextureSettings
from triage_node.train.pipeline import train_bundle
from triage_node.train.presets import PRESET_FIELDS, PRESETS, training_options
from triage_node.train.stability import Stability


def add_fitting_arguments(parser: argparse._ActionsContainer) -> None:
    """The flags of how a bundle is fitted that ``train`` and ``evaluate --hold-out-profile``
    (its folds) share: ``--seed --cache --threads --networks-from --texture-budget
    --texture-normalisation --texture-stability`` (read back by :func:`fitting_options`)."""
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation, sampling")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="feature cache directory (resumable; keyed by file sha256)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads for the CNNs (default: --jobs)",
    )
    parser.add_argument(
        "--networks-from",
        default=None,
        metavar="BUNDLE",
        help="reuse this bundle's femur finder and Siamese branch (and their ROI and texture "
        "settings; 'demo' for the shipped demo bundle): only the selection, heads, "
        "calibration and operating points are fitted",
    )
    parser.add_argument(
        "--texture-budget",
        type=float,
        default=0.25,
        help="largest estimated texture extraction cost of a variant, as a fraction of "
        "the full 325-feature set (cost-aware selection of texture groups; default 0.25)",
    )
    parser.add_argument(
        "--texture-normalisation",
        choices=NORMALISATIONS,
        default=ZSCORE,
        help="ROI intensity normalisation before texture: 'zscore' (mean and SD in the mask, "
        "the default) or 'rank' (normal scores of the ranks: unchanged by gamma, LUT or "
        "range compression); recorded in model.json",
    )
    parser.add_argument(
        "--texture-stability",
        type=existing_file,
        default=None,
        metavar="FILE",
        help="keep as texture candidates only the features this stability file lists "
        "(ICC across acquisition profiles, bench/texture_stability --out); its "
        "normalisation must match --texture-normalisation",
    )


def fitting_options(args: argparse.Namespace) -> dict[str, Any]:
    """:class:`~triage_node.train.pipeline.TrainingOptions` fields from the flags of
    :func:`add_fitting_arguments` (and ``--jobs``, ``--progress``); ValueError when the
    stability file is not one."""
    return {
        "seed": args.seed,
        "jobs": args.jobs,
        "torch_threads": args.threads or args.jobs,
        "cache_dir": args.cache,
        "networks_from": None
        if args.networks_from is None
        else resolve_bundle(args.networks_from, None),
        "texture_budget": args.texture_budget,
        "texture": TextureSettings(normalisation=args.texture_normalisation),
        "texture_stability": None
        if args.texture_stability is None
        else Stability.load(args.texture_stability),
        "progress": args.progress,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``train --data DIR --labels CSV --out BUNDLE [--model V] [--seed S] [--preset P] ...``."""
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
        help="labels CSV: synth labels.csv, or a site CSV with file or "
        "sop_instance_uid, label or t_score, optional mask_left/mask_right",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="BUNDLE", help="bundle directory to write"
    )
    parser.add_argument(
        "--model",
        default="DTC",
        choices=["C", "T", "TC", "D", "DC", "DT", "DTC"],
        help="variant the bundle scores with (all seven heads are stored)",
    )
    add_jobs_argument(parser)
    add_fitting_arguments(parser)
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
    parser.add_argument(
        "--augment",
        type=float,
        default=None,
        metavar="PROB",
        help="probability that a Siamese training pair is passed through a random "
        "acquisition-processing chain per epoch (range compression, edge enhancement, gamma, "
        "highlight clipping, noise; cpu preset 0.5, paper 0; 0: off)",
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
        default=None,
        metavar="BUNDLE",
        help="reuse this bundle's femur finder instead of training one ('demo': the shipped "
        "demo bundle's; without the flag a finder is trained on the masked images, and "
        "labels without masks reuse the demo bundle's)",
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
    add_progress_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Train and write the bundle."""
    try:
        options = training_options(
            args.preset,
            {name: getattr(args, name) for name in PRESET_FIELDS},
            variant=args.model,
            finder_epochs=args.finder_epochs,
            finder_negatives=args.finder_negatives,
            finder_images=args.finder_images or None,
            validation_fraction=args.validation_fraction,
            target_sensitivity=args.target_sensitivity,
            bilateral=args.bilateral_selection,
            # None: the pipeline's default, the demo bundle (named so in the manifest)
            finder_bundle=None
            if args.finder_bundle is None
            else resolve_bundle(args.finder_bundle, None),
            **fitting_options(args),
        )
    except ValueError as exc:
        return error(args.command, str(exc), EXIT_USAGE)
    try:
        train_bundle(args.data, args.labels, args.out, options)
    except ValueError as exc:
        return error(args.command, str(exc), EXIT_FAILURE)
    return EXIT_OK
