"""Logging for the node: JSON lines for journald and log shippers, plain text on a terminal.

Fields of a JSON line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, plus any extras passed with ``extra={...}`` such as
``sop_instance_uid``, ``job_id`` or ``owner``. Patient name, ID and birth
date must never be logged; :class:`PhiScrubFilter` is the backstop that
redacts extras whose names look like patient identifiers, whoever passed them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triage_node.config import Settings

REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

# Extras with these names (compared without case, "_" and "-") are patient identifiers.
_PHI_KEYS = frozenset(
    {
        "patientname",
        "patientid",
        "patientbirthdate",
        "patientsbirthdate",
        "patientsname",
        "otherpatientids",
        "otherpatientnames",
        "patientaddress",
        "patientmothersbirthname",
        "patientbirthname",
        "patienttelephonenumbers",
        "issuerofpatientid",
        "birthdate",
        "dateofbirth",
        "dob",
        "mrn",
    }
)


def _is_phi_key(name: str) -> bool:
    return name.lower().replace("_", "").replace("-", "") in _PHI_KEYS


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if _is_phi_key(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


class PhiScrubFilter(logging.Filter):
    """Redact extras (and keys of dict extras) named like patient identifiers.

    A backstop only: code must not pass patient data to a logger at all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(vars(record).items()):
            if key in _STANDARD_ATTRS:
                continue
            if _is_phi_key(key):
                setattr(record, key, REDACTED)
            elif isinstance(value, (dict, list, tuple)):
                setattr(record, key, _scrub(value))
        return True


_caller_reports = threading.local()


@contextmanager
def library_errors_reported_by_caller() -> Iterator[None]:
    """pynetdicom's warnings and errors about the association this thread requests in the
    block go to DEBUG: the caller reports the failure itself, in one line that names the
    peer and what to check (pynetdicom's lines name neither, and come several per attempt).
    """
    depth = getattr(_caller_reports, "depth", 0)
    _caller_reports.depth = depth + 1
    try:
        yield
    finally:
        _caller_reports.depth = depth


def _in_requested_association() -> bool:
    """True in a thread that requests an association under
    :func:`library_errors_reported_by_caller`, and in pynetdicom's threads of any
    association we requested (the association's own thread and its DUL thread)."""
    if getattr(_caller_reports, "depth", 0):
        return True
    thread = threading.current_thread()
    # Duck-typed, so logging does not import pynetdicom: an Association thread has
    # is_requestor, a DULServiceProvider thread has the association as ``assoc``.
    assoc = thread if hasattr(thread, "is_requestor") else getattr(thread, "assoc", None)
    return bool(getattr(assoc, "is_requestor", False))


class RequestorChatterFilter(logging.Filter):
    """pynetdicom's lines about associations the node requests are DEBUG lines.

    The delivery reports each failed attempt in one WARNING line of its own; the
    receiver's pynetdicom lines (associations peers request) are left as they are.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not record.name.startswith("pynetdicom"):
            return True
        if not _in_requested_association():
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields passed with ``extra=`` on a record."""
    return {
        k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = record_extras(record)
        if extras:
            tail = " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
            first, sep, rest = line.partition("\n")
            line = f"{first} [{tail}]{sep}{rest}"
        return line


def setup_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Configure the root logger from ``[logging]``; returns the installed handler.

    ``format = "auto"`` writes JSON lines unless ``stream`` (default stdout) is a
    terminal. Replaces handlers installed by an earlier call, so it is safe to
    call once per process start.
    """
    stream = stream if stream is not None else sys.stdout
    fmt = settings.logging.format
    if fmt == "auto":
        fmt = "text" if _isatty(stream) else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(PhiScrubFilter())
    handler.addFilter(RequestorChatterFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_triage_node", False):
            root.removeHandler(old)
    handler._triage_node = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.logging.level)
    # Library chatter (every PDU, every SQL statement, every timer run) drowns the
    # node's own lines, and pynetdicom's dataset dumps could carry patient data.
    # matplotlib (the heatmap's text) scores every font it knows at DEBUG.
    for noisy in ("pynetdicom", "sqlalchemy", "alembic", "apscheduler", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # highdicom says INFO for every module it copies into every SR and heatmap; pydicom
    # has INFO lines of its own: at the node's INFO they would be half of its log.
    # At DEBUG, the node's log has them.
    verbose = logging.getLevelName(settings.logging.level) <= logging.DEBUG
    for library in ("highdicom", "pydicom"):
        logging.getLogger(library).setLevel(logging.NOTSET if verbose else logging.WARNING)
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)  # "Running upgrade"
    logging.captureWarnings(True)
    return handler


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
