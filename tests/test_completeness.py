"""Completeness by asking the archive: a real node asks a real Orthanc (C-FIND, IMAGE level).

Orthanc runs without its router: each test decides when an instance Orthanc holds
reaches the node (Orthanc's REST ``/modalities/triage-node/store``), so "the
second image is still in flight" is a state the test holds, not a race. The
archive-path tests use a settle time of 600 s: if they finish, the report did
not wait for the timer.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from sqlalchemy import select

from tests.peers import (
    REPO,
    NodeProcess,
    OrthancServer,
    base_config,
    free_port,
    run_cli,
    storescu,
    wait_for,
    write_config,
)
from triage_node.config import load_settings
from triage_node.store import Store
from triage_node.store.models import Event, Instance, InstanceState, Job, JobKind

SAMPLES = REPO / "samples"
FIRST = SAMPLES / "01_osteoporotic_jpegls.dcm"
SECOND = SAMPLES / "02_normal_mono1.dcm"
#: Long enough that a test passing on the archive path cannot have used the timer.
NEVER = 600


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def two_image_study() -> tuple[bytes, bytes, str]:
    """The two hip samples made into one study (the second joins the first's study)."""
    first = pydicom.dcmread(FIRST)
    second = pydicom.dcmread(SECOND)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate"):
        if keyword in first:
            setattr(second, keyword, first.data_element(keyword).value)
    second.SeriesInstanceUID = generate_uid()
    second.SOPInstanceUID = generate_uid()
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID
    return _bytes(first), _bytes(second), str(first.StudyInstanceUID)


class Site:
    """A node whose query peer (and destination) is a real Orthanc."""

    def __init__(self, tmp_path: Path, settle_seconds: float, query_port: int | None = None):
        node_port = free_port()
        self.archive = OrthancServer(tmp_path / "orthanc", node_port, router=False)
        self.metrics_port = free_port()
        cfg = base_config(
            tmp_path / "data",
            node_port,
            node={"ae_title": self.archive.node_aet, "settle_seconds": settle_seconds},
            peers=[
                {"ae_title": self.archive.aet, "host": "127.0.0.1"},
                {"ae_title": "STORESCU", "host": "127.0.0.1"},
            ],
            destinations=[
                {
                    "name": "orthanc",
                    "ae_title": self.archive.aet,
                    "host": "127.0.0.1",
                    "port": query_port or self.archive.dicom_port,
                }
            ],
            completeness={"query_peer": "orthanc", "timeout_seconds": 5, "recheck_seconds": 1},
            deliver={"retry_base_seconds": 0.5, "retry_max_seconds": 2, "connection_timeout": 2},
            metrics={"port": self.metrics_port},
        )
        self.config = write_config(tmp_path / "node.toml", cfg)
        self.node = NodeProcess(self.config, tmp_path / "node.log")
        self.store: Store | None = None

    def start(self) -> Site:
        self.archive.start()
        self.node.start()
        self.store = Store(load_settings(self.config).database_url)
        return self

    def stop(self) -> None:
        self.node.kill()
        self.archive.stop()
        if self.store is not None:
            self.store.dispose()

    def route(self, orthanc_id: str) -> None:
        """Orthanc sends one instance it holds to the node (C-STORE), now."""
        self.archive.post(
            "/modalities/triage-node/store",
            json.dumps({"Resources": [orthanc_id], "Synchronous": True}).encode(),
            "application/json",
        )

    def events(self, study_uid: str, kind: str) -> list[tuple[str | None, dict[str, Any]]]:
        """(message, data) of the study's events of ``kind``, oldest first."""
        assert self.store is not None
        with self.store.read() as s:
            return [
                (e.message, e.data or {})
                for e in s.scalars(
                    select(Event)
                    .where(Event.study_instance_uid == study_uid, Event.kind == kind)
                    .order_by(Event.id)
                ).all()
            ]

    def report_jobs(self) -> list[int]:
        assert self.store is not None
        with self.store.read() as s:
            return list(s.scalars(select(Job.id).where(Job.kind == JobKind.REPORT)).all())

    def instance_states(self) -> dict[str, InstanceState]:
        assert self.store is not None
        with self.store.read() as s:
            return {i.sop_instance_uid: i.state for i in s.scalars(select(Instance)).all()}

    def report_in_archive(self, study_uid: str) -> bool:
        return any(
            i["MainDicomTags"].get("SOPInstanceUID")
            and self.archive.get(f"/instances/{i['ID']}/tags?simplify").get("Modality") == "SR"
            for i in self.archive.study_instances(study_uid)
        )

    def metric(self, line_start: str) -> float | None:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as rsp:
            for line in rsp.read().decode().splitlines():
                if line.startswith(line_start):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def logs(self) -> tuple[Any, ...]:
        return (self.node, self.archive)


@pytest.fixture
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    s = Site(tmp_path, **getattr(request, "param", {"settle_seconds": NEVER}))
    try:
        yield s.start()
    finally:
        s.stop()


def settled(site: Site, study_uid: str) -> list[dict[str, Any]]:
    return [data for _, data in site.events(study_uid, "study_settled")]


def test_one_image_study_is_reported_when_the_archive_lists_nothing_more(site: Site) -> None:
    ds = pydicom.dcmread(FIRST, stop_before_pixels=True)
    site.route(site.archive.upload_bytes(FIRST.read_bytes()))
    wait_for(
        lambda: settled(site, ds.StudyInstanceUID),
        "a report queued without the 600 s settle time",
        300,
        *site.logs(),
    )
    (data,) = settled(site, ds.StudyInstanceUID)
    assert data["path"] == "archive" and data["report_version"] == 1
    assert data["new_instances"] == 1
    wait_for(
        lambda: site.report_in_archive(ds.StudyInstanceUID),
        "the SR in Orthanc",
        300,
        *site.logs(),
    )
    assert site.metric('triage_completeness_total{path="archive"}') == 1
    assert site.metric('triage_completeness_total{path="timer"}') == 0
    assert site.events(ds.StudyInstanceUID, "completeness_query_failed") == []


def test_second_image_in_flight_holds_the_report_until_the_node_has_it(site: Site) -> None:
    first, second, study_uid = two_image_study()
    first_uid = pydicom.dcmread(DicomBytesIO(first), stop_before_pixels=True).SOPInstanceUID
    second_uid = pydicom.dcmread(DicomBytesIO(second), stop_before_pixels=True).SOPInstanceUID
    first_id = site.archive.upload_bytes(first)
    second_id = site.archive.upload_bytes(second)  # in the archive, not yet at the node

    site.route(first_id)
    # The node scored the first image and asked the archive, which lists the second.
    wait_for(
        lambda: (
            site.instance_states().get(first_uid) == InstanceState.SCORED
            and any(
                second_uid in data.get("missing", [])
                for _, data in site.events(study_uid, "completeness_waiting")
            )
        ),
        "the first image scored and the archive's answer naming the second as missing",
        300,
        *site.logs(),
    )
    # Answers after scoring finished (asked again every recheck_seconds) still wait.
    waits = site.metric('triage_completeness_queries_total{outcome="waiting"}') or 0
    wait_for(
        lambda: (site.metric('triage_completeness_queries_total{outcome="waiting"}') or 0) > waits,
        "another answer naming the second image as missing",
        60,
        *site.logs(),
    )
    # the same answer again is not another event
    assert len(site.events(study_uid, "completeness_waiting")) == 1
    assert settled(site, study_uid) == []
    assert site.report_jobs() == []

    site.route(second_id)
    wait_for(lambda: settled(site, study_uid), "a report queued", 300, *site.logs())
    (data,) = settled(site, study_uid)
    assert data == {"report_version": 1, "new_instances": 2, "path": "archive"}
    states = site.instance_states()
    assert states[first_uid] == InstanceState.SCORED and states[second_uid] == InstanceState.SCORED


def test_late_instance_after_the_report_gives_a_new_version_by_the_archive(site: Site) -> None:
    first, second, study_uid = two_image_study()
    site.route(site.archive.upload_bytes(first))
    wait_for(
        lambda: site.report_in_archive(study_uid), "report version 1 in Orthanc", 300, *site.logs()
    )
    # Our own SR and heatmaps are in the study in Orthanc now: they are not eligible, so
    # they do not hold up the next version.
    site.route(site.archive.upload_bytes(second))
    wait_for(
        lambda: len(settled(site, study_uid)) == 2, "report version 2 queued", 300, *site.logs()
    )
    assert [(d["report_version"], d["path"]) for d in settled(site, study_uid)] == [
        (1, "archive"),
        (2, "archive"),
    ]


@pytest.fixture
def silent_archive_site(tmp_path: Path) -> Iterator[Site]:
    # The query peer (and destination) is a port nothing listens on: no answer.
    s = Site(tmp_path, settle_seconds=2, query_port=free_port())
    try:
        yield s.start()
    finally:
        s.stop()


def test_archive_that_does_not_answer_falls_back_to_the_settle_time(
    silent_archive_site: Site,
) -> None:
    site = silent_archive_site
    ds = pydicom.dcmread(SECOND, stop_before_pixels=True)
    result = storescu(site.node.port, SECOND, called=site.archive.node_aet)
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: settled(site, ds.StudyInstanceUID),
        "a report queued after the settle time",
        300,
        *site.logs(),
    )
    (data,) = settled(site, ds.StudyInstanceUID)
    assert data["path"] == "timer"
    ((message, data),) = site.events(ds.StudyInstanceUID, "completeness_query_failed")
    assert message is not None and data == {"path": "timer"}
    assert "query peer 'orthanc'" in message and "cannot connect" in message
    assert site.metric('triage_completeness_total{path="timer"}') == 1
    assert site.metric('triage_completeness_queries_total{outcome="failed"}') == 1


def test_query_peer_that_is_not_a_destination_exits_2_naming_key_and_file(tmp_path: Path) -> None:
    cfg = base_config(
        tmp_path / "data",
        free_port(),
        destinations=[
            {"name": "archive", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
        ],
        completeness={"query_peer": "pacs"},
    )
    path = write_config(tmp_path / "node.toml", cfg)
    proc = run_cli("serve", config=path, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "completeness.query_peer" in proc.stderr and str(path) in proc.stderr
    assert "'pacs' is not the name of a [[destinations]] entry ('archive')" in proc.stderr
