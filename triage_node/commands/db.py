"""`triage-node db upgrade`: bring the database schema to the newest revision."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["upgrade", "current"],
        help="upgrade: migrate to the newest schema; current: print the schema revision",
    )


def run(args: argparse.Namespace) -> int:
    from triage_node.config import load_settings
    from triage_node.store.db import Store, redact_url
    from triage_node.store.migrate import current_revision, head_revision, upgrade

    settings = load_settings(args.config)
    store = Store(settings.database_url)
    if args.action == "upgrade":
        rev = upgrade(store)
        print(f"database {redact_url(store.url)} at revision {rev} (head)")
    else:
        cur = current_revision(store)
        print(f"{cur or 'empty'} (head {head_revision()})")
    return 0
