"""C-STORE SCU against a real dcmtk storescp on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from tests.dicom_files import make_radiograph
from tests.peers import free_port
from tests.test_report import assessment, source
from triage_node.config import DestinationSection, Settings
from triage_node.deliver.scu import (
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    DestinationUnavailable,
    presentation_contexts,
    send_objects,
)
from triage_node.report.heatmap import build_heatmap
from triage_node.report.sr import build_study_report


def dcmtk_tool(name: str) -> str:
    """The dcmtk binary ``name`` (pyenv shims may put pynetdicom's app of that name first)."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(name, path=directory)
        if not found:
            continue
        proc = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
        if "dcmtk" in (proc.stdout + proc.stderr).lower():
            return found
    pytest.fail(f"dcmtk {name} is not installed; .ci/run installs dcmtk (apt-get)")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"peer exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


@contextmanager
def storescp(out_dir: Path, *extra: str, ae_title: str = "NODE") -> Iterator[int]:
    """dcmtk storescp on a free loopback port, writing what it receives to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([dcmtk_tool("storescp"), "-aet", ae_title, "-od", str(out_dir),
                             *extra, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def settings(**receive: float) -> Settings:
    return Settings.model_validate({"node": {"ae_title": "TRIAGE"},
                                    "receive": {"acse_timeout": 30, "dimse_timeout": 30,
                                                "network_timeout": 30, **receive}})


def destination(port: int, ae_title: str = "NODE") -> DestinationSection:
    return DestinationSection(name="archive", ae_title=ae_title, host="127.0.0.1", port=port)


def results() -> list[pydicom.Dataset]:
    sr = build_study_report([source()], [assessment()], report_version=1)
    sc = build_heatmap(source(), assessment(), None, report_version=1)
    return [sr, sc]


def test_objects_and_files_arrive_over_one_association(tmp_path: Path) -> None:
    sr, sc = results()
    sc_path = tmp_path / "sc.dcm"
    sc.save_as(sc_path, enforce_file_format=True)
    with storescp(tmp_path / "in") as port:
        outcomes = send_objects(destination(port), [sr, sc_path], settings=settings())
    assert [o.sop_instance_uid for o in outcomes] == [sr.SOPInstanceUID, sc.SOPInstanceUID]
    assert all(o.status == 0 and o.stored for o in outcomes)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "in").iterdir()}
    assert received == {sr.SOPInstanceUID, sc.SOPInstanceUID}


def test_an_object_no_context_can_carry_fails_alone(tmp_path: Path) -> None:
    sr, _ = results()
    compressed = make_radiograph()
    compressed.compress(RLELossless)  # storescp accepts uncompressed syntaxes only by default
    with storescp(tmp_path / "in") as port:
        outcomes = send_objects(destination(port), [compressed, sr], settings=settings())
    assert outcomes[0].status == STATUS_SOP_CLASS_NOT_SUPPORTED and not outcomes[0].stored
    assert outcomes[1].status == 0
    assert len(list((tmp_path / "in").iterdir())) == 1


def test_refused_association_is_retryable(tmp_path: Path) -> None:
    sr, _ = results()
    with storescp(tmp_path / "in", "--refuse") as port:
        with pytest.raises(DestinationUnavailable, match="association") as info:
            send_objects(destination(port), [sr], settings=settings())
    assert info.value.retryable and info.value.results == []
    assert "archive" in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


def test_nobody_listening_is_retryable() -> None:
    sr, _ = results()
    with pytest.raises(DestinationUnavailable, match="no association"):
        send_objects(destination(free_port()), [sr], settings=settings())


def test_contexts_offer_what_each_object_can_be_sent_in() -> None:
    sr_class, sc_class = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
    contexts = presentation_contexts([(sr_class, "1.2.840.10008.1.2.1"),
                                      (sc_class, "1.2.840.10008.1.2"),
                                      (sc_class, str(RLELossless))])
    offered = {(c.abstract_syntax, tuple(c.transfer_syntax)) for c in contexts}
    assert offered == {
        (sr_class, ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")),
        (sc_class, ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")),
        (sc_class, (str(RLELossless),)),
    }


def test_bad_input_is_refused_before_connecting() -> None:
    with pytest.raises(TypeError, match="datasets_or_paths"):
        send_objects(destination(1), "x.dcm", settings=settings())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"datasets_or_paths\[0\]"):
        send_objects(destination(1), [pydicom.Dataset()], settings=settings())
