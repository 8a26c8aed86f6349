"""``triage-node serve``: run the receiver, workers and scheduler in one process until a signal.

``receive`` and ``work`` (their own modules) run a subset of these roles with
:func:`run_roles`. A daemon's errors go to its log (the configured format,
which systemd's journal keeps), not through the commands' error helper.
"""

from __future__ import annotations

import argparse
import logging
import signal

from triage_node.commands.common import EXIT_FAILURE, EXIT_OK
from triage_node.config import load_settings
from triage_node.node.node import Node
from triage_node.receive.pynetdicom_patches import PynetdicomChanged
from triage_node.store import StoreUnavailable, open_store
from triage_node.store.db import redact_url
from triage_node.telemetry.logs import setup_logging

log = logging.getLogger("triage_node.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve`` takes only ``--config``."""
    parser.epilog = "Stops cleanly on SIGTERM or SIGINT (exit 0)."


def main(args: argparse.Namespace) -> int:
    """Receiver, workers and scheduler."""
    return run_roles(args, {"receive", "work"})


def run_roles(args: argparse.Namespace, roles: set[str]) -> int:
    """Load the config once, open (and migrate) the store, run ``roles`` until a signal."""
    settings = load_settings(args.config)  # ConfigError: exit 2 in commands.main
    setup_logging(settings)
    try:
        store = open_store(settings)
    except Exception as exc:
        log.error(
            "cannot open the store: %s", exc, extra={"database": redact_url(settings.database_url)}
        )
        return EXIT_FAILURE
    node = Node(settings, store, roles)
    # Handlers go in before anything starts so a signal during start-up is not lost.
    previous = {s: signal.signal(s, node.request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            node.start()
        except (ImportError, OSError, StoreUnavailable, PynetdicomChanged) as exc:
            log.error("cannot start %s: %s", args.command, exc)
            node.stop()
            return EXIT_FAILURE
        node.wait()
        node.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return EXIT_OK
