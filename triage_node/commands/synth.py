"""``triage-node synth``: write a synthetic hip radiograph cohort (or the samples, a contact sheet).

The cohort is DICOM files, per-side femur masks, ``labels.csv`` and
``oracle.json`` (see docs/synth.md). Exit 0 ok, 1 when writing failed, 2 bad
usage (checked by argparse).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from triage_node.commands.common import (
    EXIT_OK,
    add_progress_argument,
    error,
    fraction,
    positive_int,
)
from triage_node.synth.cohort import generate_cohort
from triage_node.synth.contact import write_contact_sheet
from triage_node.synth.samples import write_samples
from triage_node.synth.sites import SITE_PROFILES
from triage_node.synth.vendors import VENDORS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``synth (--out DIR | --samples DIR | --contact-sheet PNG) [--n N] [--seed S] ...``."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, metavar="DIR", help="output directory for the cohort")
    what.add_argument(
        "--samples",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of a cohort, regenerate the committed sample set into DIR",
    )
    what.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="instead of a cohort, write a 4 x 4 contact sheet of 16 images to PNG",
    )
    parser.add_argument(
        "--n", type=positive_int, default=100, help="number of images (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="full = real detector matrix (~2500 x 3000); small = ~512 x 640, same anatomy",
    )
    parser.add_argument(
        "--prevalence",
        type=fraction,
        default=0.38,
        help="expected fraction with osteoporosis, T <= -2.5 (default 0.38)",
    )
    parser.add_argument(
        "--vendor",
        action="extend",
        nargs="+",
        choices=sorted(VENDORS),
        default=None,
        metavar="NAME",
        help=f"restrict to these vendor profiles ({' '.join(VENDORS)}; default: all)",
    )
    parser.add_argument(
        "--profile",
        action="extend",
        nargs="+",
        choices=sorted(SITE_PROFILES),
        default=None,
        metavar="NAME",
        help="acquisition profile(s) of other sites, mixed one per image; labels.csv then "
        "records profile, metal per side, border, clipping, grid and marker. "
        + "; ".join(f"{p.name}: {p.description}" for p in SITE_PROFILES.values())
        + " (default: none, the generator's own images)",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="worker processes (default: os.cpu_count())",
    )
    add_progress_argument(parser)


def main(args: argparse.Namespace) -> int:
    """Write what was asked for and say what was written."""
    try:
        if args.samples is not None:
            write_samples(args.samples)
            print(f"synth: samples written to {args.samples}")
            return EXIT_OK
        if args.contact_sheet is not None:
            write_contact_sheet(
                args.contact_sheet, seed=args.seed, size=args.size, vendors=args.vendor
            )
            print(f"synth: contact sheet written to {args.contact_sheet}")
            return EXIT_OK
        summary = generate_cohort(
            args.out,
            args.n,
            seed=args.seed,
            size=args.size,
            prevalence=args.prevalence,
            vendors=args.vendor,
            jobs=args.jobs,
            progress=args.progress,
            profiles=args.profile,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        return error(args.command, str(exc))
    print(summary.describe())
    return EXIT_OK
