"""Read-only views of the store for admins: worklist rows, events, status facts (the
terminal commands and the web console show the same facts from these).

Every view is built from the database alone (UIDs, states, our ids): the
database holds no patient name, ID or birth date, so neither does any output.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triage_node.assessment import ImageAssessment, SideAssessment, is_positive
from triage_node.store.models import (
    REFUSED,
    Delivery,
    DeliveryState,
    Event,
    Instance,
    InstanceState,
    Job,
    JobKind,
    JobState,
    Refusal,
    Result,
    Study,
    utcnow,
)

# free_disk_bytes: the store's one implementation, also what `status` imports from here.
from triage_node.store.queries import free_disk_bytes, queue_counts
from triage_node.work.records import DeliverPayload, ScoreRecord
from triage_node.work.study import ROLLUP_ORDER

#: The decision in words, as the SR's coded values say it (``report/codes.py``): the
#: study value is at or above the threshold on at least one side, or on none.
DECISION_WORDS: dict[bool | None, str] = {
    True: "DXA recommended",
    False: "low likelihood",
    None: "not assessable",
}

#: Instance states whose rows are reported and delivered (as ``rollup_delivery`` has it).
_REPORTED_STATES = (InstanceState.SCORED, InstanceState.NOT_ASSESSABLE)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value else None


def stored_assessment(inst: Instance) -> ImageAssessment | None:
    """The model's assessment as the score job stored it; None if none (or unreadable)."""
    stored = ScoreRecord.from_json(inst.result).assessment
    if stored is None:
        return None
    try:
        return ImageAssessment.from_json(stored)
    except ValueError:
        return None


def _side_row(side: SideAssessment, threshold: float) -> dict[str, Any]:
    positive = side.positive
    if positive is None and side.probability is not None:
        positive = is_positive(side.probability, threshold)
    return {
        "side": side.side,
        "probability": side.probability,
        "positive": positive,
        "not_assessable_reason": side.not_assessable_reason,
    }


def decision_facts(inst: Instance) -> dict[str, Any]:
    """``decision`` (words), ``sides`` (per hip) and ``threshold``, read from the stored assessment.

    The value and the decision are the assessment's own (:attr:`ImageAssessment.probability`,
    :attr:`ImageAssessment.positive`): nothing is recomputed here. A side the model left
    without its own flag is decided by :func:`is_positive`, as the SR does. Not scored
    yet, or skipped: no decision.
    """
    assessment = stored_assessment(inst)
    if assessment is None:
        not_assessable = inst.state == InstanceState.NOT_ASSESSABLE
        return {
            "decision": DECISION_WORDS[None] if not_assessable else None,
            "sides": [],
            "threshold": None,
        }
    return {
        "decision": DECISION_WORDS[assessment.positive],
        "sides": [_side_row(s, assessment.threshold) for s in assessment.sides],
        "threshold": assessment.threshold,
    }


def instance_row(inst: Instance, deliveries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One worklist entry (the stable JSON interface of `worklist --json`).

    ``deliveries``: the study's newest results per destination (:func:`study_deliveries`),
    shown on instances that report covers.
    """
    covered = inst.report_version is not None and inst.state in _REPORTED_STATES
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
        **decision_facts(inst),
        "delivery_state": inst.delivery_state,
        "deliveries": (deliveries or []) if covered else [],
        "last_error": inst.last_error,
        "calling_ae": inst.calling_ae,
        "received_at": _iso(inst.received_at),
        "updated_at": _iso(inst.updated_at),
        "refusal": None,
    }


def refusal_row(ref: Refusal) -> dict[str, Any]:
    """A refused C-STORE as a worklist entry: state ``refused``, the same keys as an instance.

    ``refusal`` holds what only a refusal has: the status answered and the peer's host.
    """
    return {
        "id": None,
        "sop_instance_uid": ref.sop_instance_uid,
        "study_instance_uid": ref.study_instance_uid,
        "series_instance_uid": None,
        "sop_class_uid": ref.sop_class_uid,
        "modality": None,
        "body_part": None,
        "transfer_syntax_uid": ref.transfer_syntax_uid,
        "state": REFUSED,
        "reason": ref.reason,
        "probability": None,
        "decision": None,
        "sides": [],
        "threshold": None,
        "delivery_state": None,
        "deliveries": [],
        "last_error": None,
        "calling_ae": ref.calling_ae,
        "received_at": _iso(ref.at),
        "updated_at": _iso(ref.at),
        "refusal": {
            "id": ref.id,
            "status": f"0x{ref.status:04X}",
            "status_code": ref.status,
            "peer_host": ref.peer_host,
        },
    }


def _destination_row(name: str, deliveries: list[Delivery], job: Job | None) -> dict[str, Any]:
    states = {d.state for d in deliveries}
    state = next(s for s in ROLLUP_ORDER if s in states)
    last_error: str | None = None
    if state != DeliveryState.DELIVERED:
        errors = [d.last_error for d in deliveries if d.state == state and d.last_error]
        errors += [d.last_error for d in deliveries if d.last_error]
        last_error = errors[0] if errors else (job.last_error if job is not None else None)
    waiting = job is not None and job.state == JobState.QUEUED
    delivered_at = [d.delivered_at for d in deliveries if d.delivered_at is not None]
    return {
        "destination": name,
        "state": state,
        # The deliver job's attempts (one per association tried); objects keep their own.
        "attempts": job.attempts if job is not None else max(d.attempts for d in deliveries),
        "objects": len(deliveries),
        "delivered": sum(1 for d in deliveries if d.state == DeliveryState.DELIVERED),
        "last_error": last_error,
        "next_attempt_at": _iso(job.next_attempt_at)
        if waiting and job is not None and state != DeliveryState.DELIVERED
        else None,
        "delivered_at": _iso(max(delivered_at))
        if state == DeliveryState.DELIVERED and delivered_at
        else None,
    }


def study_deliveries(session: Session, study_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    """Per study, the delivery of its newest report version to each destination.

    One entry per destination (in the order the destinations were configured when
    the report was made): its state (the worst of its objects', as the study's
    roll-up), the deliver job's attempts, how many objects are delivered, the last
    error and when the next try is due.
    """
    if not study_ids:
        return {}
    versions = {
        study_id: version
        for study_id, version in session.execute(
            select(Study.id, Study.report_version).where(Study.id.in_(study_ids))
        ).tuples()
    }
    by_destination: dict[int, dict[str, list[Delivery]]] = {}
    for study_id, delivery in session.execute(
        select(Result.study_id, Delivery)
        .join(Result, Result.id == Delivery.result_id)
        .join(Study, Study.id == Result.study_id)
        .where(Result.study_id.in_(study_ids), Result.report_version == Study.report_version)
        .order_by(Result.study_id, Delivery.id)
    ).tuples():
        by_destination.setdefault(study_id, {}).setdefault(delivery.destination, []).append(
            delivery
        )
    jobs: dict[tuple[int, str], Job] = {}
    for job in session.scalars(
        select(Job).where(Job.kind == JobKind.DELIVER, Job.study_id.in_(study_ids))
    ):
        payload = DeliverPayload.from_json(job.payload or {})
        if job.study_id is not None and payload.report_version == versions.get(job.study_id):
            jobs[(job.study_id, payload.destination)] = job
    return {
        study_id: [
            _destination_row(name, rows, jobs.get((study_id, name)))
            for name, rows in destinations.items()
        ]
        for study_id, destinations in by_destination.items()
    }


def recent_instances(
    session: Session,
    *,
    state: str | None = None,
    limit: int = 50,
    modality: str | None = None,
    delivery_state: str | None = None,
    since: dt.datetime | None = None,
    uid: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first: instances and refused C-STOREs, optionally only those in ``state``.

    ``state`` ``refused`` lists only refusals; any other state only instances. The
    console's filters: ``modality`` and ``delivery_state`` (instances only: a refusal
    has neither), ``since`` (received at or after), ``uid`` (part of the Study, Series
    or SOP Instance UID).
    """
    instances: list[Instance] = []
    refusals: list[Refusal] = []
    if state != REFUSED:
        query = select(Instance).order_by(Instance.received_at.desc(), Instance.id.desc())
        if state:
            query = query.where(Instance.state == state)
        if modality:
            query = query.where(Instance.modality == modality)
        if delivery_state:
            query = query.where(Instance.delivery_state == delivery_state)
        if since is not None:
            query = query.where(Instance.received_at >= since)
        if uid:
            query = query.where(
                Instance.study_instance_uid.contains(uid, autoescape=True)
                | Instance.series_instance_uid.contains(uid, autoescape=True)
                | Instance.sop_instance_uid.contains(uid, autoescape=True)
            )
        instances = list(session.scalars(query.limit(limit)))
    if (not state or state == REFUSED) and not modality and not delivery_state:
        refused = select(Refusal).order_by(Refusal.at.desc(), Refusal.id.desc())
        if since is not None:
            refused = refused.where(Refusal.at >= since)
        if uid:
            refused = refused.where(
                Refusal.study_instance_uid.contains(uid, autoescape=True)
                | Refusal.sop_instance_uid.contains(uid, autoescape=True)
            )
        refusals = list(session.scalars(refused.limit(limit)))
    deliveries = study_deliveries(
        session,
        {
            i.study_id
            for i in instances
            if i.report_version is not None and i.state in _REPORTED_STATES
        },
    )
    rows = [(i.received_at, instance_row(i, deliveries.get(i.study_id))) for i in instances]
    rows += [(r.at, refusal_row(r)) for r in refusals]
    rows.sort(key=lambda pair: pair[0], reverse=True)
    return [row for _, row in rows[:limit]]


def event_row(ev: Event, inst: Instance | None, job_study_uid: str | None = None) -> dict[str, Any]:
    """One event (the stable JSON interface of `worklist --follow --json`).

    ``study_instance_uid`` is the event's own, else its instance's, else (an event of a
    report or deliver job) its job's study's.
    """
    return {
        "event_id": ev.id,
        "at": _iso(ev.at),
        "kind": ev.kind,
        "state": ev.state,
        "sop_instance_uid": ev.sop_instance_uid or (inst.sop_instance_uid if inst else None),
        "study_instance_uid": ev.study_instance_uid
        or (inst.study_instance_uid if inst else None)
        or job_study_uid,
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
        select(Event, Instance, Study.study_instance_uid)
        .outerjoin(Instance, Instance.id == Event.instance_id)
        .outerjoin(Job, Job.id == Event.job_id)
        .outerjoin(Study, Study.id == Job.study_id)
        .where(Event.id > after_id)
        .order_by(Event.id)
        .limit(limit)
    )
    if state:
        query = query.where(Event.state == state)
    return [event_row(ev, inst, study_uid) for ev, inst, study_uid in session.execute(query)]


def study_events(session: Session, study: Study, limit: int = 500) -> list[dict[str, Any]]:
    """The study's timeline, oldest first: events of its instances, its jobs, or naming it."""
    instance_ids = select(Instance.id).where(Instance.study_id == study.id)
    job_ids = select(Job.id).where((Job.study_id == study.id) | Job.instance_id.in_(instance_ids))
    query = (
        select(Event, Instance)
        .outerjoin(Instance, Instance.id == Event.instance_id)
        .where(
            (Event.study_instance_uid == study.study_instance_uid)
            | Event.instance_id.in_(instance_ids)
            | Event.job_id.in_(job_ids)
        )
        .order_by(Event.id)
        .limit(limit)
    )
    return [event_row(ev, inst, study.study_instance_uid) for ev, inst in session.execute(query)]


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    """Everything the console's study page shows, from the database; None for an unknown UID.

    ``instances``: worklist rows (:func:`instance_row`), oldest first; ``results``: the
    result objects of every report version (newest version first); ``deliveries``: the
    newest version's delivery per destination; ``events``: the timeline.
    """
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).first()
    if study is None:
        return None
    deliveries = study_deliveries(session, {study.id}).get(study.id, [])
    instances = session.scalars(
        select(Instance).where(Instance.study_id == study.id).order_by(Instance.received_at)
    ).all()
    results = session.scalars(
        select(Result)
        .where(Result.study_id == study.id)
        .order_by(Result.report_version.desc(), Result.id)
    ).all()
    return {
        "id": study.id,
        "study_instance_uid": study.study_instance_uid,
        "state": study.state,
        "report_version": study.report_version,
        "delivery_state": study.delivery_state,
        "last_error": study.last_error,
        "created_at": _iso(study.created_at),
        "settled_at": _iso(study.settled_at),
        "spool_purged": study.spool_purged_at is not None,
        "instances": [instance_row(i, deliveries) for i in instances],
        "results": [
            {
                "id": r.id,
                "kind": r.kind,
                "report_version": r.report_version,
                "sop_instance_uid": r.sop_instance_uid,
                "source_instance_id": r.source_instance_id,
                "size_bytes": r.size_bytes,
                "created_at": _iso(r.created_at),
                "current": r.report_version == study.report_version,
            }
            for r in results
        ],
        "deliveries": deliveries,
        "events": study_events(session, study),
    }


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
