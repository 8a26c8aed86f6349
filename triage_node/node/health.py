"""Readiness checks (database reachable, spool writable, model loaded, free disk above
watermark) and who the node is.

The same checks answer ``/readyz`` in a running node and the ``ready`` part of
``triage-node status``. Each check says what it found, never a patient's data.

A node identifies itself on ``/healthz`` and ``/readyz`` by :func:`node_identity`:
its node id, the database it serves (password removed) and its data directory.
The node id is derived from the last two (:func:`node_id`), so ``status`` can
compute, from its own config, the id the node of that config must answer with,
and tell when another process answers on the metrics port instead.
"""

from __future__ import annotations

import enum
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from triage_node.config import Settings
from triage_node.store.db import Store, redact_url
from triage_node.store.queries import free_disk_bytes

_MB = 1024 * 1024
PROBE_PREFIX = ".ready-probe-"


class Phase(enum.StrEnum):
    """Where a node process is in its life, as ``/healthz`` and ``/readyz`` report it."""

    STARTING = "starting"  # endpoint up, model loading, receiver and workers not yet started
    RUNNING = "running"  # every stage started (ready or not: see the checks)
    STOPPING = "stopping"  # a signal arrived: receiver closing, workers giving jobs back


def node_id(settings: Settings) -> str:
    """The id of the node a config describes: 16 hex digits, stable for its database and data dir.

    A SHA-256 of the database URL with its password removed and the absolute data
    directory: the same for every process started with the same config (a
    ``receive`` and a ``work`` process of one node share it), different for a node
    with another database or data directory. No secret goes in, and the id
    changes only when those two settings do.
    """
    key = "\n".join(
        ["triage-node", redact_url(settings.database_url), str(settings.data_dir.resolve())]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def node_identity(settings: Settings) -> dict[str, Any]:
    """Who answers: node id, AE title, database (no password), data dir, config file, pid."""
    return {
        "id": node_id(settings),
        "ae_title": settings.node.ae_title,
        "database": redact_url(settings.database_url),
        "data_dir": str(settings.data_dir.resolve()),
        "config": settings.source,
        "pid": os.getpid(),
    }


@dataclass(frozen=True)
class CheckResult:
    """One readiness check: passed or not, and what was found."""

    name: str
    ok: bool
    detail: str


def check_database(store: Store | None, settings: Settings) -> CheckResult:
    """The database answers a query (and, for SQLite, its file is still where it was)."""
    url = redact_url(settings.database_url)
    if store is None:
        return CheckResult("database", False, f"{url}: not created yet")
    if store.is_sqlite and "///" in store.url:
        path = store.url.split("///", 1)[1]
        # An open SQLite connection keeps answering from a file that was moved or
        # deleted; the node's next writer would not find it.
        if path and path != ":memory:" and not Path(path).is_file():
            return CheckResult("database", False, f"{url}: database file missing")
    try:
        store.ping()
    except Exception as exc:
        return CheckResult(
            "database",
            False,
            f"{url}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
        )
    return CheckResult("database", True, url)


def check_spool_writable(settings: Settings) -> CheckResult:
    """Write, fsync and remove a probe file in the spool: the real test, also for root.

    Permission bits do not stop root, so a mode check would say "writable" on a
    spool that cannot take a file (read-only mount, full disk, path not a directory).
    """
    spool = settings.spool_dir
    probe = spool / f"{PROBE_PREFIX}{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return CheckResult(
            "spool", False, f"{spool}: cannot write a file: {exc.strerror or type(exc).__name__}"
        )
    return CheckResult("spool", True, f"{spool}: writable")


def check_free_disk(
    settings: Settings, free_bytes: Callable[[Path], int | None] = free_disk_bytes
) -> CheckResult:
    """Free space in the data directory is above ``receive.min_free_disk_mb``."""
    watermark = settings.receive.min_free_disk_mb * _MB
    free = free_bytes(settings.data_dir)
    if free is None:
        return CheckResult("disk", False, f"{settings.data_dir}: free space cannot be read")
    ok = free >= watermark
    return CheckResult(
        "disk",
        ok,
        f"{free // _MB} MB free, watermark "
        f"{settings.receive.min_free_disk_mb} MB"
        + ("" if ok else ": new instances are refused (0xA700)"),
    )


def check_model(model_check: Callable[[], str] | None) -> CheckResult | None:
    """The process's model is loaded: ``model_check`` returns its name or raises."""
    if model_check is None:
        return None
    try:
        return CheckResult("model", True, model_check())
    except Exception as exc:
        return CheckResult("model", False, str(exc)[:300] or type(exc).__name__)


def readiness(
    settings: Settings,
    store: Store | None,
    model_check: Callable[[], str] | None = None,
    free_bytes: Callable[[Path], int | None] = free_disk_bytes,
) -> dict[str, Any]:
    """All checks: ``{"ready": bool, "checks": {name: {"ok": ..., "detail": ...}}}``.

    ``model_check`` None leaves the model out (a ``receive``-only process does not
    score; the admin commands cannot see another process's memory).
    """
    results = [
        check_database(store, settings),
        check_spool_writable(settings),
        check_free_disk(settings, free_bytes),
    ]
    model = check_model(model_check)
    if model is not None:
        results.append(model)
    return {
        "ready": all(r.ok for r in results),
        "checks": {r.name: {k: v for k, v in asdict(r).items() if k != "name"} for r in results},
    }
