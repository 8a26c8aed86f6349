"""The ``triage-node synth`` subcommand: write a synthetic hip radiograph cohort."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` options to ``parser`` (no heavy imports here)."""
    parser.add_argument("--out", type=Path, help="output directory for the cohort")
    parser.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument(
        "--size",
        choices=("full", "small"),
        default="full",
        help="full = real detector matrix (~2500 x 3000); small = ~512 x 640, same anatomy",
    )
    parser.add_argument(
        "--prevalence",
        type=float,
        default=0.38,
        help="expected fraction with osteoporosis, T <= -2.5 (default 0.38)",
    )
    parser.add_argument(
        "--vendor",
        action="extend",
        nargs="+",
        default=None,
        metavar="NAME",
        help="restrict to these vendor profiles (kestrel nordlys orion tamarind halvard "
        "vireo; default: all)",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: os.cpu_count())"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--samples",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of a cohort, regenerate the committed sample set into DIR",
    )
    parser.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="instead of a cohort, write a 4 x 4 contact sheet of 16 images to PNG",
    )


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; 0 ok, 1 failure, 2 bad usage."""
    from triage_node.synth.vendors import VENDORS

    if args.vendor:
        unknown = [v for v in args.vendor if v not in VENDORS]
        if unknown:
            print(f"synth: unknown vendor {unknown}; known: {sorted(VENDORS)}", file=sys.stderr)
            return 2
    if not 0.0 < args.prevalence < 1.0:
        print(f"synth: --prevalence must be in (0, 1), got {args.prevalence}", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print(f"synth: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    try:
        if args.samples is not None:
            from triage_node.synth.samples import write_samples

            write_samples(args.samples)
            print(f"synth: samples written to {args.samples}")
            return 0
        if args.contact_sheet is not None:
            from triage_node.synth.contact import write_contact_sheet

            write_contact_sheet(
                args.contact_sheet, seed=args.seed, size=args.size, vendors=args.vendor
            )
            print(f"synth: contact sheet written to {args.contact_sheet}")
            return 0
        if args.out is None:
            print("synth: --out DIR is required", file=sys.stderr)
            return 2
        if args.n < 1:
            print(f"synth: --n must be >= 1, got {args.n}", file=sys.stderr)
            return 2
        from triage_node.synth.cohort import generate_cohort

        summary = generate_cohort(
            args.out,
            args.n,
            seed=args.seed,
            size=args.size,
            prevalence=args.prevalence,
            vendors=args.vendor,
            jobs=args.jobs,
            progress=not args.no_progress,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 1
    print(summary.describe())
    return 0
