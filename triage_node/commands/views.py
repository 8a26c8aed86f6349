"""Read-only views of the store for admins: worklist rows, events, status facts.

Every view is built from the database alone (UIDs, states, our ids): the
database holds no patient name, ID or birth date, so neither does any output.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triage_node.store.models import Event, Instance, Job, utcnow

# free_disk_bytes: the store's one implementation, also what `status` imports from here.
from triage_node.store.queries import free_disk_bytes, queue_counts


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


def status_facts(session: Session, data_dir: Path) -> dict[str, Any]:
    """Counts per state, queue depth, oldest waiting age, free disk, last error."""
    now = utcnow()
    counts = queue_counts(session)
    jobs: dict[str, dict[str, int]] = {}
    for (kind, state), count in counts.jobs.items():
        jobs.setdefault(str(kind), {})[str(state)] = count
    age = counts.oldest_waiting_seconds(now)
    last_failed = session.execute(
        select(Job.last_error, Job.updated_at, Job.kind, Job.id)
        .where(Job.last_error.is_not(None))
        .order_by(Job.updated_at.desc())
        .limit(1)
    ).first()
    return {
        "instances": {str(k): v for k, v in sorted(counts.instances.items())},
        "instances_total": sum(counts.instances.values()),
        "jobs": jobs,
        "queue_depth": counts.waiting,
        "oldest_waiting_seconds": round(age, 1) if age is not None else None,
        "free_disk_bytes": free_disk_bytes(data_dir),
        "last_error": (
            {
                "job_id": last_failed[3],
                "kind": str(last_failed[2]),
                "message": last_failed[0],
                "at": _iso(last_failed[1]),
            }
            if last_failed
            else None
        ),
    }
