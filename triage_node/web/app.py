"""The web console: pages and their JSON twins, routed from one request to one response.

:class:`Console` knows nothing of sockets: :mod:`triage_node.web.server` hands it
a :class:`Request` (from the metrics endpoint or the console's own port) and
writes the :class:`Response` back. Pages are server-rendered Jinja2; the one
script (``static/console.js``) refreshes the worklist's rows when new events
arrive. Every fact comes from the read-only views the terminal commands use
(:mod:`triage_node.work.views`, :mod:`triage_node.store.queries`); the one
action, resending a study's results, is :func:`triage_node.work.resend.resend`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import mimetypes
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select

from triage_node.assessment import HISTOGRAM_EDGES
from triage_node.config import Settings
from triage_node.score.loader import describe_model
from triage_node.score.reference import ValidationReference
from triage_node.store.db import Store
from triage_node.store.models import (
    REFUSED,
    DeliveryState,
    Instance,
    InstanceState,
    Result,
    ResultKind,
    Study,
    utcnow,
)
from triage_node.store.queries import hourly_trends
from triage_node.web import charts
from triage_node.web.auth import Login, Sessions, csrf_ok
from triage_node.web.results import heatmap_jpeg, sr_content
from triage_node.work.drift import (
    HIP_NOT_ASSESSABLE,
    NOT_ASSESSABLE,
    POSITIVE,
    DriftReport,
    configured_reference,
    drift_report,
)
from triage_node.work.report import result_file
from triage_node.work.resend import UnknownStudies, resend
from triage_node.work.views import last_event_id, recent_instances, status_facts, study_detail

log = logging.getLogger(__name__)

#: :func:`triage_node.work.drift.configured_reference`'s answer: the bundle's validation
#: reference (or None), why there is none, the operating point the node decides at.
Reference = tuple[ValidationReference | None, str, float]

COOKIE = "triage_console"
#: Worklist filters the page offers (the states of ``worklist --state``, and refused).
STATES = [s.value for s in InstanceState if s != InstanceState.RECEIVED] + [REFUSED]
DELIVERY_STATES = [s.value for s in DeliveryState]
#: How far back the worklist's "received within" filter and the trends page look.
PERIODS = {"1": "last hour", "24": "last 24 hours", "72": "last 3 days", "168": "last 7 days"}
TREND_PERIODS = {"24": "24 hours", "72": "3 days", "168": "7 days"}
WORKLIST_LIMIT = 200
#: Seconds the model's description (read from its bundle, hashes checked) is reused.
MODEL_CACHE_SECONDS = 60.0
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer makes chromium send Origin: null)
    "X-Frame-Options": "DENY",
}


@dataclass
class Request:
    """One HTTP request as the console needs it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes = b""
    tls: bool = False

    @classmethod
    def from_target(
        cls, method: str, target: str, headers: Mapping[str, str], body: bytes, tls: bool
    ) -> Request:
        parts = urllib.parse.urlsplit(target)
        return cls(
            method,
            urllib.parse.unquote(parts.path),
            urllib.parse.parse_qs(parts.query),
            headers,
            body,
            tls,
        )

    def arg(self, name: str, default: str = "") -> str:
        return (self.query.get(name) or [default])[0].strip()

    def form(self) -> dict[str, str]:
        fields = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"))
        return {k: v[0] for k, v in fields.items()}

    def cookie(self, name: str) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class Forbidden(Exception):
    """403: the request may not do this (no admin login, no valid CSRF token)."""


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        status, (json.dumps(doc, default=str) + "\n").encode(), "application/json; charset=utf-8"
    )


def _since(hours: str) -> dt.datetime | None:
    return utcnow() - dt.timedelta(hours=int(hours)) if hours in PERIODS else None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _when(value: str | None) -> str:
    return (value or "").replace("T", " ")[:19] or "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none waiting"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _percent(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:.0f}%"


class Console:
    """The console of one node process: its settings, its store, its readiness."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        readiness: Callable[[], dict[str, Any]],
        identity: Mapping[str, Any],
    ) -> None:
        self.settings = settings
        self.store = store
        self.readiness = readiness
        self.identity = dict(identity)
        self.sessions = Sessions(settings.web.users, settings.web.session_minutes * 60)
        self._model_lock = threading.Lock()
        self._model_cache: tuple[float, dict[str, Any], Reference] | None = None
        self.env = Environment(
            loader=PackageLoader("triage_node.web", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(when=_when, size=_size, age=_age, percent=_percent)
        self.env.globals.update(
            decision_class=lambda d: {
                "DXA recommended": "positive",
                "low likelihood": "negative",
                "not assessable": "na",
            }.get(d or "", "none")
        )

    # --- plumbing -----------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route one request; never raises (a failure is a 500 page, logged)."""
        try:
            response = self._route(request)
        except Forbidden as exc:
            response = self._page(
                request, "error.html", status=403, title="Not allowed", message=str(exc)
            )
        except Exception:
            log.exception("console request failed", extra={"path": request.path})
            response = Response(500, b"internal error\n", "text/plain; charset=utf-8")
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _login(self, request: Request) -> Login | None:
        return self.sessions.get(request.cookie(COOKIE))

    def _page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        login = self._login(request)
        html = self.env.get_template(template).render(
            node=self.identity,
            login=login,
            logins=self.sessions.required,
            path=request.path,
            synthetic=self._model().get("synthetic"),
            **context,
        )
        return Response(status, html.encode())

    def _bundle_facts(self) -> tuple[dict[str, Any], Reference]:
        """The model's description and its bundle's validation reference (as the drift
        watch reads it), read at most every :data:`MODEL_CACHE_SECONDS`."""
        with self._model_lock:
            cached = self._model_cache
            if cached is not None and time.monotonic() - cached[0] < MODEL_CACHE_SECONDS:
                return cached[1], cached[2]
            model = describe_model(self.settings, check_implementation=False)
            reference = configured_reference(self.settings)
            self._model_cache = (time.monotonic(), model, reference)
            return model, reference

    def _model(self) -> dict[str, Any]:
        return self._bundle_facts()[0]

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/login":
            return self._login_page(request) if method == "GET" else self._do_login(request)
        if path == "/logout" and method == "POST":
            return self._do_logout(request)
        login = self._login(request)
        if method == "POST":
            # Never a redirect to the login page: a POST without an admin's login is refused.
            match = re.fullmatch(r"/study/([0-9.]{1,64})/resend", path)
            if match:
                return self._resend(request, login, match.group(1))
            return Response(405, b"method not allowed\n", "text/plain; charset=utf-8")
        if self.sessions.required and login is None:
            if path.startswith("/api/"):
                return _json({"error": "log in first"}, 401)
            target = urllib.parse.quote(
                path
                + ("?" + urllib.parse.urlencode(request.query, doseq=True) if request.query else "")
            )
            return Response(303, b"", headers={"Location": f"/login?next={target}"})
        if method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", "text/plain; charset=utf-8")
        if path in ("/", ""):
            return Response(303, b"", headers={"Location": "/worklist"})
        if path == "/worklist":
            return self._worklist(request)
        if path == "/api/worklist":
            return _json(self._worklist_rows(request)[0])
        match = re.fullmatch(r"/(api/)?study/([0-9.]{1,64})", path)
        if match:
            return self._study(request, match.group(2), api=bool(match.group(1)))
        match = re.fullmatch(r"/study/([0-9.]{1,64})/heatmap/(\d+)\.jpg", path)
        if match:
            return self._heatmap(match.group(1), int(match.group(2)))
        if path == "/status":
            return self._page(request, "status.html", title="Status", s=self._status())
        if path == "/api/status":
            return _json(self._status())
        if path == "/trends":
            return self._trends(request)
        if path == "/api/trends":
            data = self._trend_data(request)
            return _json(
                {
                    "hours": data["hours"],
                    "histogram_edges": HISTOGRAM_EDGES,
                    "scanners": data["drift"].to_json(),
                }
            )
        return self._page(
            request, "error.html", status=404, title="Not found", message=f"No page at {path}."
        )

    def _static(self, name: str) -> Response:
        if not re.fullmatch(r"[a-z0-9_-]+\.(css|js|svg)", name):
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        resource = resources.files("triage_node.web") / "static" / name
        if not resource.is_file():
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = Response(200, resource.read_bytes(), kind + "; charset=utf-8")
        response.headers["Cache-Control"] = "max-age=300"
        return response

    # --- login --------------------------------------------------------------------------

    def _login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        return self._page(
            request,
            "login.html",
            status=status,
            title="Log in",
            error=error,
            next=request.arg("next") or "/worklist",
        )

    def _same_origin(self, request: Request) -> bool:
        """A browser's POST names its origin; it must be this console's own."""
        origin = request.headers.get("Origin")
        if not origin or origin == "null":
            return origin is None
        return urllib.parse.urlsplit(origin).netloc == request.headers.get("Host", "")

    def _do_login(self, request: Request) -> Response:
        if not self.sessions.required:
            return self._login_page(request, "This console has no users: pages are read-only.", 400)
        if not self._same_origin(request):
            raise Forbidden("The login form was sent from another site.")
        form = request.form()
        found = self.sessions.login(form.get("user", ""), form.get("password", ""))
        if found is None:
            log.warning("console login refused", extra={"user": form.get("user", "")[:64]})
            request.query["next"] = [form.get("next", "")]
            return self._login_page(request, "Wrong user name or password.", 401)
        token, login = found
        log.info("console login", extra={"user": login.user, "role": login.role})
        target = form.get("next") or "/worklist"
        if not target.startswith("/") or target.startswith("//"):
            target = "/worklist"
        secure = "; Secure" if request.tls else ""
        return Response(
            303,
            b"",
            headers={
                "Location": target,
                "Set-Cookie": f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}",
            },
        )

    def _do_logout(self, request: Request) -> Response:
        login = self._login(request)
        if login is not None and csrf_ok(login, request.form().get("csrf")):
            self.sessions.logout(request.cookie(COOKIE))
        return Response(
            303,
            b"",
            headers={
                "Location": "/login" if self.sessions.required else "/worklist",
                "Set-Cookie": f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict",
            },
        )

    # --- worklist -----------------------------------------------------------------------

    def _filters(self, request: Request) -> dict[str, str]:
        return {
            "state": request.arg("state") if request.arg("state") in STATES else "",
            "modality": request.arg("modality")[:16],
            "delivery": request.arg("delivery")
            if request.arg("delivery") in DELIVERY_STATES
            else "",
            "hours": request.arg("hours") if request.arg("hours") in PERIODS else "",
            "uid": re.sub(r"[^0-9.]", "", request.arg("uid"))[:64],
        }

    def _worklist_rows(self, request: Request) -> tuple[list[dict[str, Any]], int]:
        f = self._filters(request)
        with self.store.read() as session:
            last = last_event_id(session)
            rows = recent_instances(
                session,
                state=f["state"] or None,
                limit=WORKLIST_LIMIT,
                modality=f["modality"] or None,
                delivery_state=f["delivery"] or None,
                since=_since(f["hours"]),
                uid=f["uid"] or None,
            )
        return rows, last

    def _worklist(self, request: Request) -> Response:
        after = request.arg("after")
        if request.arg("fragment") == "rows":
            with self.store.read() as session:
                last = last_event_id(session)
            if after.isdigit() and last <= int(after):
                return Response(204, b"")
            rows, last = self._worklist_rows(request)
            html = self.env.get_template("_rows.html").render(rows=rows)
            return Response(200, html.encode(), headers={"X-Last-Event": str(last)})
        rows, last = self._worklist_rows(request)
        with self.store.read() as session:
            modalities = sorted(
                m for (m,) in session.execute(select(Instance.modality).distinct()) if m
            )
        return self._page(
            request,
            "worklist.html",
            title="Worklist",
            rows=rows,
            last_event=last,
            filters=self._filters(request),
            states=STATES,
            delivery_states=DELIVERY_STATES,
            periods=PERIODS,
            limit=WORKLIST_LIMIT,
            modalities=modalities,
            poll_ms=int(self.settings.web.poll_seconds * 1000),
        )

    # --- study --------------------------------------------------------------------------

    def _study(
        self, request: Request, uid: str, *, api: bool, message: list[str] | None = None
    ) -> Response:
        with self.store.read() as session:
            study = study_detail(session, uid)
        if study is None:
            if api:
                return _json({"error": "unknown study"}, 404)
            return self._page(
                request,
                "error.html",
                status=404,
                title="Unknown study",
                message="The node has no study with this Study Instance UID.",
            )
        if api:
            return _json(study)
        sr = None
        heatmaps = []
        current = [r for r in study["results"] if r["current"]]
        by_id = {i["id"]: i for i in study["instances"]}
        if not study["spool_purged"]:
            with self.store.read() as session:
                files = {
                    row.id: result_file(self.settings, row)
                    for row in session.scalars(
                        select(Result).where(Result.id.in_([r["id"] for r in current]))
                    )
                }
            for r in current:
                if r["kind"] == ResultKind.SR and sr is None and r["id"] in files:
                    try:
                        sr = sr_content(files[r["id"]])
                    except (OSError, ValueError) as exc:
                        log.warning("SR not readable for the console: %s", type(exc).__name__)
                elif r["kind"] == ResultKind.SC:
                    heatmaps.append({**r, "source": by_id.get(r["source_instance_id"])})
        login = self._login(request)
        return self._page(
            request,
            "study.html",
            title="Study " + uid[-13:],
            study=study,
            sr=sr,
            heatmaps=heatmaps,
            can_resend=login is not None and login.admin,
            message=message,
        )

    def _heatmap(self, uid: str, result_id: int) -> Response:
        with self.store.read() as session:
            result = session.scalars(
                select(Result)
                .join(Study, Study.id == Result.study_id)
                .where(
                    Result.id == result_id,
                    Study.study_instance_uid == uid,
                    Result.kind == ResultKind.SC,
                )
            ).first()
            path = result_file(self.settings, result) if result is not None else None
        if path is None:
            return Response(404, b"no such heatmap\n", "text/plain; charset=utf-8")
        try:
            body = heatmap_jpeg(path)
        except (OSError, ValueError) as exc:
            return Response(
                404,
                f"heatmap not readable: {type(exc).__name__}\n".encode(),
                "text/plain; charset=utf-8",
            )
        response = Response(200, body, "image/jpeg")
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    def _resend(self, request: Request, login: Login | None, uid: str) -> Response:
        if login is None or not login.admin:
            raise Forbidden("Resending results needs an administrator's login.")
        if not self._same_origin(request) or not csrf_ok(login, request.form().get("csrf")):
            raise Forbidden("The form has no valid CSRF token: reload the page and try again.")
        try:
            with self.store.write() as session:
                lines = resend(self.settings, session, [uid])
        except UnknownStudies:
            return self._study(request, uid, api=False)
        log.info("console resend", extra={"user": login.user, "study": uid, "actions": lines})
        return self._study(request, uid, api=False, message=lines)

    # --- status and trends --------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        with self.store.read() as session:
            facts = status_facts(session, self.settings.data_dir)
        return {
            **facts,
            "node": self.identity,
            "ready": self.readiness(),
            "model": self._model(),
            "min_free_disk_bytes": self.settings.receive.min_free_disk_mb * 1024 * 1024,
            "destinations": [
                {"name": d.name, "address": f"{d.ae_title}@{d.host}:{d.port}", "tls": d.tls}
                for d in self.settings.destinations
            ],
        }

    def _trend_data(self, request: Request) -> dict[str, Any]:
        hours = request.arg("hours", "24")
        hours = hours if hours in TREND_PERIODS else "24"
        now = utcnow()
        with self.store.read() as session:
            trend = hourly_trends(session, now - dt.timedelta(hours=int(hours) - 1), now)
        drift = drift_report(self.settings, self.store, now, self._bundle_facts()[1])
        return {
            "period": hours,
            "hours": [asdict(h) for h in trend],
            "trend": trend,
            "drift": drift,
        }

    def _trends(self, request: Request) -> Response:
        data = self._trend_data(request)
        trend = data["trend"]
        hours = [h.hour for h in trend]
        volume = charts.hourly_bars(
            hours,
            [
                charts.Series("instances received", [h.arrivals for h in trend]),
                charts.Series("reports made", [h.reports for h in trend]),
            ],
            title="Instances received and reports made per hour",
            y_label="per hour",
        )
        latency = charts.hourly_lines(
            hours,
            [
                charts.Series("median (p50)", [h.latency_p50 for h in trend]),
                charts.Series("95th percentile (p95)", [h.latency_p95 for h in trend]),
            ],
            title="End-to-end latency per hour: first instance received to report delivered",
            y_label="seconds",
        )
        return self._page(
            request,
            "trends.html",
            title="Trends",
            trend=trend,
            period=data["period"],
            periods=TREND_PERIODS,
            volume=volume,
            latency=latency,
            drift=data["drift"],
            scanners=self._scanner_rows(data["drift"]),
            totals={
                "arrivals": sum(h.arrivals for h in trend),
                "reports": sum(h.reports for h in trend),
                "deliveries": sum(h.deliveries for h in trend),
            },
        )

    def _scanner_rows(self, drift: DriftReport) -> list[dict[str, Any]]:
        """Each scanner of the drift watch's window, its checks by rate, and its values
        against the reference's, for the template."""
        reference = drift.reference
        rows = []
        for scanner in drift.scanners:
            s = scanner.summary
            by_rate = {(c.rate, c.reason): c for c in scanner.checks}
            reasons = sorted(
                {r for r in s.hip_reasons}
                | {c.reason for c in scanner.checks if c.rate == HIP_NOT_ASSESSABLE}
            )
            rows.append(
                {
                    "name": " ".join(x for x in (s.manufacturer, s.model_name) if x)
                    or "unknown scanner",
                    "summary": s,
                    "positive": by_rate.get((POSITIVE, "")),
                    "not_assessable": by_rate.get((NOT_ASSESSABLE, "")),
                    "reasons": [
                        {
                            "reason": reason,
                            "hips": s.hip_reasons.get(reason, 0),
                            "check": by_rate.get((HIP_NOT_ASSESSABLE, reason)),
                        }
                        for reason in reasons
                    ],
                    "chart": charts.distribution(
                        s.histogram,
                        reference.value_fractions if reference else None,
                        HISTOGRAM_EDGES,
                        title=f"Image values of {s.manufacturer or 'unknown'} "
                        f"{s.model_name or ''}".strip()
                        + (" against the validation reference" if reference else ""),
                    ),
                }
            )
        return rows
