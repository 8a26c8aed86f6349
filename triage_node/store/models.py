"""SQLAlchemy models of the node's durable state: instances, studies, jobs, results, events.

Refused C-STOREs are rows of their own (``refusals``), never instances: nothing
refused is scored, reported, delivered or counted as received.

Stages hand work to each other only through these rows (and spool files). No
column holds a patient's name, ID or birth date: the spool file has them, the
database has UIDs and our own ids.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates

from triage_node.store.clock import utcnow as utcnow

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Length of the scanner columns (Manufacturer and Manufacturer's Model Name are LO: 64).
SCANNER_TEXT_LENGTH = 64


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on both SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use triage_node.store.utcnow()")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class InstanceState(enum.StrEnum):
    """Where a received instance is in the flow."""

    RECEIVED = "received"  # durable, eligibility not yet decided (only inside a transaction)
    QUEUED = "queued"  # eligible, score job waiting
    SKIPPED = "skipped"  # stored, not eligible (reason says why)
    SCORING = "scoring"
    SCORED = "scored"
    NOT_ASSESSABLE = "not_assessable"
    FAILED = "failed"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobKind(enum.StrEnum):
    SCORE = "score"
    REPORT = "report"
    DELIVER = "deliver"


class StudyState(enum.StrEnum):
    """Where a study is between its instances and its report."""

    OPEN = "open"  # instances arriving or being scored, nothing to report yet
    REPORTING = "reporting"  # settled: a report job is queued or running
    REPORTED = "reported"  # the newest report version is built (delivery is separate)
    REPORT_FAILED = "report_failed"  # the report job failed; last_error says why


class CompletenessPath(enum.StrEnum):
    """How a study was found complete before its report was queued (event ``study_settled``)."""

    ARCHIVE = "archive"  # the query peer lists no eligible instance the node does not hold
    TIMER = "timer"  # node.settle_seconds of quiet (no query peer, or it could not answer)


class DeliveryState(enum.StrEnum):
    """Delivery of result objects to a destination (per object, rolled up per study)."""

    PENDING = "pending"
    RETRYING = "retrying"  # the last attempt failed; the deliver job will try again
    DELIVERED = "delivered"
    FAILED = "failed"  # attempts exhausted (or refused for good); `resend` puts it back
    NO_DESTINATION = "no_destination"  # no [[destinations]] configured: kept in the spool


class ResultKind(enum.StrEnum):
    """What a result object is: the Structured Report, a heatmap Secondary Capture, or an
    attention map (a fractional Segmentation a viewer can overlay)."""

    SR = "SR"
    SC = "SC"
    MAP = "MAP"


_Member = TypeVar("_Member", bound=enum.StrEnum)


def _values(members: type[enum.StrEnum]) -> list[str]:
    return [m.value for m in members]


def state_column(members: type[enum.StrEnum], length: int) -> Enum:
    """A state or kind column: the enum in Python, the plain VARCHAR(``length``) it always was.

    ``native_enum=False`` and no CHECK constraint: the schema the migrations made is
    unchanged, and rows are stored by value ("queued", not "QUEUED"). Unknown strings in
    a query stay queries (``worklist --state done`` finds no instance instead of
    failing); written values are checked by :func:`as_member` on the models.
    """
    return Enum(
        members,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=_values,
        validate_strings=False,
    )


def as_member(members: type[_Member], value: _Member | str | None, column: str) -> _Member | None:
    """``value`` as a member of ``members``; ValueError naming the column for anything else."""
    if value is None or isinstance(value, members):
        return value
    try:
        return members(value)
    except ValueError:
        raise ValueError(
            f"{column}: {value!r} is not one of {', '.join(_values(members))}"
        ) from None


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_instance_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[StudyState] = mapped_column(state_column(StudyState, 32), default=StudyState.OPEN)
    report_version: Mapped[int] = mapped_column(Integer, default=0)
    delivery_state: Mapped[DeliveryState | None] = mapped_column(
        state_column(DeliveryState, 32), nullable=True
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the newest report version was asked for (settle time); its Content Date/Time.
    settled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When retention removed the study's spool files (its rows are removed later).
    spool_purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    @validates("state")
    def _state(self, key: str, value: StudyState | str) -> StudyState | None:
        return as_member(StudyState, value, f"studies.{key}")

    @validates("delivery_state")
    def _delivery_state(self, key: str, value: DeliveryState | str | None) -> DeliveryState | None:
        return as_member(DeliveryState, value, f"studies.{key}")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_state_received", "state", "received_at"),
        Index("ix_instances_received_at", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    view_position: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The scanner that made the image (Manufacturer, Manufacturer's Model Name): a device,
    # not a patient. The drift watch compares each scanner's stream with the reference.
    manufacturer: Mapped[str | None] = mapped_column(String(SCANNER_TEXT_LENGTH), nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(SCANNER_TEXT_LENGTH), nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the spool directory
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    peer_host: Mapped[str | None] = mapped_column(String(64), nullable=True)
    own_result: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[InstanceState] = mapped_column(state_column(InstanceState, 32))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The score job's record (triage_node.work.records.ScoreRecord.to_json).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    delivery_state: Mapped[DeliveryState | None] = mapped_column(
        state_column(DeliveryState, 32), nullable=True
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The study report version that first covered this instance; None: not reported yet
    # (skipped instances, our own results among them, are never reported).
    report_version: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @validates("state")
    def _state(self, key: str, value: InstanceState | str) -> InstanceState | None:
        return as_member(InstanceState, value, f"instances.{key}")

    @validates("delivery_state")
    def _delivery_state(self, key: str, value: DeliveryState | str | None) -> DeliveryState | None:
        return as_member(DeliveryState, value, f"instances.{key}")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[JobKind] = mapped_column(state_column(JobKind, 32))
    state: Mapped[JobState] = mapped_column(state_column(JobState, 32), default=JobState.QUEUED)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id"), nullable=True, index=True
    )
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id"), nullable=True, index=True
    )
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Unique when set: a second process enqueueing the same work (the same report
    # version, the same delivery) fails on the constraint instead of doubling it.
    dedup_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)

    @validates("kind")
    def _kind(self, key: str, value: JobKind | str) -> JobKind | None:
        return as_member(JobKind, value, f"jobs.{key}")

    @validates("state")
    def _state(self, key: str, value: JobState | str) -> JobState | None:
        return as_member(JobState, value, f"jobs.{key}")


class Result(Base):
    """One object we produced (SR, heatmap SC, attention map), kept in the spool until retention."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    report_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[ResultKind] = mapped_column(state_column(ResultKind, 8))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    # The radiograph a heatmap or attention map was made from; None for the SR.
    source_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id"), nullable=True
    )
    path: Mapped[str] = mapped_column(Text)  # relative to the spool directory
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    @validates("kind")
    def _kind(self, key: str, value: ResultKind | str) -> ResultKind | None:
        return as_member(ResultKind, value, f"results.{key}")


class Delivery(Base):
    """One result object to one destination: state, last C-STORE status, last error."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("result_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(
        state_column(DeliveryState, 32), default=DeliveryState.PENDING
    )
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)  # C-STORE status
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    @validates("state")
    def _state(self, key: str, value: DeliveryState | str) -> DeliveryState | None:
        return as_member(DeliveryState, value, f"deliveries.{key}")


#: The worklist state of a refused C-STORE (a :class:`Refusal` row and its event): not an
#: :class:`InstanceState`, since a refusal is never an instance.
REFUSED = "refused"


class Refusal(Base):
    """One C-STORE the receiver refused: nothing of it was kept but this row (and its event).

    Not an instance: it is never scored, reported, delivered or counted as received.
    The UIDs are those that could be read (None when the dataset could not be
    parsed that far); ``status`` is the C-STORE status we answered (e.g. 0xC220).
    ``worklist`` lists these rows as state ``refused``; retention removes them after
    ``retention.database_days``.
    """

    __tablename__ = "refusals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    status: Mapped[int] = mapped_column(Integer)  # the C-STORE status answered
    reason: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The presentation context it arrived on (what the sender said it was).
    sop_class_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    calling_ae: Mapped[str | None] = mapped_column(String(16), nullable=True)
    peer_host: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Event(Base):
    """One state change or audit fact; `worklist --follow` tails this table."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(48))
    instance_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
