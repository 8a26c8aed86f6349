"""Build the study's DICOM SR (Comprehensive 3D SR, TID 1500) from the model's assessments.

One SR per study. Its content tree (PS3.16 TID 1500 "Measurement Report"):

* observation context: our device as observer (TID 1004);
* procedure reported: plain radiography;
* "Imaging Measurements", one measurement group per scored side of every
  source image (TID 1410 with the femur ROI as a polygon on the source image,
  or TID 1501 referencing the image when the model gave no ROI): tracking
  identifier and UID, finding "Osteoporosis", finding site proximal femur
  with laterality, algorithm identification, the probability of osteoporosis
  (NUM, UCUM "1") and the triage result (CODE), or "Not assessable" with the
  reason (TEXT);
* one study-level group (TID 1501): the decision at the operating point, the
  threshold and the study probability;
* "Qualitative Evaluations" (TID 1500 row, UMLS C0034375): the decision again
  as CODE, the reasons and the disclaimers as TEXT.

The builder checks every argument before it builds anything and raises
``TypeError``/``ValueError`` naming the argument. It is deterministic: the same
inputs give a byte-identical object (UIDs from :mod:`triage_node.report.uids`,
dates from the sources, see :func:`content_datetime_of`).

Why Comprehensive 3D SR: it is what highdicom, OHIF (dicom-sr extension) and
dcmtk's dsrdump all handle for TID 1500, and dciodvfy validates it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from copy import deepcopy
from typing import TypedDict

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

import triage_node
from triage_node import identity
from triage_node.assessment import ImageAssessment, SideAssessment, is_positive
from triage_node.report import codes
from triage_node.report.uids import (
    device_observer_uid,
    study_report_uids,
    study_tracking_uid,
    tracking_uid,
)

#: Series Number of our SR series (high, so that it sorts after the acquired series).
SR_SERIES_NUMBER = identity.SR_SERIES_NUMBER

# Patient/study attributes highdicom reads from the first evidence dataset; Type 2 in
# the SR IOD, so an empty value is valid when the source lacks them.
_TYPE2_STUDY_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def content_datetime_of(sources: Sequence[pydicom.Dataset]) -> datetime.datetime:
    """The Content Date/Time our objects carry when the caller gives none.

    The newest of the sources' Content Date/Time (falling back to Acquisition,
    Series, then Study Date/Time). Derived from the sources rather than the
    clock so that a re-run builds byte-identical objects. Raises ``ValueError``
    when no source carries any date.
    """
    found: list[datetime.datetime] = []
    for ds in sources:
        for date_kw, time_kw in (
            ("ContentDate", "ContentTime"),
            ("AcquisitionDate", "AcquisitionTime"),
            ("SeriesDate", "SeriesTime"),
            ("StudyDate", "StudyTime"),
        ):
            date_value = ds.get(date_kw)
            if not date_value:
                continue
            try:
                day = DA(date_value)
                tm = TM(ds.get(time_kw)) if ds.get(time_kw) else None
            except ValueError:
                continue
            if day is None:
                continue
            clock = (
                datetime.time(tm.hour, tm.minute, tm.second)
                if tm is not None
                else datetime.time(0, 0)
            )
            found.append(datetime.datetime.combine(day, clock))
            break
    if not found:
        raise ValueError(
            "content_datetime: no source carries a Content, Acquisition, Series or Study "
            "Date; pass content_datetime explicitly"
        )
    return max(found)


def software_versions(assessment: ImageAssessment) -> list[str]:
    """Software Versions (0018,1020) of our objects: the node's and the model's."""
    return [
        f"{identity.MANUFACTURER_MODEL_NAME} {triage_node.__version__}",
        f"{assessment.model_name} {assessment.model_version}",
    ]


def _check_sources(sources: object) -> list[pydicom.Dataset]:
    if not isinstance(sources, Sequence) or isinstance(sources, (str, bytes)):
        raise TypeError("sources: expected a list of pydicom Datasets")
    if not sources:
        raise ValueError("sources: at least one source image is needed")
    checked: list[pydicom.Dataset] = []
    seen: set[str] = set()
    for i, ds in enumerate(sources):
        if not isinstance(ds, pydicom.Dataset):
            raise TypeError(f"sources[{i}]: expected a pydicom Dataset, got {type(ds).__name__}")
        for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            if not ds.get(kw):
                raise ValueError(f"sources[{i}]: {kw} is missing")
        if ds.StudyInstanceUID != sources[0].StudyInstanceUID:
            raise ValueError(
                f"sources[{i}] (SOP Instance UID {ds.SOPInstanceUID}): Study Instance UID "
                f"{ds.StudyInstanceUID} differs from sources[0]'s {sources[0].StudyInstanceUID}"
            )
        if ds.SOPInstanceUID in seen:
            raise ValueError(f"sources[{i}]: SOP Instance UID {ds.SOPInstanceUID} given twice")
        seen.add(ds.SOPInstanceUID)
        checked.append(ds)
    return checked


def check_polygon(polygon: object, rows: int, columns: int, argument: str) -> np.ndarray:
    """Check an ROI polygon against the image grid; return it closed, as an (N, 2) array.

    Points are (column, row) pixel coordinates with the top left corner of the
    top left pixel at (0, 0) (the SCOORD convention, PS3.3 C.18.6.1.2).
    """
    try:
        points = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{argument}: expected a list of (column, row) pairs") from None
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{argument}: expected (column, row) pairs, got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{argument}: coordinates must be finite numbers")
    if len(np.unique(points, axis=0)) < 3:
        raise ValueError(f"{argument}: a polygon needs at least 3 distinct points")
    if (
        points[:, 0].min() < 0
        or points[:, 1].min() < 0
        or points[:, 0].max() > columns
        or points[:, 1].max() > rows
    ):
        raise ValueError(f"{argument}: points outside the {columns}x{rows} (columns x rows) image")
    if not np.array_equal(points[0], points[-1]):
        # SR SCOORD has no POLYGON: a closed POLYLINE (first point = last) is an area
        # (PS3.3 C.18.6.1.2).
        points = np.vstack([points, points[:1]])
    return points


def check_assessment(
    assessment: object, argument: str, source: pydicom.Dataset | None = None
) -> ImageAssessment:
    """Check one :class:`ImageAssessment` (types, sides, ROI within ``source``'s grid)."""
    if not isinstance(assessment, ImageAssessment):
        raise TypeError(f"{argument}: expected an ImageAssessment, got {type(assessment).__name__}")
    if not assessment.sides:
        raise ValueError(f"{argument}: no side was assessed")
    sides = [s.side for s in assessment.sides]
    if len(set(sides)) != len(sides) or not set(sides) <= {"left", "right"}:
        raise ValueError(f"{argument}: sides must be distinct 'left'/'right', got {sides}")
    if not assessment.model_name or not assessment.model_version:
        raise ValueError(f"{argument}: model_name and model_version are required")
    if not 0.0 <= assessment.threshold <= 1.0:
        raise ValueError(f"{argument}: threshold {assessment.threshold} not in [0, 1]")
    for side in assessment.sides:
        if not isinstance(side, SideAssessment):
            raise TypeError(f"{argument}.sides: expected SideAssessment items")
        if side.roi_polygon is not None and source is not None:
            check_polygon(
                side.roi_polygon,
                int(source.Rows),
                int(source.Columns),
                f"{argument}.sides[{side.side}].roi_polygon",
            )
    return assessment


def side_is_positive(side: SideAssessment, threshold: float) -> bool | None:
    """The side's decision: its own ``positive`` if the model set it, else p >= threshold."""
    if side.probability is None:
        return None
    if side.positive is not None:
        return side.positive
    return is_positive(side.probability, threshold)


def study_decision(assessments: Sequence[ImageAssessment]) -> bool | None:
    """True: DXA recommended; False: not; None: nothing assessable.

    The study is positive when any image is, and an image when any of its
    assessed sides is (:attr:`ImageAssessment.positive`): the study decision
    never contradicts a side.
    """
    known = [a.positive for a in assessments if a.positive is not None]
    if not known:
        return None
    return any(known)


def decision_code(decision: bool | None) -> Code:
    """The coded value for a decision (see :mod:`triage_node.report.codes`)."""
    if decision is None:
        return codes.NOT_ASSESSABLE
    return codes.DXA_RECOMMENDED if decision else codes.LOW_LIKELIHOOD


def decision_text(decision: bool | None) -> str:
    """The decision in words, as burned into the heatmap."""
    if decision is None:
        return "not assessable"
    return "DXA recommended" if decision else "low likelihood, DXA not recommended"


def _evidence_header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A pixel-free copy of a source with the Type 2 study attributes highdicom reads."""
    header = pydicom.Dataset()
    for elem in ds:
        if elem.tag.group in (0x7FE0, 0x0002) or elem.keyword in ("PixelData",):
            continue
        header.add(deepcopy(elem))
    for kw in _TYPE2_STUDY_ATTRIBUTES:
        if kw not in header:
            setattr(header, kw, "")
    return header


def _text(name: Code, value: str, relationship: str = "CONTAINS") -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues(relationship)
    )


class _GroupArgs(TypedDict):
    """The arguments both highdicom measurement-group classes take for one hip."""

    tracking_identifier: hd.sr.TrackingIdentifier
    finding_type: Code
    algorithm_id: hd.sr.AlgorithmIdentification
    finding_sites: list[hd.sr.FindingSite]
    measurements: list[hd.sr.Measurement] | None
    qualitative_evaluations: list[hd.sr.QualitativeEvaluation]


def _side_group(
    source: pydicom.Dataset,
    image_number: int,
    side: SideAssessment,
    assessment: ImageAssessment,
    algorithm: hd.sr.AlgorithmIdentification,
) -> (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
):
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid(source.SOPInstanceUID, side.side, assessment.model_version),
        identifier=f"{side.side} proximal femur, image {image_number}",
    )
    finding_site = hd.sr.FindingSite(
        anatomic_location=codes.PROXIMAL_FEMUR, laterality=codes.LATERALITY[side.side]
    )
    measurements: list[hd.sr.Measurement] = []
    positive = side_is_positive(side, assessment.threshold)
    if side.probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.PROBABILITY_OF_OSTEOPOROSIS,
                value=round(float(side.probability), 4),
                unit=codes.NO_UNITS,
            )
        )
    evaluation = hd.sr.QualitativeEvaluation(
        name=codes.TRIAGE_RESULT, value=decision_code(positive)
    )
    common = _GroupArgs(
        tracking_identifier=tracking,
        finding_type=codes.OSTEOPOROSIS,
        algorithm_id=algorithm,
        finding_sites=[finding_site],
        measurements=measurements or None,
        qualitative_evaluations=[evaluation],
    )
    group: (
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    )
    if side.roi_polygon is not None:
        points = check_polygon(
            side.roi_polygon, int(source.Rows), int(source.Columns), "roi_polygon"
        )
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
        )
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=region, **common
        )
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
            ],
            **common,
        )
    if side.not_assessable_reason is not None:
        # TID 1501/1410 allow TEXT qualitative evaluations; highdicom has no argument
        # for them, so the item is appended to the group container.
        group[0].ContentSequence.append(
            _text(codes.NOT_ASSESSABLE_REASON, side.not_assessable_reason)
        )
    return group


def build_study_report(
    sources: list[pydicom.Dataset],
    assessments: list[ImageAssessment],
    *,
    report_version: int,
    series_number: int = SR_SERIES_NUMBER,
    content_datetime: datetime.datetime | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the study's SR from the source images and one assessment per image.

    Parameters
    ----------
    sources:
        The scored source images of one study (headers suffice; pixel data is not
        read). They give the study, patient and the evidence references.
    assessments:
        ``assessments[i]`` is the model's result for ``sources[i]``; all from the
        same model (name, version, threshold).
    report_version:
        1 for the first report of the study, +1 for each re-report (e.g. after a
        late instance). Part of the SOP Instance UID and the Instance Number.
    series_number:
        Series Number of the SR series.
    content_datetime:
        Content Date/Time of the report; default :func:`content_datetime_of` the
        sources (deterministic; the worker may pass the study's settle time).

    Raises ``TypeError``/``ValueError`` naming the argument before anything is built.
    """
    checked_sources = _check_sources(sources)
    if not isinstance(assessments, Sequence) or isinstance(assessments, (str, bytes)):
        raise TypeError("assessments: expected a list of ImageAssessment")
    if len(assessments) != len(checked_sources):
        raise ValueError(
            f"assessments: {len(assessments)} given for "
            f"{len(checked_sources)} sources; one per source is needed"
        )
    checked = [
        check_assessment(a, f"assessments[{i}]", checked_sources[i])
        for i, a in enumerate(assessments)
    ]
    first = checked[0]
    for i, a in enumerate(checked[1:], start=1):
        if (a.model_name, a.model_version, a.threshold, a.synthetic_model) != (
            first.model_name,
            first.model_version,
            first.threshold,
            first.synthetic_model,
        ):
            raise ValueError(
                f"assessments[{i}]: from another model or operating point than "
                "assessments[0]; one report is made by one model"
            )
    if (
        isinstance(series_number, bool)
        or not isinstance(series_number, int)
        or not 1 <= series_number <= 2**31 - 1
    ):
        raise ValueError(f"series_number: expected a positive int, got {series_number!r}")
    if content_datetime is None:
        content_datetime = content_datetime_of(checked_sources)
    elif not isinstance(content_datetime, datetime.datetime):
        raise TypeError("content_datetime: expected a datetime.datetime")
    study_uid = checked_sources[0].StudyInstanceUID
    uids = study_report_uids(
        study_uid, [s.SOPInstanceUID for s in checked_sources], first.model_version, report_version
    )

    algorithm = hd.sr.AlgorithmIdentification(
        name=first.model_name,
        version=first.model_version,
        parameters=[
            f"threshold={first.threshold:.4f}",
            f"synthetic_model={'yes' if first.synthetic_model else 'no'}",
        ],
        manufacturer=identity.MANUFACTURER,
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.OBSERVER_TYPE_DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(),
            name=identity.DEVICE_NAME,
            manufacturer_name=identity.MANUFACTURER,
            model_name=identity.MANUFACTURER_MODEL_NAME,
        ),
    )
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    for number, (source, assessment) in enumerate(
        zip(checked_sources, checked, strict=True), start=1
    ):
        for side in sorted(assessment.sides, key=lambda s: s.side):
            groups.append(_side_group(source, number, side, assessment, algorithm))

    decision = study_decision(checked)
    study_measurements = [
        hd.sr.Measurement(
            name=codes.THRESHOLD_VALUE, value=round(float(first.threshold), 4), unit=codes.NO_UNITS
        )
    ]
    probabilities = [a.probability for a in checked if a.probability is not None]
    if probabilities:
        study_measurements.insert(
            0,
            hd.sr.Measurement(
                name=codes.PROBABILITY_OF_OSTEOPOROSIS,
                value=round(float(max(probabilities)), 4),
                unit=codes.NO_UNITS,
            ),
        )
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=study_tracking_uid(study_uid, first.model_version),
                identifier="study triage decision",
            ),
            finding_type=codes.OSTEOPOROSIS,
            algorithm_id=algorithm,
            measurements=study_measurements,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=codes.RECOMMENDATION, value=decision_code(decision)
                )
            ],
            source_images=[
                hd.sr.SourceImageForMeasurementGroup(s.SOPClassUID, s.SOPInstanceUID)
                for s in checked_sources
            ],
        )
    )

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_RADIOGRAPHY,
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(_qualitative_evaluations(decision, checked, first.threshold))

    evidence = [_evidence_header(s) for s in checked_sources]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=report_version,
        manufacturer=identity.MANUFACTURER,
        is_complete=True,
        is_final=False,  # PRELIMINARY: machine output, never a signed report
        is_verified=False,
        series_description=identity.SR_SERIES_DESCRIPTION,
        manufacturer_model_name=identity.MANUFACTURER_MODEL_NAME,
        software_versions=software_versions(first),
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
        series_date=content_datetime.date(),
        series_time=content_datetime.time(),
        coding_schemes=[codes.PRIVATE_CODING_SCHEME],
    )
    pin_creation_datetime(sr, content_datetime)
    return sr


def _qualitative_evaluations(
    decision: bool | None, assessments: Sequence[ImageAssessment], threshold: float
) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": decision (CODE), reasons and disclaimers (TEXT)."""
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=codes.RECOMMENDATION,
            value=decision_code(decision),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
        _text(
            codes.RECOMMENDATION,
            f"{decision_text(decision)} (decision at operating point {threshold:.2f})",
        ),
    ]
    if decision is None:
        reasons = sorted({a.not_assessable_reason or "" for a in assessments} - {""})
        items.append(_text(codes.NOT_ASSESSABLE_REASON, "; ".join(reasons) or "no side assessable"))
    items.append(_text(codes.USAGE_DISCLAIMER, identity.TRIAGE_DISCLAIMER))
    if assessments[0].synthetic_model:
        items.append(_text(codes.USAGE_DISCLAIMER, identity.SYNTHETIC_DISCLAIMER))
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def pin_creation_datetime(ds: pydicom.Dataset, when: datetime.datetime) -> None:
    """Replace the clock readings highdicom stamps into an object with ``when``.

    Instance Creation Date/Time, Contribution DateTime of the Contributing
    Equipment, and for secondary captures Date/Time of Secondary Capture. Same
    inputs must give byte-identical objects (a re-send, not a new object).
    """
    ds.InstanceCreationDate = DA(when.date())
    ds.InstanceCreationTime = TM(when.time())
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(when)
    if "DateOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture = DA(when.date())
        ds.TimeOfSecondaryCapture = TM(when.time())
