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
    ("serve", "triage_node.ops.serve", "run receiver, workers and scheduler in one process"),
    ("receive", "triage_node.ops.serve", "run the DICOM receiver only (scale-out)"),
    ("work", "triage_node.ops.serve", "run workers and scheduler only (scale-out)"),
    ("worklist", "triage_node.admin.worklist", "show recent instances, or --follow events"),
    ("status", "triage_node.admin.status", "counts per state, queue depth, disk, model"),
    ("synth", "triage_node.synth.command", "write a synthetic hip radiograph cohort"),
    ("db", "triage_node.store.command", "database maintenance (db upgrade)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triage-node",
        description="On-premises DICOM node that screens hip radiographs for osteoporosis. "
        "AI triage, not diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"triage-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            metavar="PATH",
            default=None,
            help="config file (default: $TRIAGE_NODE_CONFIG, then "
            "/etc/triage-node/config.toml, then built-in defaults)",
        )
        module.add_arguments(p, name) if _takes_name(module) else module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _takes_name(module: object) -> bool:
    add = getattr(module, "add_arguments")
    return add.__code__.co_argcount >= 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
