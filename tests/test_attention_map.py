"""The attention map (fractional Segmentation): dciodvfy-clean, read back by highdicom with the
CAM's values, deterministic, chosen by ``[report] objects``."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from tests.dicom_files import PHI_ID, PHI_NAME
from tests.peers import REPO, run_cli, write_config
from tests.test_report import COLUMNS, ROWS, assessment, dciodvfy, save, source
from triage_node import identity
from triage_node.config import ConfigError, load_settings
from triage_node.report.attention_map import (
    MAP_SERIES_DESCRIPTION,
    MAX_FRACTIONAL_VALUE,
    build_attention_map,
)
from triage_node.report.results import SourceImage, build_study_results
from triage_node.report.sr import build_study_report
from triage_node.report.uids import algorithm_device_uid, attention_map_uids
from triage_node.store.models import ResultKind

SAMPLES = REPO / "samples"


def hd_sr_device_uid() -> str:
    """The Device UID in the algorithm's Contributing Equipment item of an SR for the same model."""
    sr = build_study_report([source()], [assessment()], report_version=1)
    (item,) = [
        e
        for e in sr.ContributingEquipmentSequence
        if e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    ]
    return str(item.DeviceUID)


def cams(seed: int = 0, rows: int = ROWS, columns: int = COLUMNS) -> dict[str, np.ndarray]:
    """Two CAMs as the model pastes them: nonzero inside each femur box only, peak 1."""
    rng = np.random.default_rng(seed)
    left, right = np.zeros((rows, columns)), np.zeros((rows, columns))
    right[20:80, 8:52] = rng.random((60, 44)) * 0.6
    left[20:80, 72:120] = rng.random((60, 48))
    left[50, 100] = 1.0
    return {"left": left, "right": right}


def attention_of(ds: pydicom.Dataset, source_uid: str) -> np.ndarray:
    """The map's values for ``source_uid`` as a reader gets them: highdicom, rescaled to 0-1."""
    seg = hd.seg.Segmentation.from_dataset(ds)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[1], rescale_fractional=True
    )
    return np.asarray(pixels[0, :, :, 0], dtype=np.float64)


def test_map_of_a_radiograph_is_valid_and_reads_back_as_the_models_attention(
    tmp_path: Path,
) -> None:
    src = source()
    maps = cams()
    seg = build_attention_map(src, assessment(0.73, 0.21), maps, report_version=1)
    path = save(seg, tmp_path / "map.dcm")
    dciodvfy(path)

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == SegmentationStorage
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.SegmentationType == "FRACTIONAL" and back.SegmentationFractionalType
    assert back.MaximumFractionalValue == MAX_FRACTIONAL_VALUE
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (ROWS, COLUMNS, 1)
    # the values: both sides in one map, within half a quantisation step of the CAMs
    got = attention_of(back, src.SOPInstanceUID)
    want = np.maximum(maps["left"], maps["right"])
    assert np.abs(got - want).max() <= 0.5 / MAX_FRACTIONAL_VALUE + 1e-9
    assert got[50, 100] == 1.0 and got[0, 0] == 0.0
    # what the segment is, in words and codes a viewer shows
    segment = back.SegmentSequence[0]
    assert segment.SegmentLabel == "model attention"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "130403"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("dtc-demo", "0.1.0")
    assert "not a probability" in back.ContentDescription
    assert identity.TRIAGE_DISCLAIMER in back.ImageComments
    assert identity.SYNTHETIC_DISCLAIMER in back.ImageComments
    assert "scaled per image" in back.ImageComments
    # referencing the radiograph, in its study, in a series of ours
    derivation = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert derivation.SourceImageSequence[0].SpatialLocationsPreserved == "YES"
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert str(back.PatientName) == PHI_NAME and back.PatientID == PHI_ID
    assert back.SeriesInstanceUID != src.SeriesInstanceUID
    assert back.SeriesDescription == MAP_SERIES_DESCRIPTION
    assert identity.carries_our_signature(
        back.Manufacturer, back.ManufacturerModelName, back.SeriesDescription
    )
    # AIR identity: the algorithm as contributing equipment with a per-model Device UID
    (ours,) = [
        e
        for e in back.ContributingEquipmentSequence
        if e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    ]
    assert ours.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
    assert ours.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert ours.Manufacturer == identity.MANUFACTURER
    assert ours.DeviceUID == algorithm_device_uid("dtc-demo", "0.1.0")
    assert algorithm_device_uid("dtc-demo", "0.1.0") == algorithm_device_uid("dtc-demo", "0.1.0")
    assert algorithm_device_uid("dtc-demo", "0.2.0") != ours.DeviceUID
    # ... the same item, Device UID included, as the SR's and the heatmap's
    assert hd_sr_device_uid() == ours.DeviceUID


@pytest.mark.parametrize(
    "name",
    [
        "03_osteoporotic_cr_rle_mono1",  # CR: no Frame of Reference at all
        "01_osteoporotic_jpegls",  # DX with a Frame of Reference UID but no position
    ],
)
def test_maps_of_the_sample_cr_and_dx_are_valid(tmp_path: Path, name: str) -> None:
    src = pydicom.dcmread(SAMPLES / f"{name}.dcm", stop_before_pixels=True)
    rows, columns = int(src.Rows), int(src.Columns)
    a = assessment(0.62, 0.52)
    maps = {
        side: np.pad(m, ((0, rows - ROWS), (0, columns - COLUMNS)))
        for side, m in cams(rows=ROWS, columns=COLUMNS).items()
    }
    path = save(build_attention_map(src, a, maps, report_version=1), tmp_path / "map.dcm")
    dciodvfy(path)
    back = pydicom.dcmread(path)
    assert list(back.PatientOrientation) == list(src.PatientOrientation)
    got = attention_of(back, src.SOPInstanceUID)
    assert np.abs(got - np.maximum(maps["left"], maps["right"])).max() <= 0.5 / 255 + 1e-9


def test_a_not_assessable_side_is_left_out_of_the_map() -> None:
    src = source()
    maps = cams()
    seg = build_attention_map(src, assessment(0.73, "prosthesis"), maps, report_version=1)
    got = attention_of(seg, src.SOPInstanceUID)
    assert got[20:80, 8:52].max() == 0.0  # the right hip (not assessable) is not in it
    assert np.abs(got - maps["left"]).max() <= 0.5 / 255 + 1e-9


def test_same_inputs_same_bytes_new_report_version_new_instance_same_series() -> None:
    src = source()

    def encoded(version: int) -> tuple[bytes, pydicom.Dataset]:
        seg = build_attention_map(src, assessment(), cams(), report_version=version)
        buffer = DicomBytesIO()
        seg.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue(), seg

    first, seg = encoded(1)
    again, _ = encoded(1)
    assert first == again
    uids = attention_map_uids(src.StudyInstanceUID, src.SOPInstanceUID, "0.1.0", 1)
    assert (seg.SOPInstanceUID, seg.SeriesInstanceUID) == (
        uids.sop_instance_uid,
        uids.series_instance_uid,
    )
    _, v2 = encoded(2)
    assert v2.SOPInstanceUID != seg.SOPInstanceUID
    assert v2.SeriesInstanceUID == seg.SeriesInstanceUID


@pytest.mark.parametrize(
    ("maps", "match"),
    [
        (None, r"cams: None"),
        ({}, r"cams: no class-activation map of an assessed side"),
        ({"left": np.zeros((3, 3))}, r"cams\['left'\]: shape \(3, 3\)"),
        ({"middle": np.zeros((ROWS, COLUMNS))}, r"cams: side 'middle'"),
        ({"left": np.full((ROWS, COLUMNS), np.nan)}, r"cams\['left'\]: values must be finite"),
    ],
)
def test_bad_cams_are_refused_naming_the_argument(maps: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_attention_map(source(), assessment(), maps, report_version=1)  # type: ignore[arg-type]


def test_a_multi_frame_source_is_refused() -> None:
    src = source()
    src.NumberOfFrames = 2
    with pytest.raises(ValueError, match="source: 2 frames"):
        build_attention_map(src, assessment(), cams(), report_version=1)


# --- which objects a study gets -------------------------------------------------------------


def study_sources() -> list[SourceImage]:
    a, b, c = source(0), source(1), source(2)
    return [
        SourceImage(a, assessment(0.73, 0.21), cams(0), True, 1),
        SourceImage(b, assessment(0.2, 0.3), None, True, 2),  # a model with no CAM
        SourceImage(c, assessment("femur not found", "femur not found"), None, False, 3),
    ]


@pytest.mark.parametrize(
    ("objects", "kinds"),
    [
        ((ResultKind.SR, ResultKind.SC, ResultKind.MAP), ["SR", "SC", "SC", "MAP"]),
        ((ResultKind.SR,), ["SR"]),
        ((ResultKind.SR, ResultKind.MAP), ["SR", "MAP"]),
    ],
)
def test_only_the_chosen_objects_are_built(
    objects: tuple[ResultKind, ...], kinds: list[str]
) -> None:
    built = build_study_results(
        study_sources(), report_version=1, content_datetime=None, objects=objects
    )
    assert [b.kind for b in built] == kinds
    for b in built:
        if b.kind == ResultKind.MAP:
            assert b.source_instance_id == 1 and b.dataset.SOPClassUID == SegmentationStorage


def test_a_study_without_the_sr_is_refused() -> None:
    with pytest.raises(ValueError, match="objects: expected the SR"):
        build_study_results(
            study_sources(), report_version=1, content_datetime=None, objects=(ResultKind.SC,)
        )


def test_report_objects_default_to_all_three_and_bad_values_name_key_and_file(
    tmp_path: Path,
) -> None:
    assert load_settings(None, environ={}).report.objects == ["sr", "sc", "map"]
    good = write_config(tmp_path / "good.toml", {"report": {"objects": ["sr", "map"]}})
    assert load_settings(good, environ={}).report.objects == ["sr", "map"]
    for bad, words in (
        (["sr", "png"], "'sr', 'sc' or 'map'"),
        (["sc", "map"], 'must include "sr"'),
        (["sr", "sr"], "each object may be named once"),
    ):
        path = write_config(tmp_path / "bad.toml", {"report": {"objects": bad}})
        with pytest.raises(ConfigError) as err:
            load_settings(path, environ={})
        assert str(path) in str(err.value) and "report.objects" in str(err.value)
        assert words in str(err.value)


def test_a_bad_report_objects_stops_the_command_with_exit_2(tmp_path: Path) -> None:
    path = write_config(tmp_path / "node.toml", {"report": {"objects": ["sr", "png"]}})
    proc = run_cli("status", config=path, check=False)
    assert proc.returncode == 2
    assert "report.objects" in proc.stderr and str(path) in proc.stderr
