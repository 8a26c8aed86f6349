"""The ``score`` job: decode a spooled instance, run the model, record the result on its row.

Steps, each visible on the Instance row and as an event:

1. ``scoring``; the spool file is read and its pixel data decoded with pydicom
   (every transfer syntax we accept, through the pylibjpeg, openjpeg, RLE and
   JPEG-LS plugins). The decode facts go to ``result["decoded"]`` at once.
   A file that does not decode fails the instance and the job permanently.
2. The model is loaded once per process (:class:`ModelCache`), at the node's
   start. When none is installed the job waits: requeued with backoff, not charged an attempt, the
   instance back to ``queued`` with ``last_error = "model unavailable: ..."``.
3. ``model.assess`` gives per-side probabilities: the instance becomes
   ``scored`` (probability = ``assessment.probability``) or ``not_assessable`` with the reason.
   Class-activation maps (``assessment.extra["cam"]``, side -> array on the
   source pixel grid) are saved beside the spool file as ``<sop>.cam.npz``
   (no pickle; :func:`triage_node.report.results.save_cams`) and left out of
   the JSON; ``result["cam_path"]`` says where they are. The report job reads them.
4. For an assessable image, the heatmap's display copy
   (:func:`triage_node.report.heatmap.display_copy`: the radiograph windowed and
   scaled to the heatmap's size, uint8, and the CAMs at that size) is made from the
   pixels decoded in step 1 and saved as ``<sop>.display.npz``
   (``result["display_path"]``), so the report job draws the heatmap without
   decoding the full-size source again. When it cannot be made (a source the
   heatmap cannot draw), the job still succeeds: the report job then draws from
   the source and says why it fails there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy.orm import Session

from triage_node.assessment import ImageAssessment, ModelUnavailable, NotScorable, ScoringModel
from triage_node.config import Settings
from triage_node.report.heatmap import display_copy
from triage_node.report.results import cam_path_for, display_path_for, save_cams, save_display
from triage_node.score.bundle import bundle_path
from triage_node.score.loader import load_model
from triage_node.store.clock import utcnow
from triage_node.store.db import add_event
from triage_node.store.jobs import ClaimedJob, finish_job, retry_delay
from triage_node.store.models import Instance, InstanceState, JobKind, JobState
from triage_node.telemetry import metrics
from triage_node.work.base import JobContext, PermanentFailure, RetryLater
from triage_node.work.records import DecodeFacts, ScoreRecord
from triage_node.work.study import instance_finished

log = logging.getLogger(__name__)


class ModelCache:
    """The process's scoring model: loaded at start (:meth:`load_at_start`), shared by all
    worker threads.

    While no model can be loaded, each failure is remembered so the retry delay
    grows (exponential backoff on consecutive failures), and a new load is
    attempted at most once per ``retry_base_seconds`` rather than once per job.
    :meth:`check` (readiness) never waits for a load: it says what is loaded, or
    why nothing is, and when a retry is due starts one in the background, so a
    bundle installed while the node runs makes it ready without a job arriving.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()  # held for a whole load: one load at a time
        self._model: ScoringModel | None = None
        self._failures = 0
        self._last_error = ""
        self._next_try = 0.0
        self._loading = False
        self._retry: threading.Thread | None = None

    def get(self) -> ScoringModel:
        """The loaded model; raises :class:`ModelUnavailable` while there is none."""
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            if time.monotonic() < self._next_try:
                raise ModelUnavailable(self._last_error)
            return self._load()

    def _load(self) -> ScoringModel:
        """Load the configured bundle; the caller holds ``_lock``."""
        self._loading = True
        try:
            model = load_model(self._settings)
        except ModelUnavailable as exc:
            self._failures += 1
            self._last_error = str(exc)
            self._next_try = time.monotonic() + self._settings.worker.retry_base_seconds
            log.warning("model unavailable: %s", exc, extra={"failures": self._failures})
            raise
        finally:
            self._loading = False
        self._failures = 0
        self._model = model
        log.info(
            "model loaded",
            extra={
                "model_name": model.name,
                "model_version": model.version,
                "synthetic_model": model.synthetic,
            },
        )
        return model

    def load_at_start(self) -> bool:
        """Load the model now (the node does, before it says it is ready); False without one.

        A missing or refused bundle is a WARNING naming the bundle's path; the node
        runs on, and score jobs wait in the queue until a usable bundle is there.
        """
        try:
            self.get()
        except ModelUnavailable as exc:
            log.warning(
                "no model at start: bundle %s (model.bundle in %s): %s; "
                "images are received and their score jobs wait until a usable bundle is there",
                bundle_path(self._settings),
                self._settings.source,
                exc,
            )
            return False
        return True

    def check(self) -> str:
        """The loaded model's name and version, at once; raises :class:`ModelUnavailable`.

        Never loads in the caller's thread: while a load runs it says so, and when
        none is loaded and a retry is due one starts in the background.
        """
        model = self._model
        if model is not None:
            return f"{model.name} {model.version}"
        if self._loading:
            if self._last_error:
                raise ModelUnavailable(f"{self._last_error} (trying again)")
            raise ModelUnavailable(f"loading the model from {bundle_path(self._settings)}")
        self._retry_in_background()
        raise ModelUnavailable(self._last_error or "not loaded yet")

    def _retry_in_background(self) -> None:
        """Try the bundle again in a thread of its own, if a load failed and a retry is due."""
        if not self._failures or time.monotonic() < self._next_try:
            return  # never tried (the node's start loads it) or tried too recently
        if self._retry is not None and self._retry.is_alive():
            return
        self._retry = threading.Thread(target=self._try_load, name="model-load", daemon=True)
        self._retry.start()

    def _try_load(self) -> None:
        with contextlib.suppress(ModelUnavailable):
            self.get()

    def wait_seconds(self) -> float:
        """How long a job should wait for a model: grows with consecutive failed loads."""
        w = self._settings.worker
        return retry_delay(max(1, self._failures), w.retry_base_seconds, w.retry_max_seconds)


@dataclass(frozen=True)
class _InstanceRef:
    id: int
    sop_instance_uid: str
    study_instance_uid: str
    path: str


def decode_facts(ds: pydicom.Dataset) -> DecodeFacts:
    """Decode the pixel data of ``ds`` and describe it; raises :class:`NotScorable`."""
    if "PixelData" not in ds:
        raise NotScorable("no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable data
        raise NotScorable(f"pixel data does not decode: {type(exc).__name__}: {exc}") from exc
    return DecodeFacts(
        rows=int(pixels.shape[0]),
        columns=int(pixels.shape[1]) if pixels.ndim > 1 else 1,
        dtype=str(pixels.dtype),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
    )


class ScoreHandler:
    """Runs ``score`` jobs; one instance per process, shared by its worker threads."""

    kind = JobKind.SCORE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models = ModelCache(settings)

    # -- running -------------------------------------------------------------------------

    def run(self, ctx: JobContext) -> str | None:
        """Score the job's instance; see the module docstring for the steps."""
        job = ctx.job
        ref = self._start(ctx)
        fields = {"job_id": job.id, "sop_instance_uid": ref.sop_instance_uid}
        path = self.settings.spool_dir / ref.path
        try:
            ds = pydicom.dcmread(path)
        except FileNotFoundError:
            raise PermanentFailure(f"spool file {_rel(path, self.settings)} is missing") from None
        except Exception as exc:
            raise PermanentFailure(
                f"spool file {_rel(path, self.settings)} is not readable DICOM: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            decoded = decode_facts(ds)
        except NotScorable as exc:
            raise PermanentFailure(str(exc)) from exc
        self._record_decoded(ctx, decoded)
        log.debug("decoded", extra={**fields, **decoded.to_json()})

        ctx.checkpoint()
        try:
            model = self.models.get()
        except ModelUnavailable as exc:
            raise RetryLater(
                f"model unavailable: {exc}", delay=self.models.wait_seconds(), count_attempt=False
            ) from exc
        ctx.checkpoint()
        try:
            assessment = model.assess(ds)
        except NotScorable as exc:
            raise PermanentFailure(f"not scorable: {exc}") from exc
        cam_path: str | None = None
        display_path = (
            self._save_display(ds, assessment, path, fields) if assessment.assessable else None
        )
        if assessment.extra.get("cam") is not None:
            cam_file = cam_path_for(path)
            try:
                save_cams(cam_file, assessment.extra["cam"], fsync=self.settings.receive.fsync)
            except (TypeError, ValueError) as exc:
                raise PermanentFailure(f"model gave unusable CAMs: {exc}") from exc
            cam_path = _rel(cam_file, self.settings)
            assessment = dataclasses.replace(
                assessment, extra={k: v for k, v in assessment.extra.items() if k != "cam"}
            )

        with ctx.store.write() as session:
            inst = self._instance(session, job)
            record = ScoreRecord.from_json(inst.result).with_decoded(decoded)
            inst.result = record.with_assessment(assessment, cam_path, display_path).to_json()
            inst.probability = assessment.probability
            inst.last_error = None
            if assessment.assessable:
                inst.state = InstanceState.SCORED
                inst.reason = None
                outcome = f"scored p={assessment.probability:.3f}"
            else:
                inst.state = InstanceState.NOT_ASSESSABLE
                inst.reason = assessment.not_assessable_reason
                outcome = f"not assessable: {inst.reason}"
            inst.updated_at = ctx.clock()
            _instance_event(
                session,
                inst,
                f"instance_{inst.state}",
                job,
                outcome,
                data={
                    "probability": assessment.probability,
                    "model_version": assessment.model_version,
                },
            )
            instance_finished(session, inst, clock=ctx.clock)
            finish_job(session, job, outcome, clock=ctx.clock)
            final_state = inst.state
            scanner = (inst.manufacturer, inst.model_name)
        metrics.record_instance(final_state)
        if assessment.probability is not None:
            metrics.observe_image_value(*scanner, assessment.probability)
        return outcome

    def _save_display(
        self, ds: pydicom.Dataset, assessment: ImageAssessment, path: Path, fields: dict[str, Any]
    ) -> str | None:
        """Save the heatmap's display copy beside the spool file; its relative path, or None."""
        try:
            display = display_copy(ds, assessment, assessment.extra.get("cam"))
        except (TypeError, ValueError) as exc:
            # the report job draws from the source and reports the problem there
            log.warning("no heatmap display copy: %s", exc, extra=fields)
            return None
        target = display_path_for(path)
        save_display(target, display, fsync=self.settings.receive.fsync)
        return _rel(target, self.settings)

    def _start(self, ctx: JobContext) -> _InstanceRef:
        with ctx.store.write() as session:
            inst = self._instance(session, ctx.job)
            ref = _InstanceRef(inst.id, inst.sop_instance_uid, inst.study_instance_uid, inst.path)
            if inst.state != InstanceState.SCORING:
                inst.state = InstanceState.SCORING
                inst.updated_at = ctx.clock()
                _instance_event(
                    session, inst, "instance_scoring", ctx.job, f"attempt {ctx.job.attempts}"
                )
        return ref

    def _record_decoded(self, ctx: JobContext, decoded: DecodeFacts) -> None:
        with ctx.store.write() as session:
            inst = self._instance(session, ctx.job)
            inst.result = ScoreRecord.from_json(inst.result).with_decoded(decoded).to_json()
            inst.rows = decoded.rows
            inst.columns = decoded.columns
            inst.updated_at = ctx.clock()
            _instance_event(
                session, inst, "instance_decoded", ctx.job, decoded.describe(), decoded.to_json()
            )

    @staticmethod
    def _instance(session: Session, job: ClaimedJob) -> Instance:
        inst = session.get(Instance, job.instance_id) if job.instance_id is not None else None
        if inst is None:
            raise PermanentFailure(f"job {job.id}: instance row {job.instance_id} does not exist")
        return inst

    # -- failure and release -------------------------------------------------------------

    def on_failure(
        self, session: Session, job: ClaimedJob, new_state: JobState, error: str
    ) -> None:
        """Instance back to ``queued`` (retry or model wait) or ``failed`` with the reason."""
        inst = session.get(Instance, job.instance_id) if job.instance_id is not None else None
        if inst is None:
            return
        inst.updated_at = utcnow()
        inst.last_error = error[:2000]
        if new_state == JobState.FAILED:
            inst.state = InstanceState.FAILED
            inst.reason = error[:2000]
            _instance_event(session, inst, "instance_failed", job, error[:500])
            instance_finished(session, inst)
        else:
            inst.state = InstanceState.QUEUED
            _instance_event(session, inst, "instance_queued", job, f"retry: {error[:500]}")

    def on_release(self, session: Session, job: ClaimedJob) -> None:
        """Instance back to ``queued``: another worker (or this node after restart) takes it."""
        inst = session.get(Instance, job.instance_id) if job.instance_id is not None else None
        if inst is None or inst.state != InstanceState.SCORING:
            return
        inst.state = InstanceState.QUEUED
        inst.updated_at = utcnow()
        _instance_event(session, inst, "instance_queued", job, "released: worker stopping")


def _instance_event(
    session: Session,
    inst: Instance,
    kind: str,
    job: ClaimedJob,
    message: str,
    data: dict[str, Any] | None = None,
) -> None:
    add_event(
        session,
        kind,
        instance_id=inst.id,
        job_id=job.id,
        sop_instance_uid=inst.sop_instance_uid,
        study_instance_uid=inst.study_instance_uid,
        state=inst.state,
        message=message,
        data=data,
    )


def _rel(path: Path, settings: Settings) -> str:
    """A spool path as shown in errors: relative to the spool (no site directory layout)."""
    try:
        return str(path.relative_to(settings.spool_dir))
    except ValueError:
        return str(path)
