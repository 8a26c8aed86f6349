"""``serve``, ``receive`` and ``work``: run the node's stages in one process until a signal."""

from __future__ import annotations

import argparse
import logging
import signal

from triage_node.node.node import Node

log = logging.getLogger("triage_node.serve")

ROLES = {
    "serve": {"receive", "work"},
    "receive": {"receive"},
    "work": {"work"},
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``serve``/``receive``/``work`` take only ``--config`` (added by the CLI)."""
    parser.epilog = {
        "serve": "Stops cleanly on SIGTERM or SIGINT (exit 0).",
        "receive": "Scale-out: run with `work` processes on the same database and spool.",
        "work": "Scale-out: several `work` processes may share one database and spool.",
    }[name]


def run(args: argparse.Namespace) -> int:
    """Load the config once, migrate the store, run this command's roles until a signal."""
    from triage_node.config import load_settings
    from triage_node.store import StoreUnavailable, open_store
    from triage_node.store.db import redact_url
    from triage_node.telemetry.logs import setup_logging

    settings = load_settings(args.config)  # ConfigError -> exit 2 in the CLI
    setup_logging(settings)
    roles = ROLES[args.command]
    try:
        store = open_store(settings)
    except Exception as exc:
        log.error(
            "cannot open the store: %s", exc, extra={"database": redact_url(settings.database_url)}
        )
        return 1
    node = Node(settings, store, roles)
    # Handlers go in before anything starts so a signal during start-up is not lost.
    previous = {s: signal.signal(s, node.request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            node.start()
        except (ImportError, OSError, StoreUnavailable) as exc:
            log.error("cannot start %s: %s", args.command, exc)
            node.stop()
            return 1
        node.wait()
        node.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
