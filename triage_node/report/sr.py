"""Build the study's DICOM SR (Comprehensive 3D SR, TID 1500) from the model's assessments.

One SR per study, shaped by what viewers do with it (docs/dicom-conformance.md):

* observation context: our device as observer (TID 1004); procedure reported:
  plain radiography;
* "Imaging Measurements": one TID 1410 measurement group per ASSESSED hip of
  every source image, and nothing else. OHIF (v3) draws each group's SCOORD
  on its image and labels it with the group's NUM items ("concept meaning:
  value unit") and finding site, and crashes on a group without a SCOORD, so
  every group has one: the femur ROI as a closed polyline. Each group holds
  tracking identifier and UID, finding "Osteoporosis", finding site proximal
  femur with laterality, the algorithm (TID 4019), the probability as a NUM
  in percent whose concept names the hip and its decision (OHIF's label reads
  "Left hip (DXA recommended), probability of osteoporosis: 62.50 %"), and
  the decision as a CODE ("Recommendation");
* "Qualitative Evaluations" (TID 1500 row 12, UMLS C0034375), which OHIF does
  not read: the study decision (CODE) and its sentence with the study value
  (TEXT "Conclusion"), the hips not assessed and why, what a reader must know
  (one hip only, imputed clinical values, the heatmap's per-image scale) and
  the disclaimers.

Every container is SEPARATE, so generic renderers (dcmtk ``dsr2html``) show
each value under its name. The algorithm's AIR identity (Contributing
Equipment, Device UID) is added by :mod:`triage_node.report.identity`.

The builder checks every argument before it builds anything and raises
``TypeError``/``ValueError`` naming the argument. It is deterministic: the same
inputs give a byte-identical object (UIDs from :mod:`triage_node.report.uids`,
dates from the sources, see :func:`content_datetime_of`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from copy import deepcopy

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from triage_node import identity
from triage_node.assessment import ImageAssessment, SideAssessment, is_positive
from triage_node.report import codes
from triage_node.report.identity import (
    add_algorithm_identity,
    algorithm_identification,
    software_versions,
)
from triage_node.report.uids import device_observer_uid, study_report_uids, tracking_uid
from triage_node.report.wording import (
    ATTENTION_SCALE_NOTE,
    hip,
    image_label,
    not_assessable_reasons,
    ordered_sides,
    percent,
    percent_value,
    reader_notes,
    side_is_positive,
    side_result,
    study_conclusion,
    study_decision,
)

__all__ = [
    "build_study_report",
    "check_assessment",
    "check_polygon",
    "content_datetime_of",
    "decision_code",
    "pin_creation_datetime",
    "side_is_positive",
    "software_versions",
    "study_decision",
]

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
    """Check one :class:`ImageAssessment`: types, sides, decisions, ROI in ``source``'s grid."""
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
        if (
            side.probability is not None
            and side.positive is not None
            and side.positive != is_positive(side.probability, assessment.threshold)
        ):
            # Every output states the hip's decision by the one rule; a model flag
            # that disagrees would make the objects contradict each other.
            raise ValueError(
                f"{argument}.sides[{side.side}]: positive={side.positive} contradicts "
                f"probability {side.probability} at threshold {assessment.threshold}"
            )
        if side.roi_polygon is not None and source is not None:
            check_polygon(
                side.roi_polygon,
                int(source.Rows),
                int(source.Columns),
                f"{argument}.sides[{side.side}].roi_polygon",
            )
    return assessment


def decision_code(decision: bool | None) -> Code:
    """The coded value for a decision (see :mod:`triage_node.report.codes`)."""
    if decision is None:
        return codes.NOT_ASSESSABLE
    return codes.DXA_RECOMMENDED if decision else codes.LOW_LIKELIHOOD


def source_header(ds: pydicom.Dataset, *, leave_out: Sequence[str] = ()) -> pydicom.Dataset:
    """A pixel-free copy of a source with the Type 2 study attributes highdicom reads.

    What highdicom builds our objects from (the SR's evidence, the attention map's
    source); ``leave_out`` names attributes not to copy.
    """
    header = pydicom.Dataset()
    for elem in ds:
        if elem.tag.group in (0x7FE0, 0x0002) or elem.keyword in leave_out:
            continue
        header.add(deepcopy(elem))
    for kw in _TYPE2_STUDY_ATTRIBUTES:
        if kw not in header:
            setattr(header, kw, "")
    return header


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _side_group(
    source: pydicom.Dataset,
    number: int,
    count: int,
    side: SideAssessment,
    assessment: ImageAssessment,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | None:
    """TID 1410 for one assessed hip with an ROI (see the module docstring); else None."""
    if side.probability is None or side.roi_polygon is None:
        return None
    positive = bool(side_is_positive(side, assessment.threshold))
    label = image_label(number, count)
    tracking = hd.sr.TrackingIdentifier(
        uid=tracking_uid(source.SOPInstanceUID, side.side, assessment.model_version),
        identifier=f"{hip(side.side)}, {label}" if label else hip(side.side),
    )
    points = check_polygon(side.roi_polygon, int(source.Rows), int(source.Columns), "roi_polygon")
    probability = hd.sr.Measurement(
        name=codes.side_probability(side.side, positive),
        value=percent(side.probability),
        unit=codes.PERCENT,
    )
    # "73.00", not highdicom's "73.0": the digits every other output shows.
    probability[0].MeasuredValueSequence[0].NumericValue = percent_value(side.probability)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=points,
            source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
        ),
        finding_type=codes.OSTEOPOROSIS,
        finding_sites=[
            hd.sr.FindingSite(
                anatomic_location=codes.PROXIMAL_FEMUR, laterality=codes.LATERALITY[side.side]
            )
        ],
        algorithm_id=algorithm_identification(assessment),
        measurements=[probability],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.RECOMMENDATION, value=decision_code(positive))
        ],
    )


def _qualitative_evaluations(assessments: Sequence[ImageAssessment]) -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": everything that is not an ROI measurement."""
    count = len(assessments)
    decision = study_decision(assessments)
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=codes.RECOMMENDATION,
            value=decision_code(decision),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ),
        _text(codes.CONCLUSION, study_conclusion(assessments)),
    ]
    for number, assessment in enumerate(assessments, start=1):
        label = image_label(number, count)
        items += [
            _text(codes.NOT_ASSESSABLE_REASON, reason)
            for reason in not_assessable_reasons(assessment, label)
        ]
        # A hip assessed without an ROI cannot be a measurement group (OHIF crashes on a
        # group without a SCOORD): its result is said here instead.
        items += [
            _text(
                codes.COMMENT,
                (f"{label}: " if label else "")
                + side_result(side, assessment.threshold)
                + " (no ROI from the model, so it is not drawn)",
            )
            for side in ordered_sides(assessment)
            if side.probability is not None and side.roi_polygon is None
        ]
        items += [_text(codes.COMMENT, note) for note in reader_notes(assessment, label)]
    if any(a.assessable for a in assessments):
        items.append(_text(codes.COMMENT, ATTENTION_SCALE_NOTE))
    items.append(_text(codes.USAGE_DISCLAIMER, identity.TRIAGE_DISCLAIMER))
    if assessments[0].synthetic_model:
        items.append(_text(codes.USAGE_DISCLAIMER, identity.SYNTHETIC_DISCLAIMER))
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _measurement_report(
    observer: hd.sr.ObserverContext,
    groups: Sequence[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations],
) -> hd.sr.MeasurementReport:
    """The TID 1500 root; without any group, without an "Imaging Measurements" container.

    TID 1500 needs at least one of Imaging Measurements, Derived Imaging
    Measurements and Qualitative Evaluations (rows 6, 10, 12); an empty
    Imaging Measurements container is not allowed. highdicom 0.28 always
    writes that container, so a report of a study with no assessable hip is
    built around a placeholder group whose container is then taken out.
    """
    placeholder = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="placeholder", uid="2.25.0")
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PLAIN_RADIOGRAPHY,
        imaging_measurements=list(groups) or [placeholder],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    if not groups:
        root = report[0]
        root.ContentSequence = hd.sr.ContentSequence(
            [item for item in root.ContentSequence if item.ValueType != "CONTAINER"]
        )
    return report


def _separate(item: pydicom.Dataset) -> None:
    """Make ``item`` and every container under it SEPARATE (each value under its name)."""
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        _separate(child)


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
        The reported source images of one study (headers suffice; pixel data is
        not read). They give the study, patient and the evidence references.
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

    observer = hd.sr.ObserverContext(
        observer_type=codes.OBSERVER_TYPE_DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_observer_uid(),
            name=identity.DEVICE_NAME,
            manufacturer_name=identity.MANUFACTURER,
            model_name=identity.MANUFACTURER_MODEL_NAME,
        ),
    )
    count = len(checked)
    groups = [
        group
        for number, (source, assessment) in enumerate(
            zip(checked_sources, checked, strict=True), start=1
        )
        for side in ordered_sides(assessment)
        if (group := _side_group(source, number, count, side, assessment)) is not None
    ]
    report = _measurement_report(observer, groups)
    report[0].ContentSequence.append(_qualitative_evaluations(checked))
    _separate(report[0])

    sr = hd.sr.Comprehensive3DSR(
        evidence=[source_header(s) for s in checked_sources],
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
    add_algorithm_identity(
        sr, first, content_datetime, "Osteoporosis triage of the hip radiographs of this report"
    )
    pin_creation_datetime(sr, content_datetime)
    return sr


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
