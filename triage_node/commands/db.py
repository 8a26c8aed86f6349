"""``triage-node db upgrade``: bring the database schema to the newest revision (or show it)."""

from __future__ import annotations

import argparse

from sqlalchemy.exc import SQLAlchemyError

from triage_node.commands.common import EXIT_OK, error
from triage_node.config import load_settings
from triage_node.store.db import Store, redact_url
from triage_node.store.migrate import current_revision, head_revision, upgrade


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``db upgrade | current``."""
    parser.add_argument(
        "action",
        choices=["upgrade", "current"],
        help="upgrade: migrate to the newest schema; current: print the schema revision",
    )


def main(args: argparse.Namespace) -> int:
    """Migrate, or print the current and head revisions."""
    settings = load_settings(args.config)
    url = redact_url(settings.database_url)
    try:
        store = Store(settings.database_url)
        if args.action == "upgrade":
            print(f"database {url} at revision {upgrade(store)} (head)")
        else:
            print(f"{current_revision(store) or 'empty'} (head {head_revision()})")
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return error(args.command, f"database {url}: {type(exc).__name__}: {reason}")
    return EXIT_OK
