"""`triage-node status`: counts per state, queue depth, oldest waiting job, disk, model, readiness.

Readiness is checked twice: here (database, spool write probe, free disk: the
same checks as ``/readyz``, from this process) and, when ``[metrics]`` is on,
by asking the running node's ``/readyz``, which also knows whether its model
is loaded. The node's answer counts only if it comes from the node of this
config: ``/readyz`` carries the node id (:func:`triage_node.node.health.node_id`),
compared with the id this config gives. The result is one :class:`Answer` and
its exit code (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from triage_node.commands.common import EXIT_FAILURE, EXIT_OK
from triage_node.config import Settings, load_settings
from triage_node.node.health import Phase, node_id, readiness
from triage_node.score.loader import describe_model
from triage_node.store.clock import utcnow
from triage_node.store.db import Store, redact_url
from triage_node.store.existing import open_existing_store
from triage_node.work.drift import NO_REFERENCE, drift_report
from triage_node.work.views import free_disk_bytes, status_facts

#: Seconds to wait for the node's ``/readyz`` (it answers at once, also while starting).
ENDPOINT_TIMEOUT_SECONDS = 10.0


class Answer(enum.StrEnum):
    """What ``status`` found at the metrics endpoint of its config."""

    READY = "ready"  # the node of this config answers and is ready
    STARTING = "starting"  # ... is starting (loading its model)
    NOT_READY = "not_ready"  # ... runs but a check fails (database, spool, disk, model)
    STOPPING = "stopping"  # ... is shutting down
    NOT_RUNNING = "not_running"  # nothing listens at the endpoint
    NOT_RESPONDING = "not_responding"  # something accepted the connection, no answer in time
    NO_ENDPOINT = "no_endpoint"  # metrics.enabled = false: the node cannot be asked
    NOT_OURS = "not_ours"  # another node (or another program) answers at the endpoint


EXIT_NO_ANSWER = 3
EXIT_NOT_OURS = 4

#: The exit code of each answer (documented in the README's status section).
EXIT_CODES: dict[Answer, int] = {
    Answer.READY: EXIT_OK,
    Answer.STARTING: EXIT_FAILURE,
    Answer.NOT_READY: EXIT_FAILURE,
    Answer.STOPPING: EXIT_FAILURE,
    Answer.NOT_RUNNING: EXIT_NO_ANSWER,
    Answer.NOT_RESPONDING: EXIT_NO_ANSWER,
    Answer.NO_ENDPOINT: EXIT_NO_ANSWER,
    Answer.NOT_OURS: EXIT_NOT_OURS,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``status [--json]``."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.epilog = (
        "Exit codes: 0 the node of this config answers and is ready; 1 it answers but is "
        "starting, stopping or not ready; 2 bad usage or config; 3 no node answers at the "
        "metrics endpoint (not running, or metrics.enabled = false); 4 a different node "
        "answers there."
    )


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


def node_endpoint(settings: Settings, timeout: float = ENDPOINT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """The running node's ``/readyz`` answer, or why it could not be had.

    ``node`` is that answer with ``reachable`` and ``ours`` added when it comes
    from the node of this config. When another node answers, ``node`` says so
    (``ours`` false, never ``ready``) and ``other_node`` holds the identity that
    node gave (its id, database, data dir, config file).
    """
    m = settings.metrics
    base = f"http://{m.host}:{m.port}"
    doc: dict[str, Any] = {
        "enabled": m.enabled,
        "metrics_url": f"{base}/metrics",
        "readyz_url": f"{base}/readyz",
    }
    if not m.enabled:
        return doc
    body: bytes
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=timeout) as resp:
            code, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:  # 503: answered, not ready (or not a node: 404)
        code = exc.code
        try:
            body = exc.read()
        except OSError:
            body = b""
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        timed_out = isinstance(reason, TimeoutError) or "timed out" in str(reason)
        doc["node"] = {
            "reachable": False,
            "timed_out": timed_out,
            "error": (f"no answer within {timeout:g} s" if timed_out else str(reason))[:200],
        }
        return doc
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    who = answer.get("node") if isinstance(answer, dict) else None
    if not isinstance(who, dict) or "id" not in who:
        doc["node"] = {
            "reachable": True,
            "ours": False,
            "ready": False,
            "error": f"HTTP {code} without a triage-node id: another program holds the port",
        }
        return doc
    if who["id"] != node_id(settings):
        doc["node"] = {
            "reachable": True,
            "ours": False,
            "ready": False,
            "error": f"a different node answers (node id {who['id']})",
        }
        doc["other_node"] = who
        return doc
    assert isinstance(answer, dict)
    doc["node"] = {**answer, "reachable": True, "ours": True}
    return doc


def decide(settings: Settings, endpoint: dict[str, Any]) -> dict[str, Any]:
    """The :class:`Answer`, its exit code and one sentence for the admin."""
    where = f"{settings.metrics.host}:{settings.metrics.port}"
    node = endpoint.get("node", {})
    if not endpoint["enabled"]:
        answer = Answer.NO_ENDPOINT
        message = (
            f"cannot ask the node: metrics.enabled = false in {settings.source} "
            "(the 'ready' line below is this command's own checks)"
        )
    elif node.get("reachable") is False:
        if node.get("timed_out"):
            answer = Answer.NOT_RESPONDING
            message = (
                f"{where} accepted the connection but gave no answer "
                f"({node['error']}): check the node's log for a hung process"
            )
        else:
            answer = Answer.NOT_RUNNING
            message = (
                f"no node answers on {where} ({node.get('error')}): "
                f"is the node of {settings.source} running?"
            )
    elif not node.get("ours"):
        answer = Answer.NOT_OURS
        other = endpoint.get("other_node")
        if other:
            message = (
                f"{where} is answered by a different node (id {other['id']}, database "
                f"{other.get('database')}, data dir {other.get('data_dir')}, config "
                f"{other.get('config')}), not by the node of this config (id "
                f"{node_id(settings)}, database {redact_url(settings.database_url)}): "
                "give each node its own metrics.port"
            )
        else:
            message = f"{where}: {node.get('error')}; set metrics.port to this node's port"
    else:
        failing = "; ".join(
            f"{k}: {v['detail']}" for k, v in node.get("checks", {}).items() if not v["ok"]
        )
        phase = node.get("phase")
        if node.get("ready"):
            answer = Answer.READY
            message = f"node {node['node']['id']} on {where} is ready"
        elif phase == Phase.STARTING:
            answer = Answer.STARTING
            message = f"node {node['node']['id']} is starting ({failing or 'starting'})"
        elif phase == Phase.STOPPING:
            answer = Answer.STOPPING
            message = f"node {node['node']['id']} is stopping"
        else:
            answer = Answer.NOT_READY
            message = f"node {node['node']['id']} is not ready: {failing or 'see its log'}"
    return {"answer": answer, "exit_code": EXIT_CODES[answer], "message": message}


def drift_status(settings: Settings, store: Store | None) -> dict[str, Any]:
    """The drift watch's report as JSON (``enabled`` false when ``drift.enabled`` is off)."""
    if not settings.drift.enabled:
        return {"enabled": False}
    if store is None:
        return {"enabled": True, "scanners": [], "out_of_range": [], "unjudged": "no images"}
    try:
        return {"enabled": True, **drift_report(settings, store, utcnow()).to_json()}
    except Exception as exc:  # the database: the facts above say so
        return {"enabled": True, "error": type(exc).__name__, "scanners": [], "out_of_range": []}


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
    drift = drift_status(settings, store)
    if store is not None:
        store.dispose()
    endpoint = node_endpoint(settings)
    return {
        **decide(settings, endpoint),
        "node": {
            "id": node_id(settings),
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
        "drift": drift,
        "ready": ready,
        "endpoint": endpoint,
    }


_ANSWER_WORDS = {
    Answer.READY: "READY",
    Answer.STARTING: "STARTING",
    Answer.NOT_READY: "NOT READY",
    Answer.STOPPING: "STOPPING",
    Answer.NOT_RUNNING: "NOT RUNNING",
    Answer.NOT_RESPONDING: "NOT RESPONDING",
    Answer.NO_ENDPOINT: "UNKNOWN",
    Answer.NOT_OURS: "NOT THIS NODE",
}


def format_status(s: dict[str, Any]) -> str:
    """The status as lines for the terminal: the answer first, then the facts."""
    n = s["node"]
    lines = [
        f"answer     {_ANSWER_WORDS[Answer(s['answer'])]}: {s['message']}",
        f"node       {n['ae_title']} on {n['host']}:{n['port']}  data {n['data_dir']}"
        f"  id {n['id']}",
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
    lines += format_drift(s["drift"])
    r = s["ready"]
    failing = [f"{k}: {v['detail']}" for k, v in r["checks"].items() if not v["ok"]]
    lines.append(
        "ready      "
        + ("yes (database, spool, disk)" if r["ready"] else "NO  " + "; ".join(failing))
        + "  (checked by this command)"
    )
    e = s["endpoint"]
    if not e["enabled"]:
        lines.append("metrics    off (metrics.enabled = false)")
    else:
        node = e.get("node", {})
        if node.get("reachable") is False:
            answer = f"node not answering ({node.get('error')})"
        elif not node.get("ours"):
            other = e.get("other_node")
            answer = (
                f"answered by a DIFFERENT node (id {other['id']}, database {other['database']})"
                if other
                else f"NOT a triage-node: {node.get('error')}"
            )
        elif node.get("ready"):
            answer = "node ready"
        else:
            state = {Phase.STARTING: "STARTING", Phase.STOPPING: "STOPPING"}
            answer = f"node {state.get(node.get('phase'), 'NOT READY')}: " + "; ".join(
                f"{k}: {v['detail']}" for k, v in node.get("checks", {}).items() if not v["ok"]
            )
        lines.append(f"metrics    {e['metrics_url']}  {answer}")
    err = s["last_error"]
    lines.append(
        "last error "
        + (f"{err['at']} {err['kind']} job {err['job_id']}: {err['message']}" if err else "none")
    )
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_drift(d: dict[str, Any]) -> list[str]:
    """The drift watch's lines: each scanner out of its reference range, or that none is."""
    if not d.get("enabled"):
        return ["drift      off (drift.enabled = false)"]
    if "error" in d:
        return [f"drift      unknown (database: {d['error']})"]
    scanners = d["scanners"]
    window = f"in the last {d['window_days']:g} days" if "window_days" in d else "yet"
    seen = f"{len(scanners)} scanner{'s' if len(scanners) != 1 else ''} {window}"
    if d.get("unjudged"):
        why = (
            "no reference in the model bundle: scanners are not judged"
            if d["unjudged"] == NO_REFERENCE
            else f"not judged ({d['unjudged']})"
        )
        return [f"drift      {why}  ({seen})"]
    judged = [sc for sc in scanners if any(c["judged"] for c in sc["checks"])]
    out = [sc for sc in scanners if sc["out_of_range"]]
    if not out:
        return [
            f"drift      {seen}, {len(judged)} judged (at least {d['min_images']} images), "
            "all within the reference"
        ]
    lines = [f"drift      {len(out)} of {seen} OUT OF RANGE of the reference:"]
    for sc in out:
        rates = [
            f"{c['rate'] + (': ' + c['reason'] if c['reason'] else '')} "
            f"{_percent(c['observed'])} ({c['count']} of {c['n']}; expected "
            f"{_percent(c['expected_low'])}-{_percent(c['expected_high'])}, "
            f"reference {_percent(c['reference'])})"
            for c in sc["checks"]
            if c["out_of_range"]
        ]
        lines.append(
            f"           {sc['manufacturer'] or '?'} / {sc['model_name'] or '?'}: "
            + "; ".join(rates)
        )
    return lines


def main(args: argparse.Namespace) -> int:
    """Print the status as text or one JSON object; the exit code is the answer's."""
    settings = load_settings(args.config)
    status = collect_status(settings)
    if args.json:
        json.dump(status, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_status(status))
    return int(status["exit_code"])
