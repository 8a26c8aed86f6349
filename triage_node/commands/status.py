"""`triage-node status`: counts per state, queue depth, oldest waiting job, disk, model, readiness.

Readiness is checked twice: here (database, spool write probe, free disk: the
same checks as ``/readyz``, from this process) and, when ``[metrics]`` is on,
by asking the running node's ``/readyz``, which also knows whether its model
is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from triage_node.commands.common import EXIT_OK
from triage_node.commands.views import free_disk_bytes, status_facts
from triage_node.config import Settings, load_settings
from triage_node.node.health import readiness
from triage_node.score.loader import describe_model
from triage_node.store.db import redact_url
from triage_node.store.existing import open_existing_store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``status [--json]``."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def node_endpoint(settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """The running node's ``/readyz`` answer, or why it could not be had."""
    m = settings.metrics
    base = f"http://{m.host}:{m.port}"
    doc: dict[str, Any] = {
        "enabled": m.enabled,
        "metrics_url": f"{base}/metrics",
        "readyz_url": f"{base}/readyz",
    }
    if not m.enabled:
        return doc
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=timeout) as resp:
            doc["node"] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503: answered, not ready
        try:
            doc["node"] = json.loads(exc.read())
        except ValueError:
            doc["node"] = {"ready": False, "error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        doc["node"] = {"reachable": False, "error": str(reason)[:200]}
    return doc


def collect_status(settings: Settings) -> dict[str, Any]:
    """Everything `status` prints, as one JSON-able dict."""
    store = open_existing_store(settings)
    ready = readiness(settings, store)
    facts: dict[str, Any]
    if store is None:
        facts = {
            "instances": {},
            "instances_total": 0,
            "jobs": {},
            "queue_depth": 0,
            "oldest_waiting_seconds": None,
            "free_disk_bytes": free_disk_bytes(settings.data_dir),
            "last_error": None,
        }
        database = {"url": redact_url(settings.database_url), "exists": False}
    else:
        try:
            with store.read() as session:
                facts = status_facts(session, settings.data_dir)
        except Exception:  # unreachable: say so below instead of a traceback
            facts = {
                "instances": {},
                "instances_total": 0,
                "jobs": {},
                "queue_depth": 0,
                "oldest_waiting_seconds": None,
                "free_disk_bytes": free_disk_bytes(settings.data_dir),
                "last_error": None,
            }
        database = {"url": redact_url(settings.database_url), "exists": True}
        store.dispose()
    return {
        "node": {
            "ae_title": settings.node.ae_title,
            "host": settings.node.host,
            "port": settings.node.port,
            "data_dir": str(settings.data_dir),
            "config": settings.source,
        },
        "database": database,
        **facts,
        "min_free_disk_bytes": settings.receive.min_free_disk_mb * 1024 * 1024,
        "model": describe_model(settings),
        "ready": ready,
        "endpoint": node_endpoint(settings),
    }


def format_status(s: dict[str, Any]) -> str:
    """The status as lines for the terminal."""
    n = s["node"]
    lines = [
        f"node       {n['ae_title']} on {n['host']}:{n['port']}  data {n['data_dir']}",
        f"config     {n['config']}",
        f"database   {s['database']['url']}"
        + ("" if s["database"]["exists"] else "  (not created yet)"),
        "instances  "
        + (", ".join(f"{k} {v}" for k, v in s["instances"].items()) or "none")
        + f"  (total {s['instances_total']})",
    ]
    for kind, states in sorted(s["jobs"].items()):
        lines.append(f"jobs {kind:<6}" + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    age = s["oldest_waiting_seconds"]
    lines.append(
        f"queue      {s['queue_depth']} waiting"
        + (f", oldest {age:.0f} s" if age is not None else "")
    )
    low = s["free_disk_bytes"] is not None and s["free_disk_bytes"] < s["min_free_disk_bytes"]
    lines.append(
        f"free disk  {_size(s['free_disk_bytes'])}"
        + ("  BELOW WATERMARK: new instances are refused (0xA700)" if low else "")
    )
    m = s["model"]
    if m.get("available"):
        desc = f"{m.get('name', m['bundle'])} {m.get('version', '')}".strip()
        if m.get("synthetic"):
            desc += "  (trained on synthetic data: not for clinical use)"
        lines.append(f"model      {desc}")
    else:
        lines.append(f"model      {m['bundle']}: NOT AVAILABLE ({m.get('error')})")
    r = s["ready"]
    failing = [f"{k}: {v['detail']}" for k, v in r["checks"].items() if not v["ok"]]
    lines.append(
        "ready      "
        + ("yes (database, spool, disk)" if r["ready"] else "NO  " + "; ".join(failing))
    )
    e = s["endpoint"]
    if not e["enabled"]:
        lines.append("metrics    off (metrics.enabled = false)")
    else:
        node = e.get("node", {})
        if node.get("reachable") is False:
            answer = f"node not answering ({node.get('error')})"
        elif node.get("ready"):
            answer = "node ready"
        else:
            answer = "node NOT READY: " + "; ".join(
                f"{k}: {v['detail']}" for k, v in node.get("checks", {}).items() if not v["ok"]
            )
        lines.append(f"metrics    {e['metrics_url']}  {answer}")
    err = s["last_error"]
    lines.append(
        "last error "
        + (f"{err['at']} {err['kind']} job {err['job_id']}: {err['message']}" if err else "none")
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Print the status as text or one JSON object."""
    settings = load_settings(args.config)
    status = collect_status(settings)
    if args.json:
        json.dump(status, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_status(status))
    return EXIT_OK
