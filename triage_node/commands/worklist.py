"""`triage-node worklist`: recent instances as a table or JSON, or --follow the event stream."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from triage_node.commands.common import EXIT_OK, error, positive_int
from triage_node.commands.views import events_after, last_event_id, recent_instances
from triage_node.config import Settings, load_settings
from triage_node.store.db import Store
from triage_node.store.existing import open_existing_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``worklist [--follow] [--json] [--state S] [--limit N]``."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array (with --follow: one JSON object per line)",
    )
    parser.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="stream every new event as it happens (survives node restarts)",
    )
    parser.add_argument(
        "--state",
        default=None,
        help="only instances (or events) in this state, e.g. queued, skipped, "
        "scored, not_assessable, failed",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=50,
        help="how many recent rows (with --follow: recent events first shown; default 50)",
    )
    parser.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)


def short_uid(uid: str | None, keep: int = 14) -> str:
    """The tail of a UID, which is where UIDs differ; full UIDs are in --json."""
    if not uid:
        return "-"
    return uid if len(uid) <= keep else "…" + uid[-(keep - 1) :]


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


COLUMNS: list[tuple[str, str, int]] = [
    ("RECEIVED", "received_at", 19),
    ("STUDY", "study_instance_uid", 14),
    ("SERIES", "series_instance_uid", 14),
    ("MOD", "modality", 3),
    ("BODY PART", "body_part", 9),
    ("STATE", "state", 14),
    ("P", "probability", 5),
    ("DELIVERY", "delivery_state", 9),
    ("REASON / LAST ERROR", "reason", 60),
]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as a fixed-width table with a header line."""
    lines = ["  ".join(f"{title:<{w}}" for title, _, w in COLUMNS).rstrip()]
    for row in rows:
        cells = []
        for _, key, w in COLUMNS:
            value: Any = row.get(key)
            if key == "received_at" and value:
                value = value.replace("T", " ")[:19]
            elif key.endswith("_uid"):
                value = short_uid(value, w)
            elif key == "probability" and value is not None:
                value = f"{value:.2f}"
            elif key == "reason":
                value = "; ".join(x for x in (row.get("reason"), row.get("last_error")) if x)
            cells.append(f"{_cell(value, w):<{w}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_event(ev: dict[str, Any]) -> str:
    """One event as one line."""
    at = (ev["at"] or "").replace("T", " ")[:23]
    what = " ".join(x for x in (ev["kind"], ev["state"] and f"[{ev['state']}]") if x)
    uid = short_uid(ev.get("sop_instance_uid"), 20)
    ids = " ".join(
        x
        for x in (
            f"job={ev['job_id']}" if ev.get("job_id") else "",
            f"instance={ev['instance_id']}" if ev.get("instance_id") else "",
        )
        if x
    )
    return f"{at}  {what:<32} {uid:<20} {ids}  {ev.get('message') or ''}".rstrip()


def main(args: argparse.Namespace) -> int:
    """Print the recent instances, or follow the event stream until interrupted."""
    settings = load_settings(args.config)
    if args.follow:
        return follow(settings, args, sys.stdout)
    store = open_existing_store(settings)
    rows: list[dict[str, Any]] = []
    if store is not None:
        with store.read() as session:
            rows = recent_instances(session, state=args.state, limit=args.limit)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
        if not rows:
            print("(no instances yet)")
    return EXIT_OK


def follow(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """Print the last events, then every new one, until interrupted.

    Database errors (node restarting, database not yet created, PostgreSQL
    restarting) are waited out; the stream resumes after the last event shown.
    """
    last_id: int | None = None
    store: Store | None = None
    warned = False
    while True:
        try:
            if store is None:
                store = open_existing_store(settings)
            if store is not None:
                with store.read() as session:
                    if last_id is None:
                        last_id = max(0, last_event_id(session) - args.limit)
                    events = events_after(session, last_id, state=args.state)
                for ev in events:
                    last_id = ev["event_id"]
                    out.write((json.dumps(ev) if args.json else format_event(ev)) + "\n")
                out.flush()
                warned = False
                if events:
                    continue
        except SQLAlchemyError as exc:
            if not warned:
                error(args.command, f"waiting for the database: {type(exc).__name__}")
                warned = True
            if store is not None:
                store.dispose()
                store = None
        time.sleep(args.poll)
