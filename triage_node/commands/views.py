"""Read-only views of the store for admins: worklist rows, events, status facts.

Every view is built from the database alone (UIDs, states, our ids): the
database holds no patient name, ID or birth date, so neither does any output.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triage_node.store.models import Event, Instance, Job, JobState, utcnow


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value else None


def instance_row(inst: Instance) -> dict[str, Any]:
    """One worklist entry (the stable JSON interface of `worklist --json`)."""
    return {
        "id": inst.id,
        "sop_instance_uid": inst.sop_instance_uid,
        "study_instance_uid": inst.study_instance_uid,
        "series_instance_uid": inst.series_instance_uid,
        "sop_class_uid": inst.sop_class_uid,
        "modality": inst.modality,
        "body_part": inst.body_part,
        "transfer_syntax_uid": inst.transfer_syntax_uid,
        "state": inst.state,
        "reason": inst.reason,
        "probability": inst.probability,
        "delivery_state": inst.delivery_state,
        "last_error": inst.last_error,
        "calling_ae": inst.calling_ae,
        "received_at": _iso(inst.received_at),
        "updated_at": _iso(inst.updated_at),
    }


def recent_instances(
    session: Session, *, state: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Newest instances first, optionally only those in ``state``."""
    query = select(Instance).order_by(Instance.received_at.desc(), Instance.id.desc())
    if state:
        query = query.where(Instance.state == state)
    return [instance_row(i) for i in session.scalars(query.limit(limit))]


def event_row(ev: Event, inst: Instance | None) -> dict[str, Any]:
    """One event (the stable JSON interface of `worklist --follow --json`)."""
    return {
        "event_id": ev.id,
        "at": _iso(ev.at),
        "kind": ev.kind,
        "state": ev.state,
        "sop_instance_uid": ev.sop_instance_uid or (inst.sop_instance_uid if inst else None),
        "study_instance_uid": ev.study_instance_uid or (inst.study_instance_uid if inst else None),
        "instance_id": ev.instance_id,
        "job_id": ev.job_id,
        "message": ev.message,
        "data": ev.data,
    }


def events_after(
    session: Session, after_id: int, *, limit: int = 500, state: str | None = None
) -> list[dict[str, Any]]:
    """Events with id greater than ``after_id``, oldest first."""
    query = (
        select(Event, Instance)
        .outerjoin(Instance, Instance.id == Event.instance_id)
        .where(Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
    )
    if state:
        query = query.where(Event.state == state)
    return [event_row(ev, inst) for ev, inst in session.execute(query)]


def last_event_id(session: Session) -> int:
    return int(session.scalar(select(func.max(Event.id))) or 0)


def free_disk_bytes(path: Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def status_facts(session: Session, data_dir: Path) -> dict[str, Any]:
    """Counts per state, queue depth, oldest waiting age, free disk, last error."""
    now = utcnow()
    instances = dict(
        session.execute(select(Instance.state, func.count()).group_by(Instance.state)).all()
    )
    jobs: dict[str, dict[str, int]] = {}
    for kind, state, count in session.execute(
        select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
    ):
        jobs.setdefault(kind, {})[state] = count
    waiting = (Job.state == JobState.QUEUED.value) | (Job.state == JobState.RUNNING.value)
    depth = int(session.scalar(select(func.count()).select_from(Job).where(waiting)) or 0)
    oldest = session.scalar(select(func.min(Job.created_at)).where(waiting))
    last_failed = session.execute(
        select(Job.last_error, Job.updated_at, Job.kind, Job.id)
        .where(Job.last_error.is_not(None))
        .order_by(Job.updated_at.desc())
        .limit(1)
    ).first()
    return {
        "instances": {k: int(v) for k, v in sorted(instances.items())},
        "instances_total": int(sum(instances.values())),
        "jobs": jobs,
        "queue_depth": depth,
        "oldest_waiting_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
        "free_disk_bytes": free_disk_bytes(data_dir),
        "last_error": (
            {
                "job_id": last_failed[3],
                "kind": last_failed[2],
                "message": last_failed[0],
                "at": _iso(last_failed[1]),
            }
            if last_failed
            else None
        ),
    }
