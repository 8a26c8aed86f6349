"""``triage-node work``: run workers and the scheduler only, until a signal (scale-out)."""

from __future__ import annotations

import argparse

from triage_node.commands.serve import run_roles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``work`` takes only ``--config``."""
    parser.epilog = "Scale-out: several `work` processes may share one database and spool."


def main(args: argparse.Namespace) -> int:
    """Workers and scheduler."""
    return run_roles(args, {"work"})
