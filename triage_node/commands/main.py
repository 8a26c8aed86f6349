"""Entry point of the ``triage-node`` command: parse, call a stage, print.

Each subcommand lives in its own module, which provides ``add_arguments(parser)``
(cheap: no heavy imports at module level) and ``run(args) -> int``. Exit codes:
0 ok, 1 runtime failure, 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from triage_node import __version__
from triage_node.config import ConfigError

# (command, module, one-line help). Order is the order shown in --help.
COMMANDS: list[tuple[str, str, str]] = [
    ("serve", "triage_node.commands.serve", "run receiver, workers and scheduler in one process"),
    ("receive", "triage_node.commands.serve", "run the DICOM receiver only (scale-out)"),
    ("work", "triage_node.commands.serve", "run workers and scheduler only (scale-out)"),
    ("worklist", "triage_node.commands.worklist", "show recent instances, or --follow events"),
    ("status", "triage_node.commands.status", "counts per state, queue depth, disk, model"),
    ("resend", "triage_node.commands.resend", "send a study's results again, or all failed ones"),
    ("synth", "triage_node.commands.synth", "write a synthetic hip radiograph cohort"),
    ("db", "triage_node.commands.db", "database maintenance (db upgrade)"),
    ("train", "triage_node.commands.train", "train a model bundle from labelled radiographs"),
    (
        "evaluate",
        "triage_node.commands.evaluate",
        "seven-model evaluation report on a labelled set",
    ),
    ("score", "triage_node.commands.score", "score DICOM files with the configured model"),
]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; only the module of the command being run is imported."""
    parser = argparse.ArgumentParser(
        prog="triage-node",
        description="On-premises DICOM node that screens hip radiographs for osteoporosis. "
        "AI triage, not diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"triage-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name, help_text in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            metavar="PATH",
            default=None,
            help="config file (default: $TRIAGE_NODE_CONFIG, then "
            "/etc/triage-node/config.toml, then built-in defaults)",
        )
        if name != chosen:
            continue
        module = importlib.import_module(module_name)
        add = module.add_arguments
        add(p, name) if add.__code__.co_argcount >= 2 else add(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
