"""End to end with the real Orthanc, deploy/orthanc's router and the shipped demo model.

Samples uploaded to Orthanc are routed to a real ``triage-node serve``, scored by the
demo bundle, and the SR, heatmaps and attention maps come back into the same studies in
Orthanc, with
the probabilities and decision the model gives for those images. With the archive
down and the node SIGKILLed in the middle of delivery, every result still arrives,
once, under the SOP Instance UIDs it was first sent with.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select

from tests.peers import (
    REPO,
    NodeProcess,
    OrthancServer,
    base_config,
    free_port,
    wait_for,
    write_config,
)
from tests.test_report import concept, content_items, dciodvfy, dsr2html_text, dsrdump
from triage_node.assessment import ImageAssessment
from triage_node.config import load_settings
from triage_node.report import codes
from triage_node.report.sr import decision_code, study_decision
from triage_node.report.wording import percent, percent_text, side_is_positive, study_conclusion
from triage_node.store import Store
from triage_node.store.models import Delivery, Instance, Job, Result

SAMPLES = REPO / "samples"
HIPS = [
    "01_osteoporotic_jpegls",
    "02_normal_mono1",
    "03_osteoporotic_cr_rle_mono1",
    "04_normal_jpeg_lossless",
    "05_prosthesis_right_jpeg2000",
    "06_unilateral_left_implicit",
    "07_bilateral_prosthesis",
    "09_blank",
]
NOT_ROUTED = ["08_chest_not_hip"]


@cache
def expected(name: str) -> ImageAssessment:
    """What the demo bundle says about a sample, computed here, in the test process."""
    return _model().assess(pydicom.dcmread(SAMPLES / f"{name}.dcm"))


@cache
def _model() -> Any:
    from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle
    from triage_node.score.model import BundleScoringModel

    return BundleScoringModel(load_bundle(DEMO_BUNDLE_DIR))


def sr_facts(sr: pydicom.Dataset) -> dict[str, Any]:
    """Per-hip probabilities (sorted), study decision code, conclusion and texts of our SR."""
    items = list(content_items(sr.ContentSequence))
    probability_concepts = {c.value for c in codes.SIDE_PROBABILITY.values()}
    (evaluations,) = [i for i in sr.ContentSequence if concept(i) == ("C0034375", "UMLS")]

    def code(item: Any) -> str:  # values over 16 characters go in LongCodeValue
        return str(item.get("CodeValue") or item.get("LongCodeValue"))

    return {
        # sent in percent (UCUM "%"), read back as probabilities
        "probabilities": sorted(
            float(i.MeasuredValueSequence[0].NumericValue) / 100
            for i in items
            if i.ValueType == "NUM" and concept(i)[0] in probability_concepts
        ),
        "decision": [
            code(i.ConceptCodeSequence[0])
            for i in evaluations.ContentSequence
            if i.ValueType == "CODE" and concept(i) == ("121075", "DCM")
        ],
        "conclusion": [
            str(i.TextValue)
            for i in evaluations.ContentSequence
            if i.ValueType == "TEXT" and concept(i) == ("121077", "DCM")
        ],
        "texts": [str(i.TextValue) for i in items if i.ValueType == "TEXT"],
    }


def expected_probabilities(a: ImageAssessment) -> list[float]:
    """The per-hip probabilities as the SR rounds them (percent, two decimals)."""
    return sorted(percent(s.probability) / 100 for s in a.sides if s.probability is not None)


def upload(archive: OrthancServer, name: str) -> pydicom.Dataset:
    data = (SAMPLES / f"{name}.dcm").read_bytes()
    archive.upload_bytes(data)
    return pydicom.dcmread(DicomBytesIO(data), stop_before_pixels=True)


def results_in(archive: OrthancServer, study_uid: str, source_uid: str) -> dict[str, str]:
    """Orthanc id -> "SR", "SC" or "MAP" for every object in the study but the source."""
    kinds = {"1.2.840.10008.5.1.4.1.1.7": "SC", "1.2.840.10008.5.1.4.1.1.66.4": "MAP"}
    return {
        i["ID"]: kinds.get(archive.get(f"/instances/{i['ID']}/tags?simplify")["SOPClassUID"], "SR")
        for i in archive.study_instances(study_uid)
        if i["MainDicomTags"]["SOPInstanceUID"] != source_uid
    }


def complete(archive: OrthancServer, ds: pydicom.Dataset, name: str) -> bool:
    """The study holds its SR, and a heatmap (SC) and an attention map per assessable image."""
    got = sorted(results_in(archive, ds.StudyInstanceUID, ds.SOPInstanceUID).values())
    want = sorted(["SR"] + ["SC", "MAP"] * expected(name).assessable)
    return got == want


def node_config(
    tmp_path: Path, archive: OrthancServer, node_port: int, settle_seconds: float = 1, **extra: Any
) -> Path:
    cfg = base_config(
        tmp_path / "data",
        node_port,
        node={"ae_title": archive.node_aet, "settle_seconds": settle_seconds, "workers": 2},
        peers=[
            {"ae_title": archive.aet, "host": "127.0.0.1"},
            {"ae_title": "STORESCU", "host": "127.0.0.1"},
        ],
        destinations=[
            {
                "name": "orthanc",
                "ae_title": archive.aet,
                "host": "127.0.0.1",
                "port": archive.dicom_port,
            }
        ],
        deliver={
            "max_attempts": 200,
            "retry_base_seconds": 0.5,
            "retry_max_seconds": 2,
            "connection_timeout": 2,
        },
        **extra,
    )
    return write_config(tmp_path / "node.toml", cfg)


@pytest.fixture
def archive_and_node(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[OrthancServer, NodeProcess]]:
    node_port = free_port()
    archive = OrthancServer(tmp_path / "orthanc", node_port).start()
    overrides = getattr(request, "param", {})  # e.g. {"settle_seconds": 20}
    node = NodeProcess(
        node_config(tmp_path, archive, node_port, **overrides), tmp_path / "node.log"
    )
    try:
        node.start()
        yield archive, node
    finally:
        node.kill()
        archive.stop()


def test_samples_routed_scored_and_results_back_in_their_studies(
    archive_and_node: tuple[OrthancServer, NodeProcess], tmp_path: Path
) -> None:
    archive, node = archive_and_node
    sources = {name: upload(archive, name) for name in HIPS + NOT_ROUTED}
    hips = {name: sources[name] for name in HIPS}
    wait_for(
        lambda: all(complete(archive, ds, n) for n, ds in hips.items()),
        "an SR and the heatmaps in every hip study",
        600,
        node,
        archive,
    )

    for name, ds in hips.items():
        a = expected(name)
        objects = results_in(archive, ds.StudyInstanceUID, ds.SOPInstanceUID)
        (sr_id,) = [i for i, m in objects.items() if m == "SR"]
        sr = pydicom.dcmread(DicomBytesIO(archive.get_bytes(f"/instances/{sr_id}/file")))
        facts = sr_facts(sr)
        assert facts["probabilities"] == pytest.approx(expected_probabilities(a), abs=1e-6), name
        assert facts["decision"] == [decision_code(study_decision([a])).value], name
        # the study value and decision, in the words the heatmap burns in
        assert facts["conclusion"] == [study_conclusion([a])], name
        assert any("synthetic" in t.lower() for t in facts["texts"]), name
        assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.PatientID == ds.PatientID
        for sc_id in (i for i, m in objects.items() if m == "SC"):
            sc = archive.get(f"/instances/{sc_id}/tags?simplify")
            assert sc["BurnedInAnnotation"] == "YES"
            assert sc["SeriesDescription"].startswith("AI triage")
        for map_id in (i for i, m in objects.items() if m == "MAP"):
            seg = pydicom.dcmread(DicomBytesIO(archive.get_bytes(f"/instances/{map_id}/file")))
            assert seg.SeriesDescription.startswith("AI triage")
            assert (seg.Rows, seg.Columns) == (ds.Rows, ds.Columns)
            frame = seg.PerFrameFunctionalGroupsSequence[0]
            source_ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
            assert source_ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
            assert seg.pixel_array.max() > 0  # the model's attention is in it
        # What the archive holds is valid DICOM, and a reader sees the result in the SR.
        for object_id in objects:
            path = tmp_path / f"{name}-{object_id}.dcm"
            path.write_bytes(archive.get_bytes(f"/instances/{object_id}/file"))
            dciodvfy(path)
        text = dsrdump(tmp_path / f"{name}-{sr_id}.dcm")
        assert decision_code(study_decision([a])).meaning in text, name
        # dsr2html (default options) shows each hip's probability under a name with the side
        rendered = dsr2html_text(tmp_path / f"{name}-{sr_id}.dcm")
        for side in (s for s in a.sides if s.probability is not None):
            label = codes.side_probability(side.side, bool(side_is_positive(side, a.threshold)))
            label_text = label.meaning
            assert f"{label_text}: {percent_text(side.probability)}" in rendered, name
        if a.probability is None:
            assert "probability of osteoporosis:" not in rendered.lower(), name
    # What the model could not assess says so, with no probability at all.
    assert expected("07_bilateral_prosthesis").probability is None
    assert expected("09_blank").probability is None
    assert expected("01_osteoporotic_jpegls").probability is not None

    chest = sources["08_chest_not_hip"]
    assert [
        i["MainDicomTags"]["SOPInstanceUID"]
        for i in archive.study_instances(chest.StudyInstanceUID)
    ] == [chest.SOPInstanceUID]
    assert node.terminate(60) == 0


# Orthanc routes each upload on its own time: with a 1 s settle the first study could be
# reported and delivered before the last image reaches the node and the archive is stopped.
# A long settle keeps every result behind the archive's stop.
@pytest.mark.parametrize("archive_and_node", [{"settle_seconds": 20}], indirect=True)
def test_archive_down_then_sigkill_mid_delivery_every_result_arrives_once(
    archive_and_node: tuple[OrthancServer, NodeProcess],
) -> None:
    archive, node = archive_and_node
    names = [
        "01_osteoporotic_jpegls",
        "02_normal_mono1",
        "04_normal_jpeg_lossless",
        "06_unilateral_left_implicit",
    ]
    settings = load_settings(node.config_path)
    store = Store(settings.database_url)
    try:
        sources = {n: upload(archive, n) for n in names}
        uids = [ds.SOPInstanceUID for ds in sources.values()]

        def received() -> bool:
            with store.read() as s:
                return len(
                    s.scalars(select(Instance.id).where(Instance.sop_instance_uid.in_(uids))).all()
                ) == len(uids)

        wait_for(received, "the node to receive the routed images", 120, node, archive)
        archive.stop()  # the archive goes down before any result is made

        def retrying() -> bool:
            with store.read() as s:
                jobs = s.scalars(select(Job).where(Job.kind == "deliver")).all()
                return len(jobs) == len(names) and all(j.attempts >= 2 for j in jobs)

        wait_for(retrying, "every study's delivery to be retried", 600, node)
        with store.read() as s:
            assert all(d.state != "delivered" for d in s.scalars(select(Delivery)))

        archive.start()

        def some_arrived() -> int:
            return sum(
                len(results_in(archive, ds.StudyInstanceUID, ds.SOPInstanceUID))
                for ds in sources.values()
            )

        wait_for(some_arrived, "the first result in Orthanc", 120, node, archive)
        node.kill()  # in the middle of delivery
        before = {
            i["MainDicomTags"]["SOPInstanceUID"]
            for ds in sources.values()
            for i in archive.study_instances(ds.StudyInstanceUID)
        } - set(uids)
        node.start()
        wait_for(
            lambda: all(complete(archive, ds, n) for n, ds in sources.items()),
            "every result in Orthanc after the restart",
            300,
            node,
            archive,
        )

        def all_delivered() -> bool:
            with store.read() as s:
                return all(d.state == "delivered" for d in s.scalars(select(Delivery)))

        wait_for(all_delivered, "every delivery recorded", 120, node)
        assert node.terminate(60) == 0
        with store.read() as s:
            made = {r.sop_instance_uid for r in s.scalars(select(Result))}
        in_archive = {
            i["MainDicomTags"]["SOPInstanceUID"]
            for ds in sources.values()
            for i in archive.study_instances(ds.StudyInstanceUID)
        } - set(uids)
        # The same objects, under the UIDs they were first sent with: no second version.
        assert in_archive == made and before <= made
        assert len(made) == sum(1 + 2 * expected(n).assessable for n in names)  # SR, SC, map
        # Orthanc records one NewInstance change per instance it stored: none twice.
        changes = archive.get("/changes?limit=10000")["Changes"]
        new = [c["ID"] for c in changes if c["ChangeType"] == "NewInstance"]
        assert len(new) == len(set(new)) == len(in_archive) + len(uids)
    finally:
        store.dispose()
