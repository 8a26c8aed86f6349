"""The drift watch: each scanner's stream from the store, compared with the bundle's reference."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid

from triage_node.assessment import ImageAssessment, Side, SideAssessment
from triage_node.store import Instance, Store, Study
from triage_node.store.migrate import upgrade
from triage_node.store.models import InstanceState, utcnow
from triage_node.store.queries import scanner_summaries

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    upgrade(s)
    yield s
    s.dispose()


def _assessment(left: float | str, right: float | str, threshold: float = 0.5) -> ImageAssessment:
    def side(s: Side, v: float | str) -> SideAssessment:
        if isinstance(v, str):
            return SideAssessment(s, None, v)
        return SideAssessment(s, v, positive=v >= threshold)

    return ImageAssessment(
        sides=(side("right", right), side("left", left)),
        model_name="m",
        model_version="v",
        threshold=threshold,
        synthetic_model=True,
    )


def _add(
    store: Store,
    scanner: tuple[str | None, str | None],
    state: InstanceState,
    assessment: ImageAssessment | None = None,
    *,
    received_at: dt.datetime = NOW,
    own_result: bool = False,
) -> None:
    """One instance row as the receiver and the score job leave it."""
    with store.write() as session:
        study = Study(study_instance_uid=generate_uid())
        session.add(study)
        session.flush()
        session.add(
            Instance(
                sop_instance_uid=generate_uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                series_instance_uid=generate_uid(),
                modality="DX",
                body_part="HIP",
                manufacturer=scanner[0],
                model_name=scanner[1],
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="x.dcm",
                size_bytes=1,
                own_result=own_result,
                received_at=received_at,
                updated_at=utcnow(),
                state=state,
                probability=assessment.probability if assessment else None,
                result={"assessment": assessment.to_json()} if assessment else None,
            )
        )


ACME = ("Acme", "DR 1")
OTHER = ("Other Co", "CR 7")


def test_scanner_summaries_count_each_scanners_stream_in_the_window(store: Store) -> None:
    scored, na = InstanceState.SCORED, InstanceState.NOT_ASSESSABLE
    _add(store, ACME, scored, _assessment(0.72, 0.31))  # positive, value 0.72
    _add(store, ACME, scored, _assessment(0.05, "prosthesis or metal in the hip"))  # 0.05
    _add(store, ACME, na, _assessment("femur not found", "femur not found"))
    _add(store, ACME, InstanceState.QUEUED)
    _add(store, ACME, InstanceState.SKIPPED)
    _add(store, ACME, InstanceState.FAILED)
    _add(store, ACME, scored, _assessment(0.99, 0.99), own_result=True)  # never counted
    _add(store, ACME, scored, _assessment(0.99, 0.99), received_at=NOW - dt.timedelta(days=8))
    _add(store, OTHER, scored, _assessment(0.5, 0.2))  # at the threshold: positive
    _add(store, (None, None), InstanceState.SKIPPED)

    with store.read() as session:
        acme, other, unknown = scanner_summaries(session, NOW - dt.timedelta(days=7))
    assert (acme.manufacturer, acme.model_name) == ACME
    assert (acme.received, acme.skipped, acme.waiting, acme.failed) == (6, 1, 1, 1)
    assert (acme.judged, acme.assessable, acme.not_assessable, acme.positives) == (3, 2, 1, 1)
    assert acme.hips == 6
    assert acme.hip_reasons == {"femur not found": 2, "prosthesis or metal in the hip": 1}
    assert acme.histogram == (1, 0, 0, 0, 0, 0, 0, 1, 0, 0)
    assert acme.positive_rate == 0.5 and acme.not_assessable_rate == pytest.approx(1 / 3)
    assert acme.hip_reason_rate("femur not found") == pytest.approx(2 / 6)
    assert acme.hip_reason_rate("side not in the image") == 0
    assert (other.positives, other.histogram[5]) == (1, 1)
    assert (unknown.manufacturer, unknown.received, unknown.judged) == (None, 1, 0)
    assert unknown.positive_rate is None and unknown.not_assessable_rate is None

    with store.read() as session:  # a window that ends before the stream
        assert scanner_summaries(session, NOW - dt.timedelta(days=9), NOW - dt.timedelta(days=7))[
            0
        ].histogram == (0,) * 9 + (1,)
