"""Study-level follow-up when one of a study's instances reaches a final state.

Issue 5 (report and delivery) builds on this: once a study has settled (no new
instance for ``node.settle_seconds``) and none of its instances is still
queued or scoring, a ``report`` job is enqueued for it, and the report job
enqueues ``deliver`` jobs. Settling is time-based, so the decision belongs to
the scheduler (see :mod:`triage_node.ops.scheduler`); this hook only keeps the
study row current, in the same transaction as the instance's final state.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from triage_node.store.models import Instance, Study, utcnow


def instance_finished(session: Session, instance: Instance) -> None:
    """Record on the study that one of its instances is final (scored, not assessable, failed).

    Report and delivery jobs are not enqueued here yet (issue 5); this is where
    an immediate, non-time-based study decision would go.
    """
    study = session.get(Study, instance.study_id)
    if study is not None:
        study.updated_at = utcnow()
