"""The ``deliver`` job: C-STORE one report version's objects to one destination, with retries.

Payload: ``{"destination": name, "report_version": n}``. The job sends every
object of that version whose ``deliveries`` row for the destination is not
``delivered``, ``deliver.batch_size`` objects per association
(:func:`triage_node.deliver.scu.send_objects`), and records each object's
C-STORE status after each batch (on its row, and as an ``object_sent`` event:
the audit trail of what was sent where).

* Destination unavailable (host name does not resolve, refused, rejected,
  aborted, timeout, TLS): the objects stored before the break are recorded, the
  job is requeued after
  ``retry_delay(attempts, deliver.retry_base_seconds, deliver.retry_max_seconds)``
  (exponential backoff, full jitter), up to ``deliver.max_attempts``. The
  error names the destination, its AE title, host and port and what to check;
  the worker logs it in one WARNING line per attempt (``worker.retry_*`` is for
  other job kinds, never for a delivery).
* An object refused with a failure status: recorded on its row; the others
  are still sent; the job is retried for the refused ones like above.
* Attempts exhausted: rows, study and instances ``failed`` with the last
  error (visible in the worklist); ``triage-node resend`` puts them back.
* A spool file that is not a DICOM object any more: failed at once (resending
  it cannot help).

Re-sending never makes new objects: the files in the spool are sent as they
are, so a retry after a crash (lease expired mid-batch) re-sends the same SOP
Instance UIDs, which an archive stores once.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triage_node.config import DestinationSection, Settings
from triage_node.deliver.scu import (
    DeliveryError,
    DestinationUnavailable,
    StoreOutcome,
    send_objects,
)
from triage_node.store.clock import utcnow
from triage_node.store.db import add_event
from triage_node.store.jobs import ClaimedJob, finish_job, retry_delay
from triage_node.store.models import (
    Delivery,
    DeliveryState,
    Instance,
    JobKind,
    JobState,
    Result,
    Study,
)
from triage_node.telemetry import metrics
from triage_node.work.base import JobContext, PermanentFailure, RetryLater
from triage_node.work.records import DeliverPayload
from triage_node.work.study import rollup_delivery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Pending:
    delivery_id: int
    sop_instance_uid: str
    path: str


class DeliverHandler:
    """Runs ``deliver`` jobs (see the module docstring)."""

    kind = JobKind.DELIVER

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _destination(self, job: ClaimedJob, payload: DeliverPayload) -> DestinationSection:
        for d in self.settings.destinations:
            if d.name == payload.destination:
                return d
        raise PermanentFailure(
            f"job {job.id}: destination {payload.destination!r} is not configured "
            "([[destinations]] name)"
        )

    def _pending(
        self, session: Session, job: ClaimedJob, payload: DeliverPayload
    ) -> list[_Pending]:
        rows = session.execute(
            select(Delivery.id, Result.sop_instance_uid, Result.path)
            .join(Result, Result.id == Delivery.result_id)
            .where(
                Result.study_id == job.study_id,
                Result.report_version == payload.report_version,
                Delivery.destination == payload.destination,
                Delivery.state != DeliveryState.DELIVERED,
            )
            .order_by(Result.id)
        ).all()
        return [_Pending(i, uid, path) for i, uid, path in rows]

    def _backoff(self, job: ClaimedJob) -> float:
        d = self.settings.deliver
        return retry_delay(job.attempts, d.retry_base_seconds, d.retry_max_seconds)

    def run(self, ctx: JobContext) -> str | None:
        """Send the pending objects; finish, or raise RetryLater with the deliver backoff."""
        job = ctx.job
        payload = DeliverPayload.from_json(job.payload)
        destination = self._destination(job, payload)
        with ctx.store.read() as session:
            pending = self._pending(session, job, payload)
        if not pending:
            return self._finish(ctx, "nothing left to send")
        for p in pending:
            if not (self.settings.spool_dir / p.path).is_file():
                raise PermanentFailure(
                    f"result {p.sop_instance_uid}: spool file {p.path} is missing "
                    "(removed by retention?)"
                )
        size = self.settings.deliver.batch_size
        refused: list[StoreOutcome] = []
        sent = 0
        for start in range(0, len(pending), size):
            ctx.checkpoint()
            batch = pending[start : start + size]
            try:
                outcomes = send_objects(
                    destination,
                    [self.settings.spool_dir / p.path for p in batch],
                    settings=self.settings,
                )
            except DestinationUnavailable as exc:
                self._record(ctx, batch, exc.results, error=str(exc))
                raise RetryLater(str(exc), delay=self._backoff(job)) from exc
            except DeliveryError as exc:
                raise RetryLater(str(exc), delay=self._backoff(job)) from exc
            except ValueError as exc:
                # send_objects' check of its input: a spool file it cannot send as it is.
                raise PermanentFailure(f"destination {destination.name!r}: {exc}") from exc
            self._record(ctx, batch, outcomes)
            sent += sum(1 for o in outcomes if o.stored)
            refused += [o for o in outcomes if not o.stored]
        if refused:
            listed = ", ".join(f"{o.sop_instance_uid} status 0x{o.status:04X}" for o in refused[:5])
            raise RetryLater(
                f"destination {destination.name!r}: {len(refused)} object(s) refused: {listed}",
                delay=self._backoff(job),
            )
        return self._finish(ctx, f"{sent} object(s) stored at {destination.name!r}")

    def _record(
        self,
        ctx: JobContext,
        batch: list[_Pending],
        outcomes: list[StoreOutcome],
        error: str | None = None,
    ) -> None:
        """Each object's C-STORE outcome on its delivery row (objects without one: error)."""
        by_uid = {o.sop_instance_uid: o for o in outcomes}
        now = ctx.clock()
        delivered = 0
        destination = DeliverPayload.from_json(ctx.job.payload).destination
        with ctx.store.write() as session:
            study = session.get(Study, ctx.job.study_id) if ctx.job.study_id else None
            study_uid = study.study_instance_uid if study is not None else None
            for p in batch:
                row = session.get(Delivery, p.delivery_id)
                if row is None or row.state == DeliveryState.DELIVERED:
                    continue
                outcome = by_uid.get(p.sop_instance_uid)
                row.updated_at = now
                if outcome is None:
                    row.state = DeliveryState.RETRYING
                    row.last_error = (error or "not sent")[:2000]
                    continue
                row.attempts += 1
                row.status = outcome.status
                if outcome.stored:
                    row.state = DeliveryState.DELIVERED
                    row.delivered_at = now
                    row.last_error = None
                    delivered += 1
                else:
                    row.state = DeliveryState.RETRYING
                    row.last_error = f"C-STORE status 0x{outcome.status:04X} ({outcome.category})"
                # The audit trail: every object sent, where, and what the peer answered.
                add_event(
                    session,
                    "object_sent",
                    job_id=ctx.job.id,
                    sop_instance_uid=p.sop_instance_uid,
                    study_instance_uid=study_uid,
                    state=row.state,
                    message=f"{destination}: C-STORE status 0x{outcome.status:04X}",
                    data={"destination": destination, "status": outcome.status},
                )
        metrics.record_results(destination, "delivered", delivered)

    def _finish(self, ctx: JobContext, outcome: str) -> str:
        payload = DeliverPayload.from_json(ctx.job.payload)
        first_received: dt.datetime | None = None
        with ctx.store.write() as session:
            study = session.get(Study, ctx.job.study_id)
            if study is not None:
                state = rollup_delivery(session, study, clock=ctx.clock)
                add_event(
                    session,
                    "study_delivered",
                    job_id=ctx.job.id,
                    study_instance_uid=study.study_instance_uid,
                    state=state,
                    message=outcome,
                    data=dict(ctx.job.payload),
                )
                first_received = _first_received(session, study, payload.report_version)
            finish_job(session, ctx.job, outcome, clock=ctx.clock)
        if first_received is not None:
            metrics.observe_end_to_end(
                payload.destination, (utcnow() - first_received).total_seconds()
            )
        return outcome

    def on_failure(
        self, session: Session, job: ClaimedJob, new_state: JobState, error: str
    ) -> None:
        """Undelivered rows of this job ``retrying`` or ``failed``; roll up onto study/instances."""
        final = new_state == JobState.FAILED
        payload = DeliverPayload.from_json(job.payload)
        name = payload.destination
        now = utcnow()
        left = 0
        for row in session.scalars(
            select(Delivery)
            .join(Result, Result.id == Delivery.result_id)
            .where(
                Result.study_id == job.study_id,
                Result.report_version == payload.report_version,
                Delivery.destination == name,
                Delivery.state != DeliveryState.DELIVERED,
            )
        ).all():
            row.state = DeliveryState.FAILED if final else DeliveryState.RETRYING
            row.last_error = row.last_error or error[:2000]
            row.updated_at = now
            left += 1
        # Counted in the failing transaction: the worker commits it right after.
        metrics.record_results(name, "failed" if final else "retried", left)
        study = session.get(Study, job.study_id) if job.study_id is not None else None
        if study is None:
            return
        state = rollup_delivery(session, study, last_error=error)
        add_event(
            session,
            "delivery_failed" if final else "delivery_retry",
            job_id=job.id,
            study_instance_uid=study.study_instance_uid,
            state=state,
            message=f"{name}: {error[:500]}",
            data=dict(job.payload),
        )

    def on_release(self, session: Session, job: ClaimedJob) -> None:
        """Nothing to undo: delivered rows stay delivered, the rest is sent by the next run."""


def _first_received(session: Session, study: Study, report_version: int) -> dt.datetime | None:
    """When the first instance behind this report version arrived (end-to-end latency start)."""
    first = session.scalar(
        select(func.min(Instance.received_at)).where(
            Instance.study_id == study.id, Instance.report_version == report_version
        )
    )
    if first is None:
        return study.created_at
    return first if first.tzinfo is not None else first.replace(tzinfo=dt.UTC)
