"""Make a received instance durable: spool file (fsynced) and its rows in one transaction.

The order is what makes Success mean "kept". Invariants (with ``receive.fsync``,
the default; tests may turn the flushes off):

* the received file is fsynced before it gets its spool name;
* it gets that name by a hard link, which never replaces an existing file: a name
  that is taken (the same instance arriving on two associations at once, a file a
  crash left without its row) makes the file keep a unique sibling name instead;
* the spool directory entry is fsynced (and the spool directory's, when the study
  directory was created) before the transaction;
* then one transaction records the study, the instance, its eligibility and (when
  eligible) its score job; only after its commit is Success sent. If the
  transaction fails the file is removed again, so nothing is left behind.

The fsyncs and temporary names are :mod:`triage_node.durable`'s; free disk is
:func:`triage_node.store.queries.free_disk_bytes`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from triage_node.config import Settings
from triage_node.durable import fsync_path, temporary_name
from triage_node.receive.eligibility import EligibilityDecision
from triage_node.receive.validate import InstanceHeader, InstanceRefused
from triage_node.store import (
    Instance,
    InstanceState,
    JobKind,
    Refusal,
    Store,
    Study,
    add_event,
    utcnow,
)
from triage_node.store.db import StoreUnavailable
from triage_node.store.jobs import enqueue_job
from triage_node.store.models import REFUSED, SCANNER_TEXT_LENGTH
from triage_node.store.queries import free_disk_bytes

log = logging.getLogger(__name__)

INCOMING_DIRNAME = ".incoming"
_MB = 1024 * 1024


class SpoolFailed(Exception):
    """The instance could not be made durable (disk, file system or database)."""


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: the association's calling AE title and peer address."""

    calling_ae: str
    peer_host: str


@dataclass(frozen=True)
class SpoolOutcome:
    """Result of :func:`spool_instance`."""

    instance_id: int
    state: InstanceState | Literal["duplicate"]
    duplicate: bool
    path: str | None  # relative to the spool directory; None for a duplicate


def incoming_dir(settings: Settings) -> Path:
    """Where instances are written while they arrive (same file system as the spool)."""
    return settings.spool_dir / INCOMING_DIRNAME


def disk_below_watermark(settings: Settings, needed_bytes: int = 0) -> bool:
    """True if storing ``needed_bytes`` more would leave less than ``min_free_disk_mb``."""
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    free = free_disk_bytes(settings.spool_dir)
    if free is None:  # the file system cannot be asked: refused as out of resources
        raise OSError(errno.EIO, "cannot read free disk space", str(settings.spool_dir))
    return free - needed_bytes < settings.receive.min_free_disk_mb * _MB


def relative_spool_path(header: InstanceHeader) -> str:
    """Where an instance lives inside the spool: ``<study uid>/<sop instance uid>.dcm``."""
    return f"{header.study_instance_uid}/{header.sop_instance_uid}.dcm"


def find_instance_id(store: Store, sop_instance_uid: str) -> int | None:
    """The id of the stored instance with this SOP Instance UID, if any."""
    with store.read() as session:
        return session.scalars(
            select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
        ).first()


def _place_file(settings: Settings, source: Path, relative: str) -> Path:
    """Give the fsynced ``source`` its spool name without ever replacing an existing file."""
    final = settings.spool_dir / relative
    created_dir = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, final)  # fails if the name exists: never clobber a stored file
    except FileExistsError:
        # Another association is storing the same instance right now, or a crash left
        # a file without a row: keep ours under a unique name; the row decides.
        final = final.with_name(f"{final.stem}.{uuid.uuid4().hex[:8]}.dcm")
        os.link(source, final)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Not on the spool's file system after all: copy, fsync, rename.
        tmp = temporary_name(final)
        shutil.copyfile(source, tmp)
        fsync_path(tmp)
        os.rename(tmp, final)
    os.unlink(source)
    if settings.receive.fsync:
        fsync_path(final.parent, directory=True)
        if created_dir:
            fsync_path(settings.spool_dir, directory=True)
    return final


def _commit(
    store: Store,
    settings: Settings,
    header: InstanceHeader,
    decision: EligibilityDecision,
    sender: Sender,
    relative: str,
    size: int,
) -> SpoolOutcome:
    now = utcnow()
    state = InstanceState.QUEUED if decision.eligible else InstanceState.SKIPPED
    with store.write() as session:
        study = session.scalars(
            select(Study).where(Study.study_instance_uid == header.study_instance_uid)
        ).first()
        if study is None:
            study = Study(
                study_instance_uid=header.study_instance_uid,
                created_at=now,
                updated_at=now,
                last_instance_at=now,
            )
            session.add(study)
            session.flush()
        else:
            study.last_instance_at = now
            study.updated_at = now
        instance = Instance(
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            study_id=study.id,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality,
            body_part=header.body_part,
            view_position=header.view_position,
            manufacturer=_cut(header.manufacturer, SCANNER_TEXT_LENGTH),
            model_name=_cut(header.model_name, SCANNER_TEXT_LENGTH),
            transfer_syntax_uid=header.transfer_syntax_uid,
            rows=header.rows,
            columns=header.columns,
            path=relative,
            size_bytes=size,
            calling_ae=sender.calling_ae,
            peer_host=sender.peer_host,
            own_result=decision.own_result,
            received_at=now,
            updated_at=now,
            state=state,
            reason=decision.reason,
        )
        session.add(instance)
        session.flush()
        if decision.eligible:
            enqueue_job(
                session,
                JobKind.SCORE,
                instance_id=instance.id,
                max_attempts=settings.worker.max_attempts,
            )
        add_event(
            session,
            "received" if decision.eligible else "skipped",
            instance_id=instance.id,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            state=state,
            message=decision.reason or "eligible, score job queued",
            data={
                "calling_ae": sender.calling_ae,
                "peer_host": sender.peer_host,
                "transfer_syntax_uid": header.transfer_syntax_uid,
                "size_bytes": size,
            },
        )
        return SpoolOutcome(instance.id, state, False, relative)


def _cut(value: str | None, length: int) -> str | None:
    """``value`` cut to a column of ``length`` characters (a device name, not an identifier)."""
    return value[:length] if value else None


def record_duplicate(
    store: Store, instance_id: int, header: InstanceHeader, sender: Sender
) -> SpoolOutcome:
    """Record a second copy of a stored instance (acknowledged, not stored or queued again)."""
    with store.write() as session:
        add_event(
            session,
            "duplicate",
            instance_id=instance_id,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            message="SOP Instance UID already stored; kept the first copy",
            data={"calling_ae": sender.calling_ae, "peer_host": sender.peer_host},
        )
    log.info(
        "duplicate instance %s (instance id %d) from %s@%s acknowledged",
        header.sop_instance_uid,
        instance_id,
        sender.calling_ae,
        sender.peer_host,
    )
    return SpoolOutcome(instance_id, "duplicate", True, None)


def _column_text(value: str | None, length: int) -> str | None:
    """``value`` if it fits a column of ``length`` characters; None (not recorded) otherwise.

    A peer's UID longer than 64 characters is not a UID: it is left out rather than
    cut into one that looks valid.
    """
    value = (value or "").strip()
    return value if 0 < len(value) <= length else None


def record_refusal(
    store: Store,
    refused: InstanceRefused,
    sender: Sender,
    *,
    sop_class_uid: str | None = None,
    transfer_syntax_uid: str | None = None,
) -> int:
    """Record a refused C-STORE: a ``refusals`` row and its ``store_refused`` event.

    Nothing else is written: a refusal is not an instance, so it is never scored,
    reported, delivered or counted as received. ``sop_class_uid`` and
    ``transfer_syntax_uid`` are those of the presentation context it arrived on.
    Returns the refusal's id.
    """
    sop_uid = _column_text(refused.sop_instance_uid, 64)
    study_uid = _column_text(refused.study_instance_uid, 64)
    with store.write() as session:
        row = Refusal(
            at=utcnow(),
            status=refused.status,
            reason=refused.reason,
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            sop_class_uid=_column_text(sop_class_uid, 64),
            transfer_syntax_uid=_column_text(transfer_syntax_uid, 64),
            calling_ae=_column_text(sender.calling_ae, 16),
            peer_host=_column_text(sender.peer_host, 64),
        )
        session.add(row)
        session.flush()
        add_event(
            session,
            "store_refused",
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            state=REFUSED,
            message=refused.reason,
            data={
                "status": f"0x{refused.status:04X}",
                "refusal_id": row.id,
                "calling_ae": sender.calling_ae,
                "peer_host": sender.peer_host,
            },
        )
        return row.id


def spool_instance(
    settings: Settings,
    store: Store,
    received: Path,
    header: InstanceHeader,
    decision: EligibilityDecision,
    sender: Sender,
) -> SpoolOutcome:
    """Make the received Part-10 file ``received`` durable in the spool and the store.

    ``received`` must be on the spool's file system (see :func:`incoming_dir`); it is
    consumed. Returns once the file is fsynced and the transaction committed. A
    second copy of a stored SOP Instance UID is acknowledged as a duplicate (one
    row, no second job). Raises :class:`SpoolFailed` if the instance could not be
    made durable; then no file of it is left in the spool.
    """
    try:
        existing = find_instance_id(store, header.sop_instance_uid)
    except (SQLAlchemyError, StoreUnavailable) as exc:
        raise SpoolFailed(f"store unavailable: {type(exc).__name__}") from exc
    if existing is not None:
        received.unlink(missing_ok=True)
        return record_duplicate(store, existing, header, sender)

    relative = relative_spool_path(header)
    final: Path | None = None
    try:
        size = received.stat().st_size
        if settings.receive.fsync:
            fsync_path(received)
        final = _place_file(settings, received, relative)
        relative = final.relative_to(settings.spool_dir).as_posix()
    except OSError as exc:
        received.unlink(missing_ok=True)
        if final is not None:
            final.unlink(missing_ok=True)
        raise SpoolFailed(f"cannot write spool file {relative}: {exc.strerror}") from exc

    for _attempt in range(3):
        try:
            return _commit(store, settings, header, decision, sender, relative, size)
        except IntegrityError:
            # A concurrent association committed the same instance (or the same new
            # study, on PostgreSQL): look again.
            try:
                existing = find_instance_id(store, header.sop_instance_uid)
            except SQLAlchemyError as exc:
                final.unlink(missing_ok=True)
                raise SpoolFailed(f"store unavailable: {type(exc).__name__}") from exc
            if existing is not None:
                final.unlink(missing_ok=True)
                return record_duplicate(store, existing, header, sender)
        except (SQLAlchemyError, StoreUnavailable) as exc:
            final.unlink(missing_ok=True)
            raise SpoolFailed(f"store unavailable: {type(exc).__name__}") from exc
    final.unlink(missing_ok=True)
    raise SpoolFailed(f"could not record {header.sop_instance_uid} after 3 attempts")
