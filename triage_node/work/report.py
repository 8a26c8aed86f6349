"""The ``report`` job: build a study's result objects, keep them in the spool, queue delivery.

Enqueued by :func:`triage_node.work.study.settle_studies` with the report
version in its payload. Steps:

1. Load the study's scored and not-assessable instances covered by this
   version (``Instance.report_version <= version``): the spool files (headers
   only, when the score job left the heatmap's display copy), the stored
   assessments (``Instance.result["assessment"]``), the display copies and,
   for the attention map, the CAM files. An instance scored before display
   copies existed is drawn from its decoded pixels, as before.
2. Build the objects ``[report] objects`` names: the SR (if at least one such
   instance), one heatmap SC and one attention map per scored image
   (:func:`triage_node.report.results.build_study_results`), with the study's
   settle time as Content Date/Time. Same inputs, same bytes and UIDs.
3. Write them to ``<spool>/<study uid>/results/v<version>/<sop uid>.dcm``
   (temp file, fsync, rename), then in one transaction: a ``results`` row per
   object, a ``deliveries`` row per object and destination, one ``deliver``
   job per destination (dedup key "deliver:<study id>:<version>:<name>"), the
   study ``reported``, and the job done.

A crash before step 3's transaction leaves only files that the re-run
overwrites with identical bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from triage_node.config import Settings
from triage_node.report.results import (
    SourceImage,
    assessment_from_json,
    build_study_results,
    cam_path_for,
    load_cams,
    load_display,
    write_result_file,
)
from triage_node.store.clock import utcnow
from triage_node.store.db import add_event
from triage_node.store.jobs import ClaimedJob, finish_job
from triage_node.store.models import (
    Delivery,
    DeliveryState,
    Instance,
    InstanceState,
    JobKind,
    JobState,
    Result,
    ResultKind,
    Study,
    StudyState,
)
from triage_node.work.base import JobContext, PermanentFailure
from triage_node.work.records import DeliverPayload, ReportPayload, ScoreRecord, WrittenResult
from triage_node.work.study import enqueue_once, rollup_delivery

log = logging.getLogger(__name__)

REPORTED_STATES = (InstanceState.SCORED, InstanceState.NOT_ASSESSABLE)

#: The words of ``[report] objects`` and the result kinds they name.
OBJECT_KINDS: dict[str, ResultKind] = {
    "sr": ResultKind.SR,
    "sc": ResultKind.SC,
    "map": ResultKind.MAP,
}


def configured_objects(settings: Settings) -> tuple[ResultKind, ...]:
    """The result kinds ``[report] objects`` asks for."""
    return tuple(OBJECT_KINDS[word] for word in settings.report.objects)


def result_path(study_instance_uid: str, report_version: int, sop_instance_uid: str) -> str:
    """Where a result object lives, relative to the spool directory."""
    return f"{study_instance_uid}/results/v{report_version}/{sop_instance_uid}.dcm"


def deliver_dedup_key(study_id: int, report_version: int, destination: str) -> str:
    """The dedup key of the deliver job of one report version to one destination."""
    return f"deliver:{study_id}:{report_version}:{destination}"


def content_datetime_for(study: Study) -> dt.datetime | None:
    """Content Date/Time of a report version: the study's settle time, in local time.

    Stored with the version, so a re-run builds the same bytes. None (no
    settle time recorded) lets the builders use the sources' dates.
    """
    if study.settled_at is None:
        return None
    return study.settled_at.astimezone().replace(tzinfo=None, microsecond=0)


def _reported_instances(session: Session, study_id: int, version: int) -> list[Instance]:
    return list(
        session.scalars(
            select(Instance)
            .where(
                Instance.study_id == study_id,
                Instance.report_version.is_not(None),
                Instance.report_version <= version,
                Instance.state.in_(REPORTED_STATES),
            )
            .order_by(Instance.id)
        ).all()
    )


def load_sources(
    settings: Settings,
    instances: list[Instance],
    objects: tuple[ResultKind, ...] = tuple(OBJECT_KINDS.values()),
) -> list[SourceImage]:
    """Read the reported instances back: spool file, stored assessment, CAMs, display copy.

    Only what ``objects`` need is read: a scored instance with a display copy
    (made by the score job) is read without its pixel data, and its full-size CAMs
    only for the attention map; one scored before display copies existed is drawn
    from its decoded pixels and CAMs, as before. Raises :class:`PermanentFailure`
    naming the instance when its file or its stored assessment is unusable.
    """
    sources: list[SourceImage] = []
    for inst in instances:
        where = f"instance {inst.id} (SOP Instance UID {inst.sop_instance_uid})"
        record = ScoreRecord.from_json(inst.result)
        if record.assessment is None:
            raise PermanentFailure(f"{where}: no stored assessment")
        try:
            assessment = assessment_from_json(record.assessment)
        except ValueError as exc:
            raise PermanentFailure(f"{where}: {exc}") from None
        path = settings.spool_dir / inst.path
        scored = inst.state == InstanceState.SCORED
        display = None
        if scored and ResultKind.SC in objects and record.display_path:
            try:
                display = load_display(settings.spool_dir / record.display_path)
            except (OSError, ValueError) as exc:  # drawn from the source instead
                log.warning(
                    "heatmap display copy %s unreadable, drawing from the source: %s",
                    record.display_path,
                    exc,
                    extra={"instance_id": inst.id, "sop_instance_uid": inst.sop_instance_uid},
                )
        draw_from_source = scored and ResultKind.SC in objects and display is None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not draw_from_source)
        except FileNotFoundError:
            raise PermanentFailure(f"{where}: spool file {inst.path} is missing") from None
        except Exception as exc:
            raise PermanentFailure(
                f"{where}: spool file {inst.path} is not readable: {type(exc).__name__}: {exc}"
            ) from None
        cam_file = settings.spool_dir / record.cam_path if record.cam_path else cam_path_for(path)
        need_cams = scored and (ResultKind.MAP in objects or draw_from_source)
        try:
            cams = load_cams(cam_file) if need_cams else None
        except (OSError, ValueError) as exc:
            raise PermanentFailure(f"{where}: CAM file unreadable: {exc}") from None
        sources.append(SourceImage(ds, assessment, cams, scored, inst.id, display))
    return sources


class ReportHandler:
    """Runs ``report`` jobs (see the module docstring)."""

    kind = JobKind.REPORT

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, ctx: JobContext) -> str | None:
        """Build, write and record one report version of the job's study."""
        job = ctx.job
        version = ReportPayload.from_json(job.payload).report_version
        with ctx.store.read() as session:
            study = self._study(session, job)
            study_uid, study_id = study.study_instance_uid, study.id
            when = content_datetime_for(study)
            instances = _reported_instances(session, study.id, version)
            for inst in instances:
                session.expunge(inst)
        if version < 1:
            raise PermanentFailure(f"job {job.id}: no report_version in the payload")
        if not instances:
            return self._finish(
                ctx,
                study_id,
                version,
                [],
                "nothing to report: no scored or not-assessable instance",
            )

        objects = configured_objects(self.settings)
        sources = load_sources(self.settings, instances, objects)
        ctx.checkpoint()
        try:
            built = build_study_results(
                sources,
                report_version=version,
                content_datetime=when,
                objects=objects,
                heatmap_transfer_syntax=self.settings.report.heatmap_transfer_syntax,
            )
        except (TypeError, ValueError) as exc:
            raise PermanentFailure(f"study {study_uid} report v{version}: {exc}") from exc
        ctx.checkpoint()
        written: list[WrittenResult] = []
        for item in built:
            ds = item.dataset
            rel = result_path(study_uid, version, ds.SOPInstanceUID)
            size = write_result_file(
                ds, self.settings.spool_dir / rel, fsync=self.settings.receive.fsync
            )
            written.append(
                WrittenResult(
                    kind=item.kind,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    source_instance_id=item.source_instance_id,
                    path=rel,
                    size_bytes=size,
                )
            )
        n_sc = sum(1 for w in written if w.kind == ResultKind.SC)
        n_map = sum(1 for w in written if w.kind == ResultKind.MAP)
        return self._finish(
            ctx,
            study_id,
            version,
            written,
            f"report v{version}: SR + {n_sc} heatmap(s) + {n_map} attention map(s)",
        )

    def _finish(
        self,
        ctx: JobContext,
        study_id: int,
        version: int,
        written: list[WrittenResult],
        outcome: str,
    ) -> str:
        destinations = [d.name for d in self.settings.destinations]
        now = ctx.clock()
        with ctx.store.write() as session:
            study = self._study(session, ctx.job)
            for w in written:
                result = session.scalars(
                    select(Result).where(Result.sop_instance_uid == w.sop_instance_uid)
                ).first()
                if result is None:
                    result = Result(
                        study_id=study_id,
                        report_version=version,
                        created_at=now,
                        **dataclasses.asdict(w),
                    )
                    session.add(result)
                    session.flush()
                for name in destinations:
                    if (
                        session.scalars(
                            select(Delivery.id).where(
                                Delivery.result_id == result.id, Delivery.destination == name
                            )
                        ).first()
                        is None
                    ):
                        session.add(
                            Delivery(
                                result_id=result.id,
                                destination=name,
                                state=DeliveryState.PENDING,
                                attempts=0,
                                updated_at=now,
                            )
                        )
            session.flush()
            if written:
                for name in destinations:
                    enqueue_once(
                        session,
                        JobKind.DELIVER,
                        deliver_dedup_key(study_id, version, name),
                        study_id=study_id,
                        payload=DeliverPayload(name, version).to_json(),
                        max_attempts=self.settings.deliver.max_attempts,
                        clock=ctx.clock,
                    )
            if study.report_version == version:
                study.state = StudyState.REPORTED
                study.last_error = None
                if written:
                    rollup_delivery(session, study, clock=ctx.clock)
            study.updated_at = now
            add_event(
                session,
                "study_reported",
                job_id=ctx.job.id,
                study_instance_uid=study.study_instance_uid,
                state=study.state,
                message=outcome
                + (
                    f"; delivery to {', '.join(destinations)} queued"
                    if written and destinations
                    else ""
                ),
                data={
                    "report_version": version,
                    "objects": [
                        {"kind": str(w.kind), "sop_instance_uid": w.sop_instance_uid}
                        for w in written
                    ],
                },
            )
            finish_job(session, ctx.job, outcome, clock=ctx.clock)
        return outcome

    @staticmethod
    def _study(session: Session, job: ClaimedJob) -> Study:
        study = session.get(Study, job.study_id) if job.study_id is not None else None
        if study is None:
            raise PermanentFailure(f"job {job.id}: study row {job.study_id} does not exist")
        return study

    def on_failure(
        self, session: Session, job: ClaimedJob, new_state: JobState, error: str
    ) -> None:
        """Record the error on the study; a failed report leaves the study ``report_failed``."""
        study = session.get(Study, job.study_id) if job.study_id is not None else None
        if study is None:
            return
        failed = new_state == JobState.FAILED
        study.last_error = error[:2000]
        study.updated_at = utcnow()
        if failed:
            study.state = StudyState.REPORT_FAILED
        add_event(
            session,
            "study_report_failed" if failed else "study_report_retry",
            job_id=job.id,
            study_instance_uid=study.study_instance_uid,
            state=study.state,
            message=error[:500],
        )

    def on_release(self, session: Session, job: ClaimedJob) -> None:
        """Nothing to undo: files written so far are overwritten by the re-run."""


def result_file(settings: Settings, result: Result) -> Path:
    """The spool file of a result row."""
    return settings.spool_dir / result.path
