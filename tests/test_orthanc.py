"""deploy/orthanc against the real Orthanc: hip radiographs routed to the node, results not."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from tests.dicom_files import make_radiograph as _make_radiograph
from tests.peers import (
    REPO,
    OrthancServer,
    free_port,
    need_tool,
    start_process,
    stop_process,
    wait_listening,
)
from tests.test_deliver import settings
from tests.test_report import COLUMNS, ROWS, assessment
from triage_node.config import DestinationSection
from triage_node.deliver.scu import DestinationUnavailable, send_objects
from triage_node.report.sr import build_study_report

DEPLOY = REPO / "deploy" / "orthanc"


def make_radiograph(body_part: str, **kwargs: Any) -> pydicom.Dataset:
    """A source radiograph of the size the test assessments' ROIs fit in."""
    return _make_radiograph(body_part, rows=ROWS, columns=COLUMNS, **kwargs)


class OrthancPeer(OrthancServer):
    """Orthanc with deploy/orthanc's config; the node is played by dcmtk storescp."""

    node_dir: Path

    def upload(self, ds: pydicom.Dataset) -> str:
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return self.upload_bytes(buffer.getvalue())

    def routed(self) -> set[str]:
        """SOP Instance UIDs that reached the stand-in node so far."""
        return {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in self.node_dir.iterdir()
            if p.is_file()
        }

    def wait_routed(self, sop_instance_uid: str, timeout: float = 30) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.routed()
            if sop_instance_uid in got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{sop_instance_uid} was not routed to the node")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    """Orthanc with deploy/orthanc's config (paths and ports templated), and the node
    played by dcmtk storescp with the AE title and host of the config's modality entry."""
    root = tmp_path_factory.mktemp("orthanc")
    node_port = free_port()
    peer = OrthancPeer(root, node_port)
    peer.node_dir = root / "node-in"
    peer.node_dir.mkdir()
    node_proc = start_process(
        [need_tool("storescp"), "-aet", peer.node_aet, "-od", str(peer.node_dir), str(node_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(node_port, node_proc)
        peer.start()
        yield peer
    finally:
        peer.stop()
        stop_process(node_proc)


def test_hip_radiographs_are_routed_and_other_things_are_not(orthanc: OrthancPeer) -> None:
    hip = make_radiograph("HIP", modality="DX", seed=1)
    orthanc.upload(hip)
    orthanc.wait_routed(hip.SOPInstanceUID)

    chest = make_radiograph("CHEST", modality="DX", seed=2)
    ct_like_hip = make_radiograph("HIP", modality="DX", seed=3)
    ct_like_hip.Modality = "CT"
    own_sr = build_study_report([hip], [assessment()], report_version=1)
    # our signature on a DX (a misconfigured modality, or a re-imported capture)
    signed = make_radiograph("PELVIS", modality="DX", seed=4)
    signed.SeriesDescription = "AI triage: osteoporosis heatmap (not for diagnosis)"
    for ds in (chest, ct_like_hip, own_sr, signed):
        orthanc.upload(ds)
    # Lua handles stored instances in order: once this one is routed, the others
    # above would have been too, had the script routed them.
    pelvis = make_radiograph("PELVIS", modality="CR", seed=5)
    pelvis.BodyPartExamined = "Pelvis"  # case does not matter to the script
    orthanc.upload(pelvis)
    routed = orthanc.wait_routed(pelvis.SOPInstanceUID)
    assert routed == {hip.SOPInstanceUID, pelvis.SOPInstanceUID}


def test_node_results_are_accepted_into_the_study_and_not_routed_back(orthanc: OrthancPeer) -> None:
    hip = make_radiograph("HIP", modality="DX", seed=11)
    orthanc.upload(hip)
    orthanc.wait_routed(hip.SOPInstanceUID)
    sr = build_study_report([hip], [assessment()], report_version=1)
    archive = DestinationSection(
        name="orthanc", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )
    node_settings = settings()
    assert node_settings.node.ae_title == orthanc.node_aet  # the AE Orthanc knows
    outcomes = send_objects(archive, [sr], settings=node_settings)
    assert [(o.sop_instance_uid, o.status) for o in outcomes] == [(sr.SOPInstanceUID, 0)]

    found = orthanc.post("/tools/lookup", sr.SOPInstanceUID.encode(), "text/plain")
    assert [f["Type"] for f in found] == ["Instance"]
    study = orthanc.get(f"/instances/{found[0]['ID']}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == hip.StudyInstanceUID
    hip_study = orthanc.get(f"/studies/{study['ID']}/instances")
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in hip_study} == {
        hip.SOPInstanceUID,
        sr.SOPInstanceUID,
    }

    sentinel = make_radiograph("HIP", modality="DX", seed=12)
    orthanc.upload(sentinel)
    assert sr.SOPInstanceUID not in orthanc.wait_routed(sentinel.SOPInstanceUID)


def test_unknown_calling_ae_may_not_store(orthanc: OrthancPeer) -> None:
    sr = build_study_report([make_radiograph("HIP", seed=21)], [assessment()], report_version=1)
    archive = DestinationSection(
        name="orthanc", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )
    stranger = settings()
    stranger.node.ae_title = "STRANGER"
    # DicomAlwaysAllowStore false: Orthanc rejects the association of an unknown AE
    with pytest.raises(DestinationUnavailable, match="association"):
        send_objects(archive, [sr], settings=stranger)
