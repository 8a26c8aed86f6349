"""Results into a real Orthanc (deploy/orthanc config): same study, once, also after a resend;
only the objects ``[report] objects`` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.uid import SegmentationStorage

from tests.dicom_files import make_radiograph
from tests.test_attention_map import cams
from tests.test_orthanc import OrthancPeer, orthanc  # noqa: F401  (the module's Orthanc)
from tests.test_report import COLUMNS, ROWS
from tests.test_results import add_source, later, node_settings, opened, rows, run_jobs
from triage_node.config import ReportSection, Settings
from triage_node.report.results import cam_path_for, save_cams
from triage_node.store.models import Delivery, Result, Study
from triage_node.work.resend import resend
from triage_node.work.study import settle_studies


def study_instances(peer: OrthancPeer, study_uid: str) -> list[str]:
    found = peer.post("/tools/lookup", study_uid.encode(), "text/plain")
    assert [f["Type"] for f in found] == ["Study"], found
    return sorted(
        i["MainDicomTags"]["SOPInstanceUID"]
        for i in peer.get(f"/studies/{found[0]['ID']}/instances")
    )


def orthanc_settings(
    tmp_path: Path,
    orthanc: OrthancPeer,  # noqa: F811
    **report: Any,
) -> Settings:
    settings = node_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'triage.db'}",
        [
            {
                "name": "orthanc",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            }
        ],
    )
    settings.node.ae_title = orthanc.node_aet  # the AE title Orthanc accepts stores from
    if report:
        settings.report = ReportSection.model_validate(report)
    return settings


def scored_sources(
    orthanc: OrthancPeer,  # noqa: F811
    settings: Settings,
    store: Any,
    study_uid: str,
) -> list[pydicom.Dataset]:
    """Two radiographs in Orthanc, recorded as scored with CAMs (as the score job leaves them)."""
    sources = [
        make_radiograph("HIP", rows=ROWS, columns=COLUMNS, study_uid=study_uid, seed=seed)
        for seed in (31, 32)
    ]
    for seed, ds in enumerate(sources):
        orthanc.upload(ds)
        add_source(store, settings, study_uid, 0, dataset=ds)
        spooled = settings.spool_dir / study_uid / f"{ds.SOPInstanceUID}.dcm"
        save_cams(cam_path_for(spooled), cams(seed), fsync=False)
    return sources


def test_sr_heatmaps_and_maps_land_in_the_source_study_once(
    tmp_path: Path,
    orthanc: OrthancPeer,  # noqa: F811
) -> None:
    study_uid = pydicom.uid.generate_uid()
    settings = orthanc_settings(tmp_path, orthanc)
    with opened(settings) as store:
        sources = scored_sources(orthanc, settings, store, study_uid)
        settle_studies(settings, store, now=later(settings))
        assert run_jobs(settings, store) == 2  # report, deliver
        results = rows(store, Result)
        assert [r.kind for r in results] == ["SR", "SC", "SC", "MAP", "MAP"]
        assert {d.state for d in rows(store, Delivery)} == {"delivered"}

        expected = sorted(
            [*(ds.SOPInstanceUID for ds in sources), *(r.sop_instance_uid for r in results)]
        )
        assert study_instances(orthanc, study_uid) == expected
        sr = orthanc.post("/tools/lookup", results[0].sop_instance_uid.encode(), "text/plain")
        series = orthanc.get(f"/instances/{sr[0]['ID']}/series")
        assert series["MainDicomTags"]["SeriesDescription"].startswith("AI triage")
        # Orthanc stores the attention maps as Segmentations, pixel data and all
        for r in results[3:]:
            (found,) = orthanc.post("/tools/lookup", r.sop_instance_uid.encode(), "text/plain")
            tags = orthanc.get(f"/instances/{found['ID']}/tags?simplify")
            assert (tags["SOPClassUID"], tags["Modality"]) == (SegmentationStorage, "SEG")
            assert tags["SeriesDescription"].startswith("AI triage: osteoporosis attention map")
            stored = pydicom.dcmread(
                DicomBytesIO(orthanc.get_bytes(f"/instances/{found['ID']}/file"))
            )
            sent = pydicom.dcmread(settings.spool_dir / r.path)
            assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
            assert stored.PixelData == sent.PixelData
            assert np.array_equal(stored.pixel_array, sent.pixel_array)

        # an admin resend: the same objects again, Orthanc still holds each once
        with store.write() as session:
            assert "requeued" in resend(settings, session, [study_uid])[0]
        assert run_jobs(settings, store) == 1
        assert study_instances(orthanc, study_uid) == expected
        with store.read() as session:
            assert session.query(Study).one().delivery_state == "delivered"


def test_report_objects_sr_only_sends_only_the_sr(
    tmp_path: Path,
    orthanc: OrthancPeer,  # noqa: F811
) -> None:
    study_uid = pydicom.uid.generate_uid()
    settings = orthanc_settings(tmp_path, orthanc, objects=["sr"])
    with opened(settings) as store:
        sources = scored_sources(orthanc, settings, store, study_uid)
        settle_studies(settings, store, now=later(settings))
        assert run_jobs(settings, store) == 2  # report, deliver
        (sr,) = rows(store, Result)
        assert sr.kind == "SR"
        assert study_instances(orthanc, study_uid) == sorted(
            [*(ds.SOPInstanceUID for ds in sources), sr.sop_instance_uid]
        )
        built = settings.spool_dir / study_uid / "results" / "v1"
        assert [p.name for p in built.iterdir()] == [f"{sr.sop_instance_uid}.dcm"]  # nor built
