"""What every command shares: the error helper, exit codes, argument types, ``--bundle``.

Results go to stdout, errors to stderr through :func:`error` (``triage-node
<command>: <message>``). Usage is checked by argparse (the ``type=`` functions
here) before any command reads its config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from triage_node.config import Settings
from triage_node.score.bundle import DEMO_BUNDLE_DIR, bundle_path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad usage or bad config

#: The word ``--bundle`` takes for the shipped demo bundle.
DEMO = "demo"


def error(command: str, message: str, code: int = EXIT_FAILURE) -> int:
    """Print ``triage-node <command>: <message>`` to stderr; return ``code`` (the exit code)."""
    print(f"triage-node {command}: {message}", file=sys.stderr, flush=True)
    return code


def existing_directory(value: str) -> Path:
    """argparse ``type=``: a directory that exists."""
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a directory")
    return path


def existing_file(value: str) -> Path:
    """argparse ``type=``: a file that exists."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a file")
    return path


def positive_int(value: str) -> int:
    """argparse ``type=``: an integer of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``: progress bars on stderr, on by default."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars on stderr (default: on)",
    )


def add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    """``--jobs N``: processes for per-image feature extraction, all cores by default."""
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="processes for feature extraction (default: all cores)",
    )


def fraction(value: str) -> float:
    """argparse ``type=``: a number strictly between 0 and 1 (a prevalence, a sensitivity)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {number}")
    return number


def add_bundle_argument(
    parser: argparse.ArgumentParser, default: str, flag: str = "--bundle"
) -> None:
    """A bundle option: a directory, or ``demo`` for the shipped demo bundle."""
    parser.add_argument(
        flag,
        default=None,
        metavar="BUNDLE",
        help=f"bundle directory, or '{DEMO}' for the shipped demo bundle (default: {default})",
    )


def resolve_bundle(value: str | None, settings: Settings | None) -> Path:
    """The bundle directory a ``--bundle`` value names.

    ``demo``: the shipped demo bundle; any other value: that directory; None:
    the configured ``[model] bundle`` of ``settings`` (the demo bundle when the
    command reads no config).
    """
    if value is None:
        return DEMO_BUNDLE_DIR if settings is None else bundle_path(settings)
    if value == DEMO:
        return DEMO_BUNDLE_DIR
    return Path(value).expanduser()
