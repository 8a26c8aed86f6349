"""Completeness by asking the archive: report a study as soon as the node holds all of it.

With ``[completeness] query_peer`` set, :meth:`CompletenessCheck.run` (run by
the scheduler every :data:`COMPLETENESS_CHECK_SECONDS`) asks the query peer,
once per study per arrival batch, which instances it holds in each study that
has instances no report covers yet (one C-FIND, IMAGE level; see
:mod:`triage_node.deliver.find`). The node's own eligibility rules are applied
to the answers (:func:`triage_node.receive.eligibility.decide_listed_eligibility`).
The study is *complete* when

* the node holds (in any state) every eligible instance the archive lists, and
* the archive lists every not-skipped instance the node holds (an archive
  that has not stored the study yet answers with nothing: that says nothing);

and then, as soon as none of its instances is still queued or scoring, its next
report version is queued at once (event ``study_settled`` with path
``archive``), without waiting ``node.settle_seconds``.

When the archive lists instances the node does not hold yet (still in flight),
the study waits: it is asked again on the next arrival, or after
``[completeness] recheck_seconds``. When the peer cannot answer (no connection,
rejected, timeout, failure status) nothing is retried until the next arrival:
the settle time of :func:`triage_node.work.study.settle_studies`, which always
runs beside this check, reports the study (path ``timer``). So the timer bounds
every wait here.

The answers are kept in this process only: with several ``work`` processes each
asks for itself, and the queued report is unique by the same lock and
``dedup_key`` as the settle check's.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from triage_node.config import DestinationSection, Settings
from triage_node.deliver.find import ArchivedInstance, ArchiveQueryFailed, find_study_instances
from triage_node.receive.eligibility import decide_listed_eligibility
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store, add_event
from triage_node.store.models import (
    CompletenessPath,
    Instance,
    InstanceState,
    Job,
    JobKind,
    JobState,
    Study,
)
from triage_node.telemetry.metrics import record_completeness, record_completeness_query
from triage_node.work.study import queue_report, ready_condition

log = logging.getLogger(__name__)

#: How often the scheduler runs the check (a database read; C-FINDs only on news).
COMPLETENESS_CHECK_SECONDS = 0.5
#: Studies looked at per run.
CHECK_BATCH = 100

#: ``find(peer, study_instance_uid, settings=...)``: the C-FIND (a stand-in in unit tests).
Finder = Callable[..., list[ArchivedInstance]]


@dataclass
class _Answer:
    """What the archive said about one study, for the arrival batch it was asked about."""

    arrival: dt.datetime  # the study's last_instance_at when asked
    complete: bool = False  # usable and nothing missing: report once nothing is unfinished
    ask_again_at: dt.datetime | None = None  # waiting: when to ask again; None: not before news


@dataclass(frozen=True)
class _Candidate:
    id: int
    uid: str
    last_instance_at: dt.datetime


class CompletenessCheck:
    """The archive-driven completeness check of one process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        find: Finder = find_study_instances,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self.find = find
        self.clock = clock
        self._answers: dict[int, _Answer] = {}
        # What the last "completeness_waiting" event of a study said: a re-ask that finds
        # the same instances missing adds no event (the metric still counts it).
        self._said: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    @property
    def peer(self) -> DestinationSection | None:
        return self.settings.query_peer

    def run(self) -> list[tuple[str, int]]:
        """Ask about studies with news, queue reports of complete ones.

        Returns the (Study Instance UID, report version) pairs queued.
        """
        peer = self.peer
        if peer is None:
            return []
        now = self.clock()
        candidates = self._candidates(now)
        self._answers = {c.id: a for c in candidates if (a := self._answers.get(c.id))}
        self._said = {c.id: w for c in candidates if (w := self._said.get(c.id))}
        queued: list[tuple[str, int]] = []
        for candidate in candidates:
            answer = self._answers.get(candidate.id)
            if (
                answer is None
                or answer.arrival != candidate.last_instance_at
                or (answer.ask_again_at is not None and now >= answer.ask_again_at)
            ):
                answer = self._ask(peer, candidate)
                self._answers[candidate.id] = answer
            if answer.complete:
                version = self._queue_if_ready(candidate, answer)
                if version is not None:
                    queued.append((candidate.uid, version))
                    del self._answers[candidate.id]
        for uid, version in queued:
            record_completeness(CompletenessPath.ARCHIVE)
            log.info(
                "study complete in the archive",
                extra={"study_instance_uid": uid, "report_version": version, "path": "archive"},
            )
        return queued

    def _candidates(self, now: dt.datetime) -> list[_Candidate]:
        """Studies with an instance no report covers, no report queued, within the settle
        time (after it the timer reports them anyway)."""
        quiet_since = now - dt.timedelta(seconds=self.settings.node.settle_seconds)
        unreported = exists().where(
            Instance.study_id == Study.id,
            Instance.state != InstanceState.SKIPPED,
            Instance.report_version.is_(None),
        )
        report_pending = exists().where(
            Job.study_id == Study.id,
            Job.kind == JobKind.REPORT,
            Job.state.in_((JobState.QUEUED, JobState.RUNNING)),
        )
        with self.store.read() as session:
            rows = session.execute(
                select(Study.id, Study.study_instance_uid, Study.last_instance_at)
                .where(and_(Study.last_instance_at > quiet_since, unreported, ~report_pending))
                .order_by(Study.last_instance_at, Study.id)
                .limit(CHECK_BATCH)
            ).all()
        return [_Candidate(r[0], r[1], r[2]) for r in rows]

    def _held(self, session: Session, study_id: int) -> tuple[set[str], set[str]]:
        """SOP Instance UIDs the node holds in the study: all, and those not skipped."""
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.state).where(Instance.study_id == study_id)
        ).all()
        return {r[0] for r in rows}, {r[0] for r in rows if r[1] != InstanceState.SKIPPED}

    def _ask(self, peer: DestinationSection, candidate: _Candidate) -> _Answer:
        answer = _Answer(arrival=candidate.last_instance_at)
        try:
            listed = self.find(peer, candidate.uid, settings=self.settings)
        except ArchiveQueryFailed as exc:
            record_completeness_query("failed")
            self._event(
                candidate,
                "completeness_query_failed",
                f"{exc}; the study is reported after node.settle_seconds = "
                f"{self.settings.node.settle_seconds:g} s of quiet",
                {"path": str(CompletenessPath.TIMER)},
            )
            log.warning(
                "archive query failed; the study waits the settle time",
                extra={"study_instance_uid": candidate.uid, "error": str(exc)},
            )
            return answer
        rules = self.settings.eligibility
        eligible = {
            i.sop_instance_uid
            for i in listed
            if decide_listed_eligibility(
                modality=i.modality,
                body_part=i.body_part,
                view_position=i.view_position,
                manufacturer=i.manufacturer,
                model_name=i.model_name,
                series_description=i.series_description,
                rules=rules,
            ).eligible
        }
        with self.store.read() as session:
            held, held_not_skipped = self._held(session, candidate.id)
        missing = eligible - held
        unlisted = held_not_skipped - {i.sop_instance_uid for i in listed}
        if not missing and not unlisted:
            record_completeness_query("complete")
            answer.complete = True
            return answer
        record_completeness_query("waiting")
        answer.ask_again_at = self.clock() + dt.timedelta(
            seconds=self.settings.completeness.recheck_seconds
        )
        said = (tuple(sorted(missing)), tuple(sorted(unlisted)))
        if self._said.get(candidate.id) == said:
            return answer
        self._said[candidate.id] = said
        if missing:
            why = (
                f"the archive lists {len(missing)} eligible instance(s) the node does not "
                f"hold yet (of {len(eligible)})"
            )
        else:
            why = (
                f"the archive does not list {len(unlisted)} instance(s) the node holds "
                "(not stored there yet?)"
            )
        self._event(
            candidate,
            "completeness_waiting",
            f"{why}; asking again on the next arrival or in "
            f"{self.settings.completeness.recheck_seconds:g} s",
            {"missing": list(said[0]), "unlisted": list(said[1])},
        )
        return answer

    def _event(
        self, candidate: _Candidate, kind: str, message: str, data: dict[str, object]
    ) -> None:
        with self.store.write() as session:
            add_event(
                session,
                kind,
                study_instance_uid=candidate.uid,
                message=f"{peer_label(self.peer)}: {message}" if self.peer else message,
                data=data,
            )

    def _queue_if_ready(self, candidate: _Candidate, answer: _Answer) -> int | None:
        """Queue the report if nothing is unfinished and nothing arrived since the answer."""
        condition = and_(
            Study.id == candidate.id,
            Study.last_instance_at == answer.arrival,
            ready_condition(),
        )
        with self.store.write() as session:
            query = select(Study).where(condition)
            if not self.store.is_sqlite:
                query = query.with_for_update(skip_locked=True, of=Study)
            study = session.scalars(query).first()
            # Checked again under the row lock (PostgreSQL, read committed), as in settling.
            if study is None or not session.scalars(select(Study.id).where(condition)).first():
                return None
            return queue_report(
                session,
                self.settings,
                study,
                self.clock(),
                path=CompletenessPath.ARCHIVE,
                why=f"{peer_label(self.peer)} lists no eligible instance the node does not hold",
            )


def peer_label(peer: DestinationSection | None) -> str:
    """How messages name the query peer."""
    if peer is None:
        return "no query peer"
    return f"query peer {peer.name!r} ({peer.ae_title} at {peer.host}:{peer.port})"
