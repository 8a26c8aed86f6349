"""The ``triage-node`` command: parse the command line, run one subcommand, return its exit code.

Each subcommand is a module ``triage_node.commands.<name>`` with one parser
function, ``add_arguments(parser)``, and ``main(args) -> int``. Only the module
of the command being run is imported (so ``status`` never loads torch).
``--config`` is added here, once per subcommand. Exit codes: 0 ok, 1 runtime
failure, 2 bad usage or bad config (``status`` adds 3 and 4: see its module).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Protocol, cast

from triage_node import __version__
from triage_node.commands.common import EXIT_USAGE, error
from triage_node.config import ConfigError

#: command -> (module in triage_node.commands, one-line help); the order of --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run receiver, workers and scheduler in one process"),
    "receive": ("receive", "run the DICOM receiver only (scale-out)"),
    "work": ("work", "run workers and scheduler only (scale-out)"),
    "worklist": ("worklist", "show recent instances, or --follow events"),
    "status": ("status", "is the node ready? counts per state, queue depth, disk, model"),
    "resend": ("resend", "send a study's results again, or all failed ones"),
    "console": ("console", "print the web console's URL (--open: open it), or hash a password"),
    "synth": ("synth", "write a synthetic hip radiograph cohort"),
    "db": ("db", "database maintenance (db upgrade)"),
    "train": ("train", "train a model bundle from labelled radiographs"),
    "evaluate": ("evaluate", "seven-model evaluation report on a labelled set"),
    "calibrate": ("calibrate", "refit a bundle's calibration and operating point on site images"),
    "score": ("score", "score DICOM files with the configured model"),
}

CONFIG_HELP = (
    "config file (default: $TRIAGE_NODE_CONFIG, then /etc/triage-node/config.toml, "
    "then built-in defaults)"
)


class Command(Protocol):
    """What a module in ``triage_node.commands`` provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def load_command(name: str) -> Command:
    """The module of command ``name`` (imported on first use)."""
    module_name, _ = COMMANDS[name]
    return cast(Command, importlib.import_module(f"triage_node.commands.{module_name}"))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="triage-node",
        description="On-premises DICOM node that screens hip radiographs for osteoporosis. "
        "AI triage, not diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"triage-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="PATH", default=None, help=CONFIG_HELP)
        if name == command:
            load_command(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``triage-node ARGV``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser has no option taking a value: the first word is the command.
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return load_command(args.command).main(args)
    except ConfigError as exc:
        return error(args.command, str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
