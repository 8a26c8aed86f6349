"""SR and heatmap builders: validated by dciodvfy, rendered by dsrdump, deterministic."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.dicom_files import PHI_ID, PHI_NAME, make_radiograph
from tests.peers import need_tool
from triage_node import identity
from triage_node.assessment import ImageAssessment, SideAssessment
from triage_node.report import codes
from triage_node.report.heatmap import (
    MAX_LONG_SIDE,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    build_heatmap,
    render_heatmap,
    windowed_grayscale,
)
from triage_node.report.sr import build_study_report

# dciodvfy warnings we accept; each is explained in docs/dicom-conformance.md.
KNOWN_WARNINGS = (
    "Unrecognized defined term <99TRIAGE> for value 1 of attribute <Coding Scheme Designator>",
    # the test sources have no Study ID; highdicom copies the (empty) Type 2 value
    "Missing attribute or value that would be needed to build DICOMDIR - Study ID",
    # AIR identity: Device UID (0018,1002) is Type 3 in the Contributing Equipment Sequence
    # of the current standard; dciodvfy's tables (2022) predate it
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard "
    "Extended SOP Class",
)

ROWS, COLUMNS = 96, 128
RIGHT_ROI = [(8.0, 20.0), (52.0, 20.0), (52.0, 80.0), (8.0, 80.0)]
LEFT_ROI = [(72.0, 20.0), (120.0, 20.0), (120.0, 80.0), (72.0, 80.0)]


def assessment(
    left: float | str | None = 0.73,
    right: float | str | None = 0.21,
    *,
    synthetic: bool = True,
    threshold: float = 0.5,
    version: str = "0.1.0",
) -> ImageAssessment:
    """A hand-built model result; a string instead of a probability = not assessable."""
    sides = []
    for side, value, roi in (("left", left, LEFT_ROI), ("right", right, RIGHT_ROI)):
        if value is None:
            continue
        if isinstance(value, str):
            sides.append(SideAssessment(side, None, not_assessable_reason=value, roi_polygon=None))
        else:
            sides.append(SideAssessment(side, value, roi_polygon=roi, positive=value >= threshold))
    return ImageAssessment(
        sides=tuple(sides),
        model_name="dtc-demo",
        model_version=version,
        threshold=threshold,
        synthetic_model=synthetic,
    )


def source(
    seed: int = 0, study_uid: str = "1.2.826.0.1.3680043.8.498.1", **kwargs: object
) -> pydicom.Dataset:
    ds = make_radiograph(rows=ROWS, columns=COLUMNS, study_uid=study_uid, seed=seed, **kwargs)  # type: ignore[arg-type]
    # fixed UIDs so that the determinism tests compare like with like
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{seed + 1}"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.100"
    return ds


def dciodvfy(path: Path) -> list[str]:
    """Run dciodvfy; fail on any error or unexplained warning; return the warnings."""
    exe = need_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)
    warnings = [line for line in lines if line.startswith("Warning")]
    unexplained = [w for w in warnings if not any(k in w for k in KNOWN_WARNINGS)]
    assert not unexplained, (
        "new dciodvfy warnings (explain them in docs/dicom-conformance.md):\n"
        + "\n".join(unexplained)
    )
    return warnings


def dsrdump(path: Path) -> str:
    exe = need_tool("dsrdump")
    proc = subprocess.run(
        [exe, "+Pl", "+Pc", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def save(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# --- SR --------------------------------------------------------------------------------


def test_sr_with_both_sides_is_valid_and_shows_probability_and_decision(tmp_path: Path) -> None:
    src = source()
    sr = build_study_report([src], [assessment()], report_version=1)
    path = save(sr, tmp_path / "sr.dcm")
    dciodvfy(path)
    text = dsrdump(path)
    assert 'NUM:(PROB-OSTEOPOROSIS,99TRIAGE,"Probability of osteoporosis")="0.73"' in text
    assert 'NUM:(PROB-OSTEOPOROSIS,99TRIAGE,"Probability of osteoporosis")="0.21"' in text
    assert '(DXA-RECOMMENDED,99TRIAGE,"DXA recommended")' in text
    assert 'Threshold Value")="0.5"' in text
    assert "DXA recommended (decision at operating point 0.50)" in text
    assert identity.TRIAGE_DISCLAIMER in text and identity.SYNTHETIC_DISCLAIMER in text
    assert '(7771000,SCT,"Left")' in text and '(24028007,SCT,"Right")' in text
    assert "Algorithm Version" in text and "SCOORD" in text

    back = pydicom.dcmread(path)
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert str(back.PatientName) == PHI_NAME and back.PatientID == PHI_ID
    assert back.SeriesDescription == identity.SR_SERIES_DESCRIPTION
    assert back.SeriesInstanceUID != src.SeriesInstanceUID
    assert identity.carries_our_signature(
        back.Manufacturer, back.ManufacturerModelName, back.SeriesDescription
    )
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    schemes = [item.CodingSchemeDesignator for item in back.CodingSchemeIdentificationSequence]
    assert codes.PRIVATE_SCHEME_DESIGNATOR in schemes
    # highdicom reads its own output back as a TID 1500 report with 3 groups
    parsed = hd.sr.srread(path)
    groups = parsed.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    assert groups[0].roi is not None


def test_sr_with_one_side_not_assessable(tmp_path: Path) -> None:
    path = save(
        build_study_report([source()], [assessment(right="prosthesis")], report_version=1),
        tmp_path / "sr.dcm",
    )
    dciodvfy(path)
    text = dsrdump(path)
    assert 'Reason not assessable")="prosthesis"' in text
    assert '(NOT-ASSESSABLE,99TRIAGE,"Not assessable")' in text
    assert '="0.73"' in text
    assert "DXA recommended (decision at operating point 0.50)" in text


def test_sr_with_nothing_assessable_says_so(tmp_path: Path) -> None:
    path = save(
        build_study_report(
            [source()], [assessment(left="femur not found", right="cut off")], report_version=1
        ),
        tmp_path / "sr.dcm",
    )
    dciodvfy(path)
    text = dsrdump(path)
    assert "Probability of osteoporosis" not in text
    assert 'CODE:(121075,DCM,"Recommendation")=(NOT-ASSESSABLE,99TRIAGE' in text
    assert "left: femur not found; right: cut off" in text


def test_sr_low_likelihood_study_with_two_images(tmp_path: Path) -> None:
    sources = [source(0), source(1)]
    results = [assessment(0.1, 0.2, synthetic=False), assessment(0.3, None, synthetic=False)]
    path = save(build_study_report(sources, results, report_version=1), tmp_path / "sr.dcm")
    dciodvfy(path)
    text = dsrdump(path)
    assert '(LOW-LIKELIHOOD,99TRIAGE,"Low likelihood' in text
    assert "DXA recommended" not in text.replace("DXA not recommended", "")
    assert identity.SYNTHETIC_DISCLAIMER not in text
    back = pydicom.dcmread(path)
    refs = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {r.ReferencedSOPInstanceUID for r in refs.ReferencedSOPSequence} == {
        s.SOPInstanceUID for s in sources
    }


def test_sr_is_deterministic_and_versioned(tmp_path: Path) -> None:
    a1 = save(
        build_study_report(
            [source(0), source(1)], [assessment(), assessment(0.4, 0.3)], report_version=1
        ),
        tmp_path / "a.dcm",
    )
    # same inputs, built again later: the same bytes (UIDs, dates and all)
    b1 = save(
        build_study_report(
            [source(0), source(1)], [assessment(), assessment(0.4, 0.3)], report_version=1
        ),
        tmp_path / "b.dcm",
    )
    assert a1.read_bytes() == b1.read_bytes()
    first = pydicom.dcmread(a1)
    assert first.ContentDate == "20260101" and first.InstanceCreationDate == "20260101"
    # a late instance: report version 2, a new SOP Instance UID in the same series
    late = build_study_report(
        [source(0), source(1), source(2)],
        [assessment(), assessment(0.4, 0.3), assessment(0.2, 0.1)],
        report_version=2,
    )
    assert late.SOPInstanceUID != first.SOPInstanceUID
    assert late.SeriesInstanceUID == first.SeriesInstanceUID
    assert late.InstanceNumber == 2
    # a new model version: new objects in a new series
    other = build_study_report([source(0)], [assessment(version="0.2.0")], report_version=1)
    assert other.SeriesInstanceUID != first.SeriesInstanceUID
    # an explicit content time is used as given
    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    timed = build_study_report([source(0)], [assessment()], report_version=1, content_datetime=when)
    assert (str(timed.ContentDate), str(timed.ContentTime)) == ("20260102", "030405")


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"sources": [], "assessments": []}, "sources"),
        ({"sources": "x", "assessments": []}, "sources"),
        ({"assessments": [assessment(), assessment()]}, "assessments"),
        ({"assessments": ["not an assessment"]}, "assessments[0]"),
        ({"report_version": 0}, "report_version"),
        ({"report_version": "1"}, "report_version"),
        ({"series_number": -1}, "series_number"),
        ({"content_datetime": "20260101"}, "content_datetime"),
    ],
)
def test_sr_builder_refuses_bad_arguments(kwargs: dict[str, object], argument: str) -> None:
    args: dict[str, object] = {
        "sources": [source()],
        "assessments": [assessment()],
        "report_version": 1,
        **kwargs,
    }
    with pytest.raises((TypeError, ValueError), match=argument.replace("[", r"\[")):
        build_study_report(**args)  # type: ignore[arg-type]


def test_sr_builder_refuses_rois_outside_the_image_and_mixed_studies() -> None:
    bad = ImageAssessment(
        sides=(SideAssessment("left", 0.5, roi_polygon=[(0, 0), (COLUMNS + 5, 0), (0, 10)]),),
        model_name="m",
        model_version="1",
        threshold=0.5,
        synthetic_model=False,
    )
    with pytest.raises(ValueError, match=r"assessments\[0\].sides\[left\].roi_polygon"):
        build_study_report([source()], [bad], report_version=1)
    with pytest.raises(ValueError, match=r"sources\[1\]"):
        build_study_report(
            [source(0), source(1, study_uid="1.2.3.4")],
            [assessment(), assessment()],
            report_version=1,
        )
    with pytest.raises(ValueError, match=r"assessments\[1\]"):
        build_study_report(
            [source(0), source(1)], [assessment(), assessment(version="9")], report_version=1
        )


# --- heatmap ---------------------------------------------------------------------------


def test_heatmap_is_valid_rgb_with_burned_in_annotation(tmp_path: Path) -> None:
    src = source()
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    cams = {
        "left": np.exp(-((xx - 96) ** 2 + (yy - 50) ** 2) / 200.0),
        "right": np.exp(-((xx - 30) ** 2 + (yy - 50) ** 2) / 200.0),
    }
    sc = build_heatmap(src, assessment(), cams, report_version=1)
    path = save(sc, tmp_path / "sc.dcm")
    dciodvfy(path)
    back = pydicom.dcmread(path)
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    assert back.BurnedInAnnotation == "YES"
    assert list(back.PatientOrientation) == ["L", "F"]
    assert back.ImageLaterality == "B"
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesDescription == identity.SC_SERIES_DESCRIPTION
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    # small sources are enlarged so the burned-in text stays legible
    assert max(back.Rows, back.Columns) > max(ROWS, COLUMNS)
    again = save(build_heatmap(src, assessment(), cams, report_version=1), tmp_path / "b.dcm")
    assert path.read_bytes() == again.read_bytes()
    v2 = build_heatmap(src, assessment(), cams, report_version=2)
    assert v2.SOPInstanceUID != back.SOPInstanceUID
    assert v2.SeriesInstanceUID == back.SeriesInstanceUID


def test_heatmap_without_cam_draws_the_roi_outlines_in_decision_colours() -> None:
    src = source()
    pixels = render_heatmap(src, assessment(left=0.9, right=0.1), None)
    scale = pixels.shape[1] / COLUMNS
    # the middle of the top edge of each ROI
    left_edge = pixels[round(20 * scale), round(96 * scale)]
    right_edge = pixels[round(20 * scale), round(30 * scale)]
    assert tuple(left_edge) == POSITIVE_RGB
    assert tuple(right_edge) == NEGATIVE_RGB
    # no colour inside an ROI without a CAM: the radiograph stays gray there
    inside = pixels[round(50 * scale), round(96 * scale)]
    assert inside[0] == inside[1] == inside[2]


def test_heatmap_one_side_not_assessable_and_single_laterality(tmp_path: Path) -> None:
    sc = build_heatmap(source(), assessment(left=0.8, right=None), None, report_version=1)
    assert sc.ImageLaterality == "L" and "Laterality" not in sc
    dciodvfy(save(sc, tmp_path / "one.dcm"))
    both = build_heatmap(
        source(), assessment(left="prosthesis", right="cut off"), None, report_version=1
    )
    dciodvfy(save(both, tmp_path / "none.dcm"))


def test_windowing_follows_the_file() -> None:
    src = source()
    values = src.pixel_array.astype(float)
    plain = windowed_grayscale(src)
    src.WindowCenter, src.WindowWidth = 1000, 200
    windowed = windowed_grayscale(src)
    assert np.all(windowed[values < 899] == 0.0) and np.all(windowed[values > 1100] == 1.0)
    src.PhotometricInterpretation = "MONOCHROME1"
    assert np.allclose(windowed_grayscale(src), 1.0 - windowed)
    assert not np.allclose(plain, windowed)


def test_huge_sources_are_scaled_down() -> None:
    big = make_radiograph(rows=2600, columns=1300)
    roi = [(100.0, 100.0), (600.0, 100.0), (600.0, 900.0)]
    result = ImageAssessment(
        sides=(SideAssessment("left", 0.6, roi_polygon=roi),),
        model_name="m",
        model_version="1",
        threshold=0.5,
        synthetic_model=False,
    )
    pixels = render_heatmap(big, result, None)
    assert pixels.shape[1] == 1024  # 1300 * 2048 / 2600
    assert pixels.shape[0] > MAX_LONG_SIDE  # plus the caption band


def test_heatmap_refuses_bad_cams() -> None:
    with pytest.raises(ValueError, match=r"cams\['left'\]"):
        build_heatmap(source(), assessment(), {"left": np.zeros((3, 3))}, report_version=1)
    with pytest.raises(ValueError, match="cams"):
        build_heatmap(
            source(),
            assessment(left=0.5, right=None),
            {"right": np.zeros((ROWS, COLUMNS))},
            report_version=1,
        )
    with pytest.raises(TypeError, match="source"):
        build_heatmap("not a dataset", assessment(), None, report_version=1)  # type: ignore[arg-type]


def test_the_study_decision_never_contradicts_a_side(tmp_path: Path) -> None:
    # Sample 03's case: the left hip is positive, the bilateral head's value is not.
    result = assessment(0.38, 0.33, threshold=0.37)
    bilateral = ImageAssessment(
        sides=result.sides,
        model_name=result.model_name,
        model_version=result.model_version,
        threshold=0.37,
        synthetic_model=True,
        combined_probability=0.20,
    )
    path = save(build_study_report([source()], [bilateral], report_version=1), tmp_path / "sr.dcm")
    text = dsrdump(path)
    # The study value is the highest side's, and the decision follows the positive side.
    assert 'Probability of osteoporosis")="0.38"' in text
    assert 'Probability of osteoporosis")="0.2"' not in text
    assert "DXA recommended (decision at operating point 0.37)" in text
    assert "DXA not recommended (decision at operating point" not in text
