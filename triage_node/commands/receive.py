"""``triage-node receive``: run the DICOM receiver only, until a signal (scale-out)."""

from __future__ import annotations

import argparse

from triage_node.commands.serve import run_roles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``receive`` takes only ``--config``."""
    parser.epilog = "Scale-out: run with `work` processes on the same database and spool."


def main(args: argparse.Namespace) -> int:
    """The receiver alone."""
    return run_roles(args, {"receive"})
