"""`triage-node worklist`: recent instances and refusals as a table or JSON, or --follow events."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from triage_node.commands.common import EXIT_OK, error, positive_int
from triage_node.config import Settings, load_settings
from triage_node.store.db import Store, redact_url
from triage_node.store.existing import open_existing_store
from triage_node.work.views import events_after, last_event_id, recent_instances


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``worklist [--follow] [--json] [--wide] [--state S] [--limit N]``."""
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
        "--wide",
        "-w",
        action="store_true",
        help="full UIDs (by default the table shows their last 13 characters)",
    )
    parser.add_argument(
        "--state",
        default=None,
        help="only instances (or events) in this state: queued, skipped, scoring, scored, "
        "not_assessable, failed, or refused (C-STOREs the receiver refused)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=50,
        help="how many recent rows (with --follow: recent events first shown; default 50)",
    )
    parser.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)


#: Characters of a UID the table keeps by default: its tail, which is where UIDs differ.
SHORT_UID = 14


def short_uid(uid: str | None, keep: int = SHORT_UID) -> str:
    """The tail of a UID, which is where UIDs differ; full UIDs are in --wide and --json."""
    if not uid:
        return "-"
    return uid if len(uid) <= keep else "…" + uid[-(keep - 1) :]


def _uid(uid: str | None, wide: bool) -> str:
    return (uid or "-") if wide else short_uid(uid)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


#: Sides in the order the table shows them (the L/R column).
SIDES = ("left", "right")


def _sides(row: dict[str, Any]) -> str:
    """Left and right probabilities as ``0.71/0.40``; ``-`` for a side not assessed."""
    by_side = {s["side"]: s for s in row.get("sides") or []}
    if not by_side:
        return "-"
    return "/".join(_number((by_side.get(side) or {}).get("probability")) for side in SIDES)


def _reason(row: dict[str, Any]) -> str:
    """Why the row is in its state, in full: the reason and the last error.

    A refusal names its status and sender; a delivery error is left to the
    per-destination lines, which say which destination it came from.
    """
    refusal = row.get("refusal")
    if refusal:
        sender = f"{row.get('calling_ae') or '?'}@{refusal.get('peer_host') or '?'}"
        return f"{refusal['status']} {row.get('reason') or ''} (from {sender})"
    last_error = row.get("last_error")
    if last_error and row.get("deliveries") and last_error.startswith("delivery"):
        last_error = None
    return "; ".join(x for x in (row.get("reason"), last_error) if x) or "-"


def _attempts(n: int) -> str:
    return f"{n} attempt" + ("" if n == 1 else "s")


def format_delivery(d: dict[str, Any], address: str | None = None) -> str:
    """One destination of a row: state, objects delivered, attempts, next try, last error.

    ``address`` (``AE@host:port`` from the config) says where the destination is.
    """
    parts = [
        f"{d['delivered']} of {d['objects']} object" + ("" if d["objects"] == 1 else "s"),
        _attempts(d["attempts"]),
    ]
    if d.get("next_attempt_at"):
        parts.append("next try " + d["next_attempt_at"].replace("T", " ")[:19])
    where = f" ({address})" if address else ""
    text = f"-> {d['destination']}{where}: {d['state']} ({', '.join(parts)})"
    return text + (f": {d['last_error']}" if d.get("last_error") else "")


def destination_addresses(settings: Settings) -> dict[str, str]:
    """``AE@host:port`` of each configured destination, by name."""
    return {d.name: f"{d.ae_title}@{d.host}:{d.port}" for d in settings.destinations}


COLUMNS: list[tuple[str, Callable[[dict[str, Any], bool], str]]] = [
    ("RECEIVED", lambda r, w: (r.get("received_at") or "-").replace("T", " ")[:19]),
    ("STUDY", lambda r, w: _uid(r.get("study_instance_uid"), w)),
    ("SERIES", lambda r, w: _uid(r.get("series_instance_uid"), w)),
    ("SOP INSTANCE", lambda r, w: _uid(r.get("sop_instance_uid"), w)),
    ("MOD", lambda r, w: r.get("modality") or "-"),
    ("BODY PART", lambda r, w: r.get("body_part") or "-"),
    ("STATE", lambda r, w: str(r.get("state") or "-")),
    ("P", lambda r, w: _number(r.get("probability"))),
    ("DECISION", lambda r, w: r.get("decision") or "-"),
    ("L/R", lambda r, w: _sides(r)),
    ("THR", lambda r, w: _number(r.get("threshold"))),
    ("DELIVERY", lambda r, w: str(r.get("delivery_state") or "-")),
    ("REASON / LAST ERROR", lambda r, w: _reason(r)),
]


def format_table(
    rows: list[dict[str, Any]],
    *,
    wide: bool = False,
    addresses: Mapping[str, str] | None = None,
) -> str:
    """Rows as a table with a header line, each destination of a row on a line below it.

    Columns are as wide as their longest value: only UIDs are shortened (to their
    tails), and not with ``wide``. Reasons and errors are never cut. ``addresses``:
    where each destination is (:func:`destination_addresses`); a destination not in
    it is no longer configured.
    """
    addresses = addresses or {}
    cells = [[fmt(row, wide).replace("\n", " ") for _, fmt in COLUMNS] for row in rows]
    widths = [
        max([len(title), *(len(values[i]) for values in cells)])
        for i, (title, _) in enumerate(COLUMNS)
    ]

    def aligned(values: list[str]) -> str:
        return "  ".join(f"{v:<{w}}" for v, w in zip(values, widths, strict=True)).rstrip()

    lines = [aligned([title for title, _ in COLUMNS])]
    for row, values in zip(rows, cells, strict=True):
        lines.append(aligned(values))
        lines += [
            "    " + format_delivery(d, addresses.get(d["destination"], "no longer configured"))
            for d in row.get("deliveries") or []
        ]
    return "\n".join(lines)


def format_event(ev: dict[str, Any], *, wide: bool = False) -> str:
    """One event as one line: time, kind [state], the study and instance it is about, ids."""
    at = (ev["at"] or "").replace("T", " ")[:23]
    what = " ".join(x for x in (ev["kind"], ev["state"] and f"[{ev['state']}]") if x)
    subject = " ".join(
        f"{name}={_uid(uid, wide)}"
        for name, uid in (
            ("study", ev.get("study_instance_uid")),
            ("sop", ev.get("sop_instance_uid")),
        )
        if uid
    )
    ids = " ".join(
        x
        for x in (
            f"job={ev['job_id']}" if ev.get("job_id") else "",
            f"instance={ev['instance_id']}" if ev.get("instance_id") else "",
        )
        if x
    )
    width = 0 if wide else len(f"study={'x' * SHORT_UID} sop={'x' * SHORT_UID}")
    return f"{at}  {what:<32} {subject:<{width}}  {ids}  {ev.get('message') or ''}".rstrip()


def main(args: argparse.Namespace) -> int:
    """Print the recent instances, or follow the event stream until interrupted."""
    settings = load_settings(args.config)
    if args.follow:
        return follow(settings, args, sys.stdout)
    store = open_existing_store(settings)
    rows: list[dict[str, Any]] = []
    if store is not None:
        try:
            with store.read() as session:
                rows = recent_instances(session, state=args.state, limit=args.limit)
        except SQLAlchemyError as exc:
            cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            return error(
                args.command,
                f"cannot read the database {redact_url(settings.database_url)} "
                f"({type(exc).__name__}: {cause}); check that it "
                "is up and its schema is current (`triage-node db upgrade`, which the node "
                "also runs when it starts)",
            )
        finally:
            store.dispose()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(rows, wide=args.wide, addresses=destination_addresses(settings)))
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
                    out.write(
                        (json.dumps(ev) if args.json else format_event(ev, wide=args.wide)) + "\n"
                    )
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
