"""C-STORE SCU against a real dcmtk storescp on loopback."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import RLELossless

from tests.dicom_files import make_radiograph
from tests.peers import dcmtk_storescp, free_port
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


def storescp(out_dir: Path, *extra: str, ae_title: str = "NODE") -> AbstractContextManager[int]:
    """dcmtk storescp on a free loopback port, writing what it receives to ``out_dir``."""
    return dcmtk_storescp(*extra, ae_title=ae_title, out_dir=out_dir)


def settings(**receive: float) -> Settings:
    return Settings.model_validate(
        {
            "node": {"ae_title": "TRIAGE"},
            "receive": {"acse_timeout": 30, "dimse_timeout": 30, "network_timeout": 30, **receive},
        }
    )


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
    compressed.compress(RLELossless)
    with storescp(tmp_path / "in", "+x=") as port:  # an archive taking uncompressed only
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
    contexts = presentation_contexts(
        [
            (sr_class, "1.2.840.10008.1.2.1"),
            (sc_class, "1.2.840.10008.1.2"),
            (sc_class, str(RLELossless)),
        ]
    )
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
