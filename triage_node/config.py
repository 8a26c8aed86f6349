"""The node's one settings object: loaded from TOML once, checked at start.

Every key has a default. A wrong key, type or value raises :class:`ConfigError`
naming the key and the file; the command line turns that into exit code 2.
Environment variables ``TRIAGE_NODE__SECTION__KEY`` override the file.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import re
import socket
import ssl
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

ENV_CONFIG = "TRIAGE_NODE_CONFIG"
ENV_PREFIX = "TRIAGE_NODE__"
SYSTEM_CONFIG = Path("/etc/triage-node/config.toml")


class ConfigError(Exception):
    """A configuration file or override is wrong; the message names key and file."""


class _Section(BaseModel):
    # strict: a TOML string is not a number or a boolean (``workers = "2"`` is an error,
    # not 2); TOML integers are still taken where a float is expected.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


#: A file or directory: a TOML string (relative to the current directory) or a Path.
ConfigPath = Annotated[Path, Field(strict=False)]

#: The pydantic error type of :func:`_error_at`: its ``key`` extends the error's location.
_KEYED_ERROR = "config_key"


def _error_at(key: str, message: str) -> PydanticCustomError:
    """A validation error about ``key`` inside the model that raises it (e.g. ``0.name``)."""
    return PydanticCustomError(_KEYED_ERROR, "{message}", {"message": message, "key": key})


def _check_ae_title(value: str) -> str:
    if not value or len(value) > 16 or not value.isascii() or "\\" in value:
        raise ValueError("an AE title is 1 to 16 ASCII characters without backslash")
    if value.strip() != value:
        raise ValueError("an AE title has no leading or trailing spaces")
    return value


class NodeSection(_Section):
    ae_title: str = "TRIAGE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    data_dir: ConfigPath = Path("./triage-data")
    database_url: str = ""
    settle_seconds: float = Field(10.0, ge=0)
    workers: int = Field(1, ge=1, le=64)

    _ae = field_validator("ae_title")(_check_ae_title)


class ReceiveSection(_Section):
    """Association limits, timeouts and the free-disk watermark of the receiver."""

    max_associations: int = Field(10, ge=1, le=1000)
    max_pdu_size: int = Field(4_194_304, ge=0)  # 0 means unlimited
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    min_free_disk_mb: int = Field(1024, ge=0)
    max_instance_mb: int = Field(512, ge=1)
    fsync: bool = True


#: A tag in a ``require`` key: ``00180015`` or ``(0018,0015)``.
_HEX_TAG = re.compile(r"\(?[0-9A-Fa-f]{4},?[0-9A-Fa-f]{4}\)?")


class EligibilitySection(_Section):
    """Which instances are scored; everything else is stored and skipped with a reason."""

    modalities: list[str] = ["CR", "DX"]
    body_parts: list[str] = ["HIP", "PELVIS"]
    view_positions: list[str] = ["AP", "PA", ""]
    # Extra rule: { Keyword = "VALUE" } pairs; an instance is eligible when all of them
    # match. A key is a DICOM keyword of pydicom's dictionary, or a tag as 8 hex digits.
    require: dict[str, str] = {}

    @field_validator("require")
    @classmethod
    def _keywords(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            return value
        # lazy: pydicom's data dictionary takes 0.2 s to import; only a rule needs it.
        from pydicom.datadict import keyword_dict, tag_for_keyword

        for key in value:
            text = key.strip()
            if tag_for_keyword(text) is not None or _HEX_TAG.fullmatch(text):
                continue
            close = difflib.get_close_matches(text, keyword_dict, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _error_at(
                key,
                f"{key!r} is not a DICOM keyword (as in the standard's data dictionary, "
                f"e.g. 'BodyPartExamined') nor a tag written as 8 hex digits{hint}",
            )
        return value


def _no_password() -> str:
    """The password callback of TLS key loading: an encrypted key fails instead of prompting."""
    return ""


def _check_file(key: str, path: Path) -> None:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        where = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise _error_at(key, f"{path} {what}{where}")


def _load_chain(
    context: ssl.SSLContext, keys: tuple[str, str], cert: Path, key: Path | None
) -> None:
    """Load a certificate and its key as the node will, or raise naming the keys."""
    _check_file(keys[0], cert)
    if key is not None:
        _check_file(keys[1], key)
    try:
        context.load_cert_chain(str(cert), str(key) if key else None, password=_no_password)
    except ssl.SSLError as exc:
        with_key = f" with key {key}" if key is not None else " (key in the same file)"
        raise _error_at(
            keys[0],
            f"cannot load certificate {cert}{with_key} ({exc.reason or exc.strerror}): "
            "check that both are PEM files, that the key belongs to the certificate "
            "and that the key is not encrypted",
        ) from None


class TlsSection(_Section):
    """TLS for the receiver (``enabled``) and for destinations with ``tls = true``.

    Every file configured is loaded at start, as the node will load it, so a
    missing, unreadable or mismatched file is a config error, not a failure on
    the first association.
    """

    enabled: bool = False
    certificate: ConfigPath | None = None
    private_key: ConfigPath | None = None
    # CAs trusted both ways: client certificates of the receiver's peers, and the
    # certificates of destinations with tls = true.
    ca_certificates: ConfigPath | None = None
    # Receiver: ask peers for a certificate signed by ca_certificates. Unset: yes when
    # ca_certificates is set. false: check destinations only.
    require_client_certificate: bool | None = None
    # For outgoing associations to destinations with tls = true.
    client_certificate: ConfigPath | None = None
    client_private_key: ConfigPath | None = None

    @field_validator("require_client_certificate")
    @classmethod
    def _needs_ca(cls, value: bool | None, info: Any) -> bool | None:
        if value and info.data.get("ca_certificates") is None:
            raise ValueError("true needs tls.ca_certificates (the CAs to check them against)")
        return value

    @model_validator(mode="after")
    def _files_load(self) -> TlsSection:
        if self.enabled:
            for key in ("certificate", "private_key"):
                if getattr(self, key) is None:
                    raise _error_at(
                        key,
                        "enabled = true needs certificate and private_key "
                        "(the receiver's PEM certificate and its key)",
                    )
            assert self.certificate is not None  # for mypy: checked just above
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _load_chain(server, ("certificate", "private_key"), self.certificate, self.private_key)
        if self.ca_certificates is not None:
            _check_file("ca_certificates", self.ca_certificates)
            try:
                ssl.create_default_context(cafile=str(self.ca_certificates))
            except ssl.SSLError as exc:
                raise _error_at(
                    "ca_certificates",
                    f"cannot load CA certificates from {self.ca_certificates} "
                    f"({exc.reason or exc.strerror}): check that it holds PEM certificates",
                ) from None
        if self.client_private_key is not None and self.client_certificate is None:
            raise _error_at(
                "client_private_key",
                "is set without client_certificate (the certificate it is for)",
            )
        if self.client_certificate is not None:
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            _load_chain(
                client,
                ("client_certificate", "client_private_key"),
                self.client_certificate,
                self.client_private_key,
            )
        return self

    @property
    def client_certificates_required(self) -> bool:
        """Whether the receiver requires and checks a client certificate."""
        if self.require_client_certificate is None:
            return self.ca_certificates is not None
        return self.require_client_certificate


class PeerSection(_Section):
    ae_title: str
    host: str = "127.0.0.1"

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value in ("*", "localhost"):
            return value
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError("host is an IP address, a network like 10.0.0.0/24, or *") from None
        return value


class DestinationSection(_Section):
    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False

    _ae = field_validator("ae_title")(_check_ae_title)


class CompletenessSection(_Section):
    """When a study is complete: ask the archive (C-FIND) instead of waiting ``settle_seconds``."""

    # The name of a [[destinations]] entry to ask (C-FIND, Study Root, IMAGE level) which
    # instances it holds for a study; "": none, every study waits node.settle_seconds.
    query_peer: str = ""
    # One C-FIND (connect, associate, answers) may take this long; then the study falls
    # back to node.settle_seconds.
    timeout_seconds: float = Field(5.0, gt=0)
    # When the archive lists instances the node does not hold yet (or does not list one
    # it holds yet), it is asked again after this long (until the settle time ends).
    recheck_seconds: float = Field(1.0, gt=0)


class WorkerSection(_Section):
    lease_seconds: float = Field(300.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    max_attempts: int = Field(5, ge=1)
    retry_base_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)


class DeliverSection(_Section):
    """Sending results to the destinations: retry policy, timeouts, batch size."""

    max_attempts: int = Field(10, ge=1)
    retry_base_seconds: float = Field(30.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    connection_timeout: float = Field(30.0, gt=0)  # TCP connect
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(120.0, gt=0)
    network_timeout: float = Field(120.0, gt=0)
    batch_size: int = Field(50, ge=1, le=1000)  # objects per association


class ModelSection(_Section):
    bundle: str = ""
    # The operating point, strictly between 0 and 1; None (written "" in TOML, which has
    # no null) means the bundle's own.
    threshold: float | None = None

    @field_validator("threshold", mode="before")
    @classmethod
    def _empty_is_the_bundles(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("threshold")
    @classmethod
    def _probability(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value < 1:
            raise ValueError(
                f"{value} is not strictly between 0 and 1; write a probability such as "
                '0.35, or "" for the operating point of the bundle'
            )
        return value


#: The result objects the report job can make; see README "Configuration".
ResultObject = Literal["sr", "sc", "map"]
#: How the heatmap secondary capture is encoded; see README "Configuration".
HeatmapTransferSyntax = Literal["jpeg-baseline", "jpeg-ls-lossless", "explicit-little-endian"]


class ReportSection(_Section):
    """Which result objects the report job builds and sends for each study."""

    # "sr": the study's Structured Report (always: it carries the decision and the
    # disclaimers); "sc": a heatmap Secondary Capture per scored image; "map": the
    # machine-readable attention map (fractional Segmentation) per scored image.
    objects: list[ResultObject] = ["sr", "sc", "map"]
    # The heatmap SC's transfer syntax: "jpeg-baseline" (lossy, YBR_FULL_422, a few
    # hundred kB), "jpeg-ls-lossless" (RGB, under 1 MB) or "explicit-little-endian"
    # (uncompressed RGB, several MB; for an archive that takes nothing else).
    heatmap_transfer_syntax: HeatmapTransferSyntax = "jpeg-baseline"

    @field_validator("objects")
    @classmethod
    def _objects(cls, value: list[ResultObject]) -> list[ResultObject]:
        if len(set(value)) != len(value):
            raise ValueError("each object may be named once")
        if "sr" not in value:
            raise ValueError(
                'must include "sr": the report carries the decision; "sc" and "map" only '
                "illustrate it"
            )
        return value


class LoggingSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class MetricsSection(_Section):
    """The operations HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: scrape through a local Prometheus or a proxy
    port: int = Field(9181, ge=0, le=65535)  # 0: any free port (tests)


#: A console password hash as ``triage-node console --hash-password`` prints it:
#: ``scrypt$N$r$p$SALT$HASH`` (salt and hash in URL-safe base64).
PASSWORD_HASH = re.compile(r"scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9_=-]{16,}\$[A-Za-z0-9_=-]{40,}")


class WebUserSection(_Section):
    """One console user: a name, a password hash (never the password), a role."""

    name: str = Field(min_length=1, max_length=64)
    password_hash: str
    # "viewer" reads every page; "admin" may also resend a study's results.
    role: Literal["viewer", "admin"] = "viewer"

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        if not PASSWORD_HASH.fullmatch(value):
            raise ValueError(
                "not a password hash: write what `triage-node console --hash-password` "
                "prints (scrypt$...), never the password itself"
            )
        return value


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class WebSection(_Section):
    """The web console: worklist, study, status and trends pages for the people who run the node.

    Without ``port`` it is served on the metrics endpoint (plain HTTP, loopback).
    With ``port`` it has a listener of its own at ``host``; an address other hosts
    can reach needs ``certificate``, ``private_key`` and at least one user.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    # None (written "" in TOML, which has no null): on the metrics endpoint.
    port: int | None = Field(None, ge=0, le=65535)
    certificate: ConfigPath | None = None
    private_key: ConfigPath | None = None
    users: list[WebUserSection] = []
    # How long a login lasts without a request.
    session_minutes: float = Field(480.0, gt=0)
    # Seconds between the worklist page's checks for new events.
    poll_seconds: float = Field(2.0, gt=0)

    # Why the console is off though web.enabled was not set (None: it is on, or was set off).
    _off_reason: str | None = PrivateAttr(None)

    @field_validator("port", mode="before")
    @classmethod
    def _empty_is_metrics(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("users")
    @classmethod
    def _unique_users(cls, value: list[WebUserSection]) -> list[WebUserSection]:
        seen: dict[str, int] = {}
        for i, user in enumerate(value):
            if user.name in seen:
                raise _error_at(
                    f"{i}.name", f"{user.name!r} is already the name of users.{seen[user.name]}"
                )
            seen[user.name] = i
        return value

    @model_validator(mode="after")
    def _tls_loads(self) -> WebSection:
        if (self.certificate is None) != (self.private_key is None):
            missing = "private_key" if self.private_key is None else "certificate"
            raise _error_at(missing, "certificate and private_key go together (HTTPS)")
        if self.certificate is not None:
            if self.port is None:
                raise _error_at(
                    "certificate",
                    "HTTPS needs the console's own port: set web.port (the metrics endpoint "
                    "stays plain HTTP)",
                )
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _load_chain(server, ("certificate", "private_key"), self.certificate, self.private_key)
        return self

    @property
    def tls(self) -> bool:
        return self.certificate is not None

    @property
    def off_reason(self) -> str | None:
        """Why the console is off though ``web.enabled`` was not set (None otherwise)."""
        return self._off_reason


class RetentionSection(_Section):
    """What is removed, and when: spool files, database rows, audit events."""

    enabled: bool = True
    # Spool files of a study, counted from its last delivery (only fully delivered
    # studies, and studies whose instances were all skipped, are ever removed).
    spool_days: float = Field(30.0, gt=0)
    # Database rows of a study whose spool files are gone, counted like spool_days.
    database_days: float = Field(90.0, gt=0)
    # Event rows (the audit trail: associations, deliveries, state changes).
    events_days: float = Field(365.0, gt=0)
    check_minutes: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _database_after_spool(self) -> RetentionSection:
        if self.database_days < self.spool_days:
            raise ValueError("database_days must be at least spool_days (rows point at files)")
        return self


class DriftSection(_Section):
    """The drift watch: each scanner's stream compared with the bundle's validation reference."""

    enabled: bool = True
    # The rolling window: images received in the last window_days count.
    window_days: float = Field(7.0, gt=0)
    # A scanner is judged once the model has judged this many of its images in the window
    # (the positive rate: this many assessable images); fewer are shown, never judged.
    min_images: int = Field(50, ge=1)
    # Coverage of the expected range: a scanner that behaves like the reference shows a
    # rate outside it about (1 - level) of the time.
    level: float = Field(0.99, gt=0, lt=1)
    # The metrics endpoint counts the window again at most this often (each scrape reads
    # the window's rows; 0: at every scrape).
    refresh_seconds: float = Field(60.0, ge=0)


class Settings(_Section):
    """All configuration of one node; see README "Configuration" for every key."""

    node: NodeSection = NodeSection()
    receive: ReceiveSection = ReceiveSection()
    eligibility: EligibilitySection = EligibilitySection()
    tls: TlsSection = TlsSection()
    peers: list[PeerSection] = []
    destinations: list[DestinationSection] = []
    completeness: CompletenessSection = CompletenessSection()
    worker: WorkerSection = WorkerSection()
    deliver: DeliverSection = DeliverSection()
    model: ModelSection = ModelSection()
    report: ReportSection = ReportSection()
    logging: LoggingSection = LoggingSection()
    metrics: MetricsSection = MetricsSection()
    web: WebSection = WebSection()
    retention: RetentionSection = RetentionSection()
    drift: DriftSection = DriftSection()

    source: str = Field("built-in defaults", exclude=True)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[DestinationSection]) -> list[DestinationSection]:
        first: dict[str, int] = {}
        for i, d in enumerate(value):
            if d.name in first:
                raise _error_at(
                    f"{i}.name",
                    f"{d.name!r} is already the name of destinations.{first[d.name]}: "
                    "each destination needs its own name (deliveries are recorded by name)",
                )
            first[d.name] = i
        return value

    @model_validator(mode="after")
    def _known_query_peer(self) -> Settings:
        name = self.completeness.query_peer
        if name and name not in {d.name for d in self.destinations}:
            known = ", ".join(repr(d.name) for d in self.destinations) or "none configured"
            raise _error_at(
                "completeness.query_peer",
                f"{name!r} is not the name of a [[destinations]] entry ({known}); name the "
                "archive to ask, or leave it empty to report after node.settle_seconds",
            )
        return self

    @model_validator(mode="after")
    def _console_not_open(self) -> Settings:
        """A console other hosts can reach has HTTPS and users; else the node does not start."""
        web = self.web
        if not web.enabled:
            return self
        if web.port is None:
            if not is_loopback(self.metrics.host):
                if "enabled" not in web.model_fields_set:
                    # A metrics endpoint opened for a Prometheus server elsewhere does not
                    # open the console with it: the console stays off (the node says so
                    # at start) unless web.enabled asks for it, which is refused below.
                    off = web.model_copy(update={"enabled": False})
                    off._off_reason = (
                        f"the metrics endpoint listens on {self.metrics.host}, which other hosts "
                        "can reach, and the console is not served there in plain HTTP without "
                        "login; give it its own web.port (with HTTPS and [[web.users]] for remote "
                        "use), or set web.enabled = false to silence this"
                    )
                    object.__setattr__(self, "web", off)
                    return self
                raise _error_at(
                    "metrics.host",
                    f"{self.metrics.host!r} is not a loopback address, and the web console "
                    "(web.enabled = true, no web.port) would be served on the metrics endpoint in "
                    "plain HTTP without login: set web.enabled = false, or give the console "
                    "its own web.port with web.certificate, web.private_key and [[web.users]]",
                )
            return self
        if is_loopback(web.host):
            return self
        missing = [
            what
            for what, there in (
                ("web.certificate and web.private_key (HTTPS)", web.tls),
                ("at least one [[web.users]] entry (login)", bool(web.users)),
            )
            if not there
        ]
        if missing:
            raise _error_at(
                "web.host",
                f"{web.host!r} is not a loopback address: a console other hosts can reach "
                f'needs {" and ".join(missing)}; or keep web.host = "127.0.0.1" behind a '
                "reverse proxy on this host",
            )
        return self

    @property
    def query_peer(self) -> DestinationSection | None:
        """The destination asked which instances a study holds (None: timer only)."""
        name = self.completeness.query_peer
        return next((d for d in self.destinations if d.name == name), None) if name else None

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    def listen_failure(self, section: str, exc: OSError) -> str:
        """Why ``[section] host:port`` (``node`` or ``metrics``) cannot be listened on,
        naming the key, the file and what to do, from the bind's error."""
        sect = getattr(self, section)
        host, port = sect.host, sect.port
        head = f"cannot listen on {host}:{port}"
        if isinstance(exc, socket.gaierror):
            return (
                f"{head} ({section}.host in {self.source}): {host!r} does not resolve; "
                f"set {section}.host to an address of this machine"
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return (
                f"{head} ({section}.host in {self.source}): {host} is not an address of "
                f"this machine; set {section}.host to one of its addresses, or 0.0.0.0 for all"
            )
        where = f"{head} ({section}.port in {self.source})"
        if exc.errno == errno.EADDRINUSE:
            return (
                f"{where}: address already in use; another process listens there (another "
                f"triage-node, or another service): stop it or choose another {section}.port"
            )
        if exc.errno == errno.EACCES:
            return (
                f"{where}: permission denied; a port below 1024 needs the "
                f"CAP_NET_BIND_SERVICE capability (the systemd unit grants it), or choose a "
                f"{section}.port from 1024 up"
            )
        return f"{where}: {exc.strerror or exc}"

    @property
    def spool_dir(self) -> Path:
        return self.node.data_dir / "spool"

    @property
    def database_url(self) -> str:
        if self.node.database_url:
            return self.node.database_url
        return f"sqlite:///{(self.node.data_dir / 'triage.db').resolve()}"


def default_config_path(environ: dict[str, str] | None = None) -> Path | None:
    """The file used when no --config is given: $TRIAGE_NODE_CONFIG, then /etc."""
    env = (os.environ if environ is None else environ).get(ENV_CONFIG)
    if env:
        return Path(env)
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return None


def _env_value(raw: str, text: bool) -> Any:
    """An override's value: TOML (``11113``, ``false``, ``["CR"]``), or the raw text for a
    text key (``ae_title = 1234`` from the environment is the AE title "1234")."""
    if text:
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _is_text_key(section: str, key: str) -> bool:
    """True when ``[section] key`` takes text (a string or a path)."""
    field = Settings.model_fields.get(section)
    model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return False
    inner = model.model_fields.get(key)
    if inner is None:
        return False
    annotation = inner.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    else:
        options = [annotation]
    return all(a in (str, Path) for a in options)


def _apply_env(data: dict[str, Any], environ: dict[str, str]) -> list[str]:
    applied = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {name}: expected {ENV_PREFIX}SECTION__KEY")
        section, key = parts
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"environment variable {name}: [{section}] is not a table")
        target[key] = _env_value(raw, _is_text_key(section, key))
        applied.append(name)
    return applied


_TYPE_ERRORS = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "text in quotes",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}


def _described(value: Any) -> str:
    kind = {str: "text", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), f"a {type(value).__name__}"
    )
    shown = repr(value)
    return f"{kind} ({shown[:40]}{'...' if len(shown) > 40 else ''})"


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == _KEYED_ERROR:
            loc.append(str(e.get("ctx", {})["key"]))
            msg = e["msg"]
        elif e["type"] == "value_error" and "error" in e.get("ctx", {}):
            msg = str(e["ctx"]["error"])  # our own words, without pydantic's "Value error, "
        elif e["type"] in _TYPE_ERRORS:
            msg = f"expected {_TYPE_ERRORS[e['type']]}, got {_described(e['input'])}"
            if e["type"] in ("int_type", "float_type") and isinstance(e["input"], str):
                msg += ": write numbers without quotes"
        else:
            msg = e["msg"]
        lines.append(f"config error in {source}: key '{'.'.join(loc)}': {msg}")
    return "\n".join(lines)


def load_settings(
    path: Path | str | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Load and check the configuration.

    ``path`` None means the default search (``$TRIAGE_NODE_CONFIG``, then
    ``/etc/triage-node/config.toml``, then built-in defaults). Relative
    ``data_dir`` values are taken relative to the current directory.
    """
    environ = dict(os.environ) if environ is None else environ
    cfg_path = Path(path) if path is not None else default_config_path(environ)
    data: dict[str, Any] = {}
    source = "built-in defaults"
    if cfg_path is not None:
        source = str(cfg_path)
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config error: file {cfg_path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config error: cannot read {cfg_path}: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config error in {cfg_path}: not valid TOML: {exc}") from None
    applied = _apply_env(data, environ)
    if applied:
        source += " (with environment overrides " + ", ".join(applied) + ")"
    if "source" in data:
        raise ConfigError(f"config error in {source}: key 'source': unknown key")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
    settings.source = source
    return settings
