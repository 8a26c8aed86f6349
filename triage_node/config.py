"""The node's one settings object: loaded from TOML once, checked at start.

Every key has a default. A wrong key, type or value raises :class:`ConfigError`
naming the key and the file; the command line turns that into exit code 2.
Environment variables ``TRIAGE_NODE__SECTION__KEY`` override the file.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_CONFIG = "TRIAGE_NODE_CONFIG"
ENV_PREFIX = "TRIAGE_NODE__"
SYSTEM_CONFIG = Path("/etc/triage-node/config.toml")


class ConfigError(Exception):
    """A configuration file or override is wrong; the message names key and file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    data_dir: Path = Path("./triage-data")
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


class EligibilitySection(_Section):
    """Which instances are scored; everything else is stored and skipped with a reason."""

    modalities: list[str] = ["CR", "DX"]
    body_parts: list[str] = ["HIP", "PELVIS"]
    view_positions: list[str] = ["AP", "PA", ""]
    # Extra rule: "TAG=VALUE" pairs; an instance is eligible when all of them match.
    require: dict[str, str] = {}


class TlsSection(_Section):
    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    # CAs trusted both ways: client certificates of the receiver's peers, and the
    # certificates of destinations with tls = true.
    ca_certificates: Path | None = None
    # Receiver: ask peers for a certificate signed by ca_certificates. Unset: yes when
    # ca_certificates is set. false: check destinations only.
    require_client_certificate: bool | None = None
    # For outgoing associations to destinations with tls = true.
    client_certificate: Path | None = None
    client_private_key: Path | None = None

    @field_validator("require_client_certificate")
    @classmethod
    def _needs_ca(cls, value: bool | None, info: Any) -> bool | None:
        if value and info.data.get("ca_certificates") is None:
            raise ValueError("true needs tls.ca_certificates (the CAs to check them against)")
        return value

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
    # The operating point; None (written "" in TOML, which has no null) means the bundle's own.
    threshold: float | None = None

    @field_validator("threshold", mode="before")
    @classmethod
    def _empty_is_the_bundles(cls, value: object) -> object:
        return None if value == "" else value


#: The result objects the report job can make; see README "Configuration".
ResultObject = Literal["sr", "sc", "map"]


class ReportSection(_Section):
    """Which result objects the report job builds and sends for each study."""

    # "sr": the study's Structured Report (always: it carries the decision and the
    # disclaimers); "sc": a heatmap Secondary Capture per scored image; "map": the
    # machine-readable attention map (fractional Segmentation) per scored image.
    objects: list[ResultObject] = ["sr", "sc", "map"]

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


class Settings(_Section):
    """All configuration of one node; see README "Configuration" for every key."""

    node: NodeSection = NodeSection()
    receive: ReceiveSection = ReceiveSection()
    eligibility: EligibilitySection = EligibilitySection()
    tls: TlsSection = TlsSection()
    peers: list[PeerSection] = []
    destinations: list[DestinationSection] = []
    worker: WorkerSection = WorkerSection()
    deliver: DeliverSection = DeliverSection()
    model: ModelSection = ModelSection()
    report: ReportSection = ReportSection()
    logging: LoggingSection = LoggingSection()
    metrics: MetricsSection = MetricsSection()
    retention: RetentionSection = RetentionSection()

    source: str = Field("built-in defaults", exclude=True)

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

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


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


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
        target[key] = _env_value(raw)
        applied.append(name)
    return applied


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = e["msg"]
        lines.append(f"config error in {source}: key '{key}': {msg}")
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
