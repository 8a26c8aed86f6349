"""Results into a real Orthanc (deploy/orthanc config): same study, once, also after a resend."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.dicom_files import make_radiograph
from tests.test_orthanc import OrthancPeer, orthanc  # noqa: F401  (the module's Orthanc)
from tests.test_report import COLUMNS, ROWS
from tests.test_results import add_source, later, node_settings, opened, rows, run_jobs
from triage_node.commands.resend import resend
from triage_node.store.models import Delivery, Result, Study
from triage_node.work.study import settle_studies


def study_instances(peer: OrthancPeer, study_uid: str) -> list[str]:
    found = peer.post("/tools/lookup", study_uid.encode(), "text/plain")
    assert [f["Type"] for f in found] == ["Study"], found
    return sorted(
        i["MainDicomTags"]["SOPInstanceUID"]
        for i in peer.get(f"/studies/{found[0]['ID']}/instances")
    )


def test_sr_and_heatmaps_land_in_the_source_study_once(
    tmp_path: Path,
    orthanc: OrthancPeer,  # noqa: F811
) -> None:
    study_uid = pydicom.uid.generate_uid()
    sources = [
        make_radiograph("HIP", rows=ROWS, columns=COLUMNS, study_uid=study_uid, seed=seed)
        for seed in (31, 32)
    ]
    for ds in sources:
        orthanc.upload(ds)
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
    with opened(settings) as store:
        for ds in sources:
            add_source(store, settings, study_uid, 0, dataset=ds)
        settle_studies(settings, store, now=later(settings))
        assert run_jobs(settings, store) == 2  # report, deliver
        results = rows(store, Result)
        assert [r.kind for r in results] == ["SR", "SC", "SC"]
        assert {d.state for d in rows(store, Delivery)} == {"delivered"}

        expected = sorted(
            [*(ds.SOPInstanceUID for ds in sources), *(r.sop_instance_uid for r in results)]
        )
        assert study_instances(orthanc, study_uid) == expected
        sr = orthanc.post("/tools/lookup", results[0].sop_instance_uid.encode(), "text/plain")
        series = orthanc.get(f"/instances/{sr[0]['ID']}/series")
        assert series["MainDicomTags"]["SeriesDescription"].startswith("AI triage")

        # an admin resend: the same objects again, Orthanc still holds each once
        with store.write() as session:
            assert "requeued" in resend(settings, session, [study_uid])[0]
        assert run_jobs(settings, store) == 1
        assert study_instances(orthanc, study_uid) == expected
        with store.read() as session:
            assert session.query(Study).one().delivery_state == "delivered"
