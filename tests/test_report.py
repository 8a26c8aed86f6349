"""SR and heatmap builders: validated by dciodvfy, rendered by dsrdump, deterministic."""

from __future__ import annotations

import dataclasses
import datetime
import html
import re
import subprocess
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless

from tests.dicom_files import PHI_ID, PHI_NAME, make_radiograph
from tests.peers import need_tool
from triage_node import identity
from triage_node.assessment import ImageAssessment, SideAssessment
from triage_node.config import HeatmapTransferSyntax
from triage_node.report import codes
from triage_node.report.heatmap import (
    MAX_LONG_SIDE,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    TRANSFER_SYNTAXES,
    build_heatmap,
    caption_text,
    render_heatmap,
    windowed_grayscale,
)
from triage_node.report.sr import build_study_report
from triage_node.report.wording import ATTENTION_SCALE_NOTE, study_conclusion
from triage_node.synth import generate_cohort

# dciodvfy warnings we accept; each is explained in docs/dicom-conformance.md.
KNOWN_WARNINGS = (
    "Unrecognized defined term <99TRIAGE> for value 1 of attribute <Coding Scheme Designator>",
    # the AIR Device UID in the Contributing Equipment item: in PS3.3 today, not in
    # the tables of dicom3tools 2022-06 (see docs/dicom-conformance.md)
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a "
    "Standard Extended SOP Class",
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


def content_items(items: Iterable[pydicom.Dataset]) -> Iterator[pydicom.Dataset]:
    """Every content item of an SR content tree, depth first."""
    for item in items:
        yield item
        yield from content_items(item.get("ContentSequence", []))


def concept(item: pydicom.Dataset) -> tuple[str, str]:
    """(code value, scheme) of an item's concept name; values over 16 characters are Long."""
    code = item.ConceptNameCodeSequence[0]
    return (str(code.get("CodeValue") or code.LongCodeValue), str(code.CodingSchemeDesignator))


def measurement_groups(sr: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The Measurement Groups of "Imaging Measurements", where OHIF looks for ROIs."""
    found = [i for i in sr.ContentSequence if concept(i) == ("126010", "DCM")]
    if not found:
        return []
    return [i for i in found[0].ContentSequence if concept(i) == ("125007", "DCM")]


def ohif_labels(sr: pydicom.Dataset) -> list[tuple[str, list[str]]]:
    """What OHIF 3.13 draws for our SR: (referenced SOP Instance UID, text box lines) per ROI.

    OHIF's dicom-sr extension (getSopClassHandlerModule ``_processTID1410Measurement``,
    ``_getLabelFromMeasuredValueSequence``, DICOMSRDisplayTool ``_getTextBoxLinesFromLabels``)
    keys groups by Tracking UID, draws the first SCOORD, and labels it with each NUM as
    "meaning: value.toFixed(2) unit-code-value", then "363698007: <finding site meaning>",
    at most 5 lines. A group without a SCOORD crashes it (``coords[0]`` is undefined), so
    this fails on one.
    """
    drawn = []
    for group in measurement_groups(sr):
        items = list(group.ContentSequence)
        scoords = [i for i in items if i.ValueType == "SCOORD"]
        assert scoords, "a Measurement Group without a SCOORD crashes OHIF"
        assert any(i.ValueType == "UIDREF" for i in items), "OHIF keys groups by Tracking UID"
        image = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
        lines = []
        for num in (i for i in items if i.ValueType == "NUM"):
            value = num.MeasuredValueSequence[0]
            unit = value.MeasurementUnitsCodeSequence[0].CodeValue
            lines.append(
                f"{num.ConceptNameCodeSequence[0].CodeMeaning}: "
                f"{float(value.NumericValue):.2f} {unit}"
            )
        sites = [i for i in items if concept(i) == ("363698007", "SCT")]
        if sites:
            lines.append(f"363698007: {sites[0].ConceptCodeSequence[0].CodeMeaning}")
        drawn.append((str(image.ReferencedSOPInstanceUID), lines[:5]))
    return drawn


def dsr2html_text(path: Path) -> str:
    """dcmtk's dsr2html rendering of an SR with default options, as plain text."""
    exe = need_tool("dsr2html")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", proc.stdout)).split())


def test_sr_with_both_sides_is_valid_and_shows_probability_and_decision(tmp_path: Path) -> None:
    src = source()
    sr = build_study_report([src], [assessment()], report_version=1)
    path = save(sr, tmp_path / "sr.dcm")
    dciodvfy(path)
    text = dsrdump(path)
    left = codes.side_probability("left", True)
    right = codes.side_probability("right", False)
    assert f'NUM:(PROB-LEFT-DXA,99TRIAGE,"{left.meaning}")="73.00" (%,UCUM,"percent")' in text
    assert f'NUM:(PROB-RIGHT-LOW,99TRIAGE,"{right.meaning}")="21.00" (%,UCUM,"percent")' in text
    assert 'CODE:(121075,DCM,"Recommendation")=(DXA-RECOMMENDED,99TRIAGE,"DXA recommended")' in text
    assert (
        'Conclusion")="DXA recommended: probability of osteoporosis 73.00 % in the left hip '
        '(the higher of the 2 assessed hips), at or above the operating point 50.00 %"'
    ) in text
    assert identity.TRIAGE_DISCLAIMER in text and identity.SYNTHETIC_DISCLAIMER in text
    assert '(7771000,SCT,"Left")' in text and '(24028007,SCT,"Right")' in text
    assert "Algorithm Version" in text and "SCOORD" in text
    # every container SEPARATE: generic renderers show each value under its name
    assert "=CONTINUOUS>" not in text and "=SEPARATE>" in text

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
    assert codes.PRIVATE_SCHEME_DESIGNATOR in schemes and codes.IHE_SCHEME_DESIGNATOR in schemes
    # highdicom reads its own output back as a TID 1500 report with one ROI group per hip
    parsed = hd.sr.srread(path)
    groups = parsed.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    assert all(g.roi is not None for g in groups)


def test_sr_as_ohif_draws_it_one_labelled_roi_per_assessed_hip(tmp_path: Path) -> None:
    src = source()
    sr = build_study_report([src], [assessment(0.6234, 0.21)], report_version=1)
    assert ohif_labels(sr) == [
        (
            src.SOPInstanceUID,
            [
                "Right hip (low likelihood), probability of osteoporosis: 21.00 %",
                "363698007: Proximal Femur",
            ],
        ),
        (
            src.SOPInstanceUID,
            [
                "Left hip (DXA recommended), probability of osteoporosis: 62.34 %",
                "363698007: Proximal Femur",
            ],
        ),
    ]
    # A hip that is not assessable has no group at all (OHIF would crash on it); the
    # study decision and everything else lives in "Qualitative Evaluations".
    one = build_study_report([src], [assessment(right="prosthesis")], report_version=1)
    assert [lines[0] for _, lines in ohif_labels(one)] == [
        "Left hip (DXA recommended), probability of osteoporosis: 73.00 %"
    ]
    none = build_study_report(
        [src], [assessment(left="femur not found", right="cut off")], report_version=1
    )
    assert measurement_groups(none) == []
    dciodvfy(save(none, tmp_path / "none.dcm"))


def test_dsr2html_shows_each_probability_under_its_name_with_the_side(tmp_path: Path) -> None:
    sources = [source(0), source(1)]
    results = [
        assessment(0.3785, 0.3305, threshold=0.37),
        assessment(0.12, "prosthesis", threshold=0.37),
    ]
    path = save(build_study_report(sources, results, report_version=1), tmp_path / "sr.dcm")
    text = dsr2html_text(path)
    assert re.search(
        r"Left hip \(DXA recommended\), probability of osteoporosis: 37\.85 %", text
    ), text
    assert re.search(
        r"Right hip \(low likelihood\), probability of osteoporosis: 33\.05 %", text
    ), text
    assert re.search(r"Left hip \(low likelihood\), probability of osteoporosis: 12\.00 %", text)
    assert re.search(r"Tracking Identifier = \"left hip, image 2\"", text)
    assert re.search(
        r"Conclusion: DXA recommended: probability of osteoporosis 37\.85 % in the left hip of "
        r"image 1 \(the highest of the 3 assessed hips\), at or above the operating point "
        r"37\.00 %",
        text,
    ), text
    assert "Reason not assessable: image 2: right hip: prosthesis" in text
    assert "Comment: image 2: only the left hip was assessable" in text
    assert "Usage disclaimer: AI triage, not for diagnosis" in text


def test_sr_with_one_side_not_assessable(tmp_path: Path) -> None:
    path = save(
        build_study_report([source()], [assessment(right="prosthesis")], report_version=1),
        tmp_path / "sr.dcm",
    )
    dciodvfy(path)
    text = dsrdump(path)
    assert 'Reason not assessable")="right hip: prosthesis"' in text
    assert 'Comment")="only the left hip was assessable; the result rests on it alone"' in text
    assert '="73.00" (%,UCUM' in text
    assert "in the left hip (the only assessed hip), at or above the operating point" in text
    assert len(measurement_groups(pydicom.dcmread(path))) == 1


def test_sr_with_nothing_assessable_says_so(tmp_path: Path) -> None:
    path = save(
        build_study_report(
            [source()], [assessment(left="femur not found", right="cut off")], report_version=1
        ),
        tmp_path / "sr.dcm",
    )
    dciodvfy(path)
    text = dsrdump(path)
    assert "NUM:" not in text and "Imaging Measurements" not in text
    assert 'CODE:(121075,DCM,"Recommendation")=(NOT-ASSESSABLE,99TRIAGE' in text
    assert 'Conclusion")="Not assessable: no hip could be assessed' in text
    assert 'Reason not assessable")="right hip: cut off"' in text
    assert 'Reason not assessable")="left hip: femur not found"' in text
    assert ATTENTION_SCALE_NOTE not in text  # no heatmap is made


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
    # each ROI is drawn on its own image
    assert [uid for uid, _ in ohif_labels(back)] == [
        sources[0].SOPInstanceUID,
        sources[0].SOPInstanceUID,
        sources[1].SOPInstanceUID,
    ]


def test_sr_tells_the_reader_about_imputed_values_and_the_heatmap_scale(tmp_path: Path) -> None:
    imputed = dataclasses.replace(
        assessment(),
        warnings=("weight missing from the header; imputed training median 58.8 (kg)",),
    )
    text = dsrdump(
        save(build_study_report([source()], [imputed], report_version=1), tmp_path / "sr.dcm")
    )
    assert 'Comment")="weight missing from the header; imputed training median 58.8 (kg)"' in text
    assert f'Comment")="{ATTENTION_SCALE_NOTE}"' in text
    # a model warning that repeats "only the left hip was assessable" is said once
    one_hip = dataclasses.replace(
        assessment(right="prosthesis"),
        warnings=("only the left hip was assessable; it stands in for both hips",),
    )
    text = dsrdump(
        save(build_study_report([source()], [one_hip], report_version=1), tmp_path / "one.dcm")
    )
    assert text.count("only the left hip was assessable") == 1


def test_air_identity_names_the_model_and_its_device_uid_follows_the_bundle(
    tmp_path: Path,
) -> None:
    def algorithm_item(ds: pydicom.Dataset) -> pydicom.Dataset:
        (item,) = [
            i
            for i in ds.ContributingEquipmentSequence
            if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        ]
        return item

    src = source()
    sr = build_study_report([src], [assessment()], report_version=1)
    sc = build_heatmap(src, assessment(), None, report_version=1)
    for ds in (sr, sc):
        item = algorithm_item(ds)
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "99IHE",
            "Processing Algorithm",
        )
        assert item.Manufacturer == identity.MANUFACTURER
        assert item.ManufacturerModelName == "dtc-demo"
        assert "0.1.0" in list(item.SoftwareVersions)
        assert str(item.ContributionDateTime) == "20260101101010"
        declared = {c.CodingSchemeDesignator for c in ds.CodingSchemeIdentificationSequence}
        assert "99IHE" in declared
    # same bundle, same Device UID, in every object and on every run
    uid = algorithm_item(sr).DeviceUID
    assert algorithm_item(sc).DeviceUID == uid
    assert (
        algorithm_item(build_study_report([src], [assessment()], report_version=2)).DeviceUID == uid
    )
    # a retrained bundle (new version) is a new device
    retrained = build_study_report([src], [assessment(version="0.2.0")], report_version=1)
    assert algorithm_item(retrained).DeviceUID != uid
    # TID 4019 in every group: name, version, parameters
    text = dsrdump(save(sr, tmp_path / "sr.dcm"))
    assert '(111001,DCM,"Algorithm Name")="dtc-demo"' in text
    assert '(111003,DCM,"Algorithm Version")="0.1.0"' in text
    assert '(111002,DCM,"Algorithm Parameters")="operating point (threshold) 0.5000"' in text


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


@pytest.mark.parametrize(
    ("syntax", "uid", "photometric"),
    [
        ("jpeg-baseline", JPEGBaseline8Bit, "YBR_FULL_422"),
        ("jpeg-ls-lossless", JPEGLSLossless, "RGB"),
        ("explicit-little-endian", ExplicitVRLittleEndian, "RGB"),
    ],
)
def test_heatmap_is_valid_rgb_with_burned_in_annotation(
    tmp_path: Path, syntax: str, uid: str, photometric: str
) -> None:
    src = source()
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    cams = {
        "left": np.exp(-((xx - 96) ** 2 + (yy - 50) ** 2) / 200.0),
        "right": np.exp(-((xx - 30) ** 2 + (yy - 50) ** 2) / 200.0),
    }
    sc = build_heatmap(src, assessment(), cams, report_version=1, transfer_syntax=syntax)
    path = save(sc, tmp_path / "sc.dcm")
    dciodvfy(path)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == uid
    assert back.PhotometricInterpretation == photometric and back.SamplesPerPixel == 3
    # what a viewer decodes is the picture we drew (exactly, unless JPEG baseline)
    drawn = render_heatmap(src, assessment(), cams).astype(int)
    error = np.abs(back.pixel_array.astype(int) - drawn)
    if syntax == "jpeg-baseline":
        assert back.LossyImageCompression == "01"
        assert back.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(back.LossyImageCompressionRatio) > 1
        assert error.mean() < 3
    else:
        assert "LossyImageCompression" not in back
        assert error.max() == 0
    assert back.BurnedInAnnotation == "YES"
    assert list(back.PatientOrientation) == ["L", "F"]
    assert back.ImageLaterality == "B"
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesDescription == identity.SC_SERIES_DESCRIPTION
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    # small sources are enlarged so the burned-in text stays legible
    assert max(back.Rows, back.Columns) > max(ROWS, COLUMNS)
    again = build_heatmap(src, assessment(), cams, report_version=1, transfer_syntax=syntax)
    assert path.read_bytes() == save(again, tmp_path / "b.dcm").read_bytes()
    v2 = build_heatmap(src, assessment(), cams, report_version=2, transfer_syntax=syntax)
    assert v2.SOPInstanceUID != back.SOPInstanceUID
    assert v2.SeriesInstanceUID == back.SeriesInstanceUID


def test_heatmap_refuses_an_unknown_transfer_syntax() -> None:
    with pytest.raises(ValueError, match="transfer_syntax: 'jpeg2000'"):
        build_heatmap(source(), assessment(), None, report_version=1, transfer_syntax="jpeg2000")


def test_the_config_names_every_heatmap_transfer_syntax() -> None:
    assert set(typing.get_args(HeatmapTransferSyntax)) == set(TRANSFER_SYNTAXES)


@pytest.fixture(scope="module")
def full_size_radiograph(tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    """One synthetic hip radiograph at full detector size (thousands of pixels a side)."""
    out = tmp_path_factory.mktemp("full")
    generate_cohort(out, 1, seed=3, size="full", progress=False)
    return pydicom.dcmread(next(out.glob("synth_*.dcm")))


def test_full_size_heatmap_is_jpeg_under_1_mb_at_reading_size(
    tmp_path: Path, full_size_radiograph: pydicom.Dataset
) -> None:
    src = full_size_radiograph
    assert max(src.Rows, src.Columns) >= 2000
    rows, columns = int(src.Rows), int(src.Columns)
    roi_r = [(0.1 * columns, 0.4 * rows), (0.4 * columns, 0.4 * rows), (0.4 * columns, 0.8 * rows)]
    roi_l = [(0.6 * columns, 0.4 * rows), (0.9 * columns, 0.4 * rows), (0.9 * columns, 0.8 * rows)]
    yy, xx = np.mgrid[0:rows, 0:columns]
    cam = np.exp(
        -(((xx - 0.3 * columns) / (0.05 * columns)) ** 2 + ((yy - 0.6 * rows) / (0.05 * rows)) ** 2)
    )
    result = ImageAssessment(
        sides=(
            SideAssessment("right", 0.8, roi_polygon=roi_r, positive=True),
            SideAssessment("left", 0.2, roi_polygon=roi_l, positive=False),
        ),
        model_name="dtc-demo",
        model_version="0.1.0",
        threshold=0.5,
        synthetic_model=True,
    )
    sc = build_heatmap(src, result, {"right": cam, "left": cam[:, ::-1]}, report_version=1)
    path = save(sc, tmp_path / "sc.dcm")
    dciodvfy(path)
    assert path.stat().st_size <= 1_000_000
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    # the radiograph part at reading size, its long side MAX_LONG_SIDE (plus the caption band)
    assert back.Columns == round(columns * MAX_LONG_SIDE / max(rows, columns))
    assert back.pixel_array.shape == (back.Rows, back.Columns, 3)


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
    assert pixels.shape[1] == 640  # 1300 * 1280 / 2600
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
    with pytest.raises(TypeError, match="study"):
        build_heatmap(source(), assessment(), None, report_version=1, study=[])
    with pytest.raises(ValueError, match="image_number"):
        build_heatmap(source(), assessment(), None, report_version=1, image_number=2)
    with pytest.raises(ValueError, match="image_number"):
        a = assessment()
        build_heatmap(source(), a, None, report_version=1, study=[a], image_number=2)
    with pytest.raises(ValueError, match=r"study\[1\]"):
        build_heatmap(
            source(),
            assessment(),
            None,
            report_version=1,
            study=[assessment(), assessment(0.1, 0.2, version="9")],
        )


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
    assert (
        'Conclusion")="DXA recommended: probability of osteoporosis 38.00 % in the left hip' in text
    )
    assert "20.00 %" not in text and '="20.00"' not in text
    assert "Low likelihood of osteoporosis, DXA not recommended:" not in text
    # The heatmap says the same, with the same number.
    (study_line,) = [line for line in caption_text(bilateral) if line.startswith("Study: ")]
    assert study_line == f"Study: {study_conclusion([bilateral])}"
    assert "38.00 % in the left hip" in study_line
    assert "at or above the operating point 37.00 %" in study_line


def test_a_side_flag_that_contradicts_the_rule_is_refused() -> None:
    contradicting = ImageAssessment(
        sides=(SideAssessment("left", 0.6, roi_polygon=LEFT_ROI, positive=False),),
        model_name="m",
        model_version="1",
        threshold=0.5,
        synthetic_model=False,
    )
    with pytest.raises(ValueError, match=r"assessments\[0\].sides\[left\]: positive=False"):
        build_study_report([source()], [contradicting], report_version=1)
    with pytest.raises(ValueError, match=r"assessment.sides\[left\]"):
        build_heatmap(source(), contradicting, None, report_version=1)


def test_heatmap_caption_says_what_the_sr_says_in_its_words() -> None:
    one_hip = dataclasses.replace(
        assessment(0.38, "prosthesis", threshold=0.37),
        warnings=("weight missing from the header; imputed training median 58.8 (kg)",),
    )
    other = assessment(0.2, 0.9, threshold=0.37)
    caption = caption_text(one_hip, [one_hip, other], image_number=1)
    assert caption[:2] == [
        identity.TRIAGE_DISCLAIMER.upper(),
        identity.SYNTHETIC_DISCLAIMER.upper(),
    ]
    assert caption[2:4] == [
        "Image 1, right hip: not assessable, prosthesis",
        "Image 1, left hip: probability of osteoporosis 38.00 %, DXA recommended",
    ]
    # the study line is the SR's conclusion: here another image's right hip decides
    assert caption[4] == f"Study: {study_conclusion([one_hip, other])}"
    assert "90.00 % in the right hip of image 2" in caption[4]
    assert caption[5:7] == [
        "Note: only the left hip was assessable; the result rests on it alone",
        "Note: weight missing from the header; imputed training median 58.8 (kg)",
    ]
    assert caption[7] == "Model: dtc-demo 0.1.0"
    words = " ".join(caption).lower()
    assert "positive" not in words and "negative" not in words
    assert "p=" not in words
