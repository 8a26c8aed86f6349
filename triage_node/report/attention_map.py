"""Build the machine-readable attention map of one scored radiograph (fractional Segmentation).

The secondary capture (:mod:`triage_node.report.heatmap`) is a picture: every
viewer shows it, nothing can read values back from it. This object carries the
model's Grad-CAM attention itself, on the source radiograph's pixel grid, so
that a viewer can overlay it on the radiograph, toggle it and read values, and
a program can take it apart again.

Why a Segmentation and not a Parametric Map: the Parametric Map IOD (PS3.3
A.75) makes the Frame of Reference module and the Pixel Measures, Plane
Position (Patient) and Plane Orientation (Patient) functional groups mandatory,
that is a place in 3D patient space. A CR or DX projection radiograph has none
(no Image Position/Orientation (Patient); CR has no Frame of Reference at
all), so a Parametric Map of it would have to invent geometry; highdicom
0.28.2 refuses to build one for a source without a frame of reference, and
dciodvfy reports the missing modules as errors. The Segmentation IOD allows a
source without a frame of reference: the segmentation frame is then aligned
with the source image pixel for pixel (Derivation Image Sequence, Spatial
Locations Preserved YES). A FRACTIONAL segmentation stores a value in [0, 1]
per pixel, which is what a Grad-CAM map is. docs/dicom-conformance.md,
"Machine-readable heatmap", says the same for readers of the objects.

What it holds: one frame, one segment "model attention" (Segmented Property
Type DCM 130403 "Gradient-weighted class activation"), the CAMs of both femur
ROIs combined into one map (pixel-wise maximum; outside the ROIs 0), stored
as 8-bit values 0..255 (Maximum Fractional Value 255, so stored value / 255 is
the attention; a quantisation step of 1/255). The maps are scaled together per
image by the model (1 = this image's strongest attention), so values are not
comparable between images and are not probabilities; the object says so in
its Content Description and Image Comments, next to the usage disclaimers.

Same study and patient module as the source, a series of its own whose
description starts with :data:`triage_node.identity.SERIES_DESCRIPTION_PREFIX`
(the receiver recognises it and never scores it), UIDs from
:mod:`triage_node.report.uids`, dates from the sources: the same inputs give
byte-identical objects. Explicit VR Little Endian, like the SR and the SC: one
byte per source pixel (9 MB for a 3000x3000 radiograph), but every archive
accepts it. The node sends a compressed object only in its own transfer syntax,
and a peer that takes Segmentations uncompressed only (dcmtk's storescu cannot
even convert an RLE Segmentation) would refuse an RLE map for good.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from triage_node import identity
from triage_node.assessment import ImageAssessment
from triage_node.report import codes
from triage_node.report.identity import add_algorithm_identity
from triage_node.report.sr import (
    check_assessment,
    content_datetime_of,
    pin_creation_datetime,
    software_versions,
    source_header,
)
from triage_node.report.uids import attention_map_uids

#: Series Number of our attention map series (after the SR's 9901 and the SC's 9902).
MAP_SERIES_NUMBER = 9903
MAP_SERIES_DESCRIPTION = f"{identity.SERIES_DESCRIPTION_PREFIX} attention map (not for diagnosis)"
SEGMENT_LABEL = "model attention"
#: Stored values run 0..MAX_FRACTIONAL_VALUE; attention = stored value / MAX_FRACTIONAL_VALUE.
MAX_FRACTIONAL_VALUE = 255
CONTENT_LABEL = "ATTENTION"
CONTENT_DESCRIPTION = "Grad-CAM attention 0-1, scaled per image, not a probability"
ATTENTION_SCALE_NOTE = (
    "model attention (Grad-CAM) 0-1 = stored value / 255, scaled per image "
    "(1 = this image's strongest attention); not a probability, not comparable between images"
)
#: How the overlay is drawn by viewers that use the segment colour (orange).
DISPLAY_RGB = (255, 150, 0)


def combined_attention(
    cams: object, assessment: ImageAssessment, rows: int, columns: int
) -> npt.NDArray[np.float64]:
    """The CAMs of the assessed sides as one map on the source grid: pixel-wise maximum in [0, 1].

    ``cams`` maps "left"/"right" to an array of shape (rows, columns); every side must
    be among the assessment's. The map of a side with no probability (not assessable)
    is left out: there is no result for it to explain. Raises ``TypeError``/
    ``ValueError`` naming ``cams`` when it is not such a mapping, a map has the wrong
    shape or is not finite, or no assessed side has a map.
    """
    if cams is None:
        raise ValueError("cams: None; the model gave no class-activation map to build a map from")
    if not isinstance(cams, Mapping):
        raise TypeError(f"cams: expected a dict side -> array, got {type(cams).__name__}")
    sides = {s.side: s for s in assessment.sides}
    combined = np.zeros((rows, columns), dtype=np.float64)
    used = 0
    for side, cam in cams.items():
        if side not in sides:
            raise ValueError(f"cams: side {side!r} is not among the assessed sides {sorted(sides)}")
        try:
            arr = np.asarray(cam, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"cams[{side!r}]: expected a numeric array") from None
        if arr.shape != (rows, columns):
            raise ValueError(
                f"cams[{side!r}]: shape {arr.shape} is not the source grid {(rows, columns)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"cams[{side!r}]: values must be finite")
        if sides[side].probability is None:
            continue
        np.maximum(combined, arr, out=combined)
        used += 1
    if not used:
        raise ValueError(
            "cams: no class-activation map of an assessed side; there is nothing to map"
        )
    return np.clip(combined, 0.0, 1.0, out=combined)


def has_attention(assessment: ImageAssessment, cams: Mapping[str, object] | None) -> bool:
    """Whether ``cams`` holds a map of at least one assessed side (then a map can be built)."""
    if not cams:
        return False
    assessed = {s.side for s in assessment.sides if s.probability is not None}
    return any(side in assessed for side in cams)


#: Left out of the copy of the source highdicom builds from: a CR's Pixel Spacing would
#: become a Pixel Measures item without Slice Thickness (a projection has none) that
#: highdicom 0.28.2 writes but cannot read back. The map is on the source's pixel grid
#: (Spatial Locations Preserved YES); spacing is the source's business, as for the SC.
_NOT_COPIED = ("PixelSpacing",)


def _comments(assessment: ImageAssessment) -> str:
    parts = [identity.TRIAGE_DISCLAIMER]
    if assessment.synthetic_model:
        parts.append(identity.SYNTHETIC_DISCLAIMER)
    parts.append(ATTENTION_SCALE_NOTE)
    return "; ".join(parts)


def build_attention_map(
    source: pydicom.Dataset,
    assessment: ImageAssessment,
    cams: Mapping[str, npt.ArrayLike] | None,
    *,
    report_version: int,
    series_number: int = MAP_SERIES_NUMBER,
    content_datetime: datetime.datetime | None = None,
) -> hd.seg.Segmentation:
    """Build the fractional Segmentation holding the model's attention over ``source``.

    Parameters
    ----------
    source:
        The scored radiograph, one grayscale frame (its header suffices: the map is
        made from ``cams``, not from the pixels).
    assessment:
        The model's result for ``source``.
    cams:
        Per side ("left"/"right"), the class-activation map on the source pixel grid,
        values in [0, 1] (as the score job stores them, see
        :func:`triage_node.report.results.save_cams`); at least one side.
    report_version:
        The study's report version (see :func:`triage_node.report.sr.build_study_report`).
    series_number:
        Series Number of the attention map series.
    content_datetime:
        Content Date/Time; default derived from the source (deterministic).

    Raises ``TypeError``/``ValueError`` naming the argument before anything is built.
    """
    if not isinstance(source, pydicom.Dataset):
        raise TypeError(f"source: expected a pydicom Dataset, got {type(source).__name__}")
    for kw in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not source.get(kw):
            raise ValueError(f"source: {kw} is missing")
    for kw in ("Rows", "Columns"):
        if not isinstance(source.get(kw), int) or source.get(kw) < 1:
            raise ValueError(f"source: {kw} is missing or not a positive number")
    if int(source.get("NumberOfFrames") or 1) != 1:
        raise ValueError(f"source: {source.NumberOfFrames} frames; one frame is needed")
    if int(source.get("SamplesPerPixel") or 1) != 1:
        raise ValueError("source: not a grayscale image (Samples per Pixel is not 1)")
    checked = check_assessment(assessment, "assessment", source)
    rows, columns = int(source.Rows), int(source.Columns)
    attention = combined_attention(cams, checked, rows, columns)
    if (
        isinstance(series_number, bool)
        or not isinstance(series_number, int)
        or not 1 <= series_number <= 2**31 - 1
    ):
        raise ValueError(f"series_number: expected a positive int, got {series_number!r}")
    if content_datetime is None:
        content_datetime = content_datetime_of([source])
    elif not isinstance(content_datetime, datetime.datetime):
        raise TypeError("content_datetime: expected a datetime.datetime")
    uids = attention_map_uids(
        source.StudyInstanceUID, source.SOPInstanceUID, checked.model_version, report_version
    )

    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SPATIAL_AND_RELATIONAL_CONCEPT,
        segmented_property_type=codes.GRADIENT_WEIGHTED_CLASS_ACTIVATION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=checked.model_name[:64],
            family=codes.ARTIFICIAL_INTELLIGENCE,
            version=checked.model_version[:64],
            source=identity.MANUFACTURER,
            parameters={
                "map": "Grad-CAM maximum of both femur ROIs scaled per image",
                "threshold": f"{checked.threshold:.4f}",
                "synthetic_model": "yes" if checked.synthetic_model else "no",
            },
        ),
        anatomic_regions=[codes.PROXIMAL_FEMUR],
        display_color=hd.color.CIELabColor.from_rgb(*DISPLAY_RGB),
    )
    seg = hd.seg.Segmentation(
        source_images=[source_header(source, leave_out=_NOT_COPIED)],
        pixel_array=attention,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[segment],
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=report_version,
        manufacturer=identity.MANUFACTURER,
        manufacturer_model_name=identity.MANUFACTURER_MODEL_NAME,
        # highdicom annotates tuple[str]; pydicom stores a multi-valued LO from a list only
        software_versions=software_versions(checked),  # type: ignore[arg-type]
        device_serial_number=checked.model_version[:64],
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE,
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        series_description=MAP_SERIES_DESCRIPTION,
    )
    # Type 2C in General Image (no Image Orientation (Patient)): the source's own, the
    # map being on its pixel grid; empty when the source has none.
    seg.PatientOrientation = source.get("PatientOrientation", "")
    seg.ImageComments = _comments(checked)[:10240]
    seg.ContentDate = DA(content_datetime.date())
    seg.ContentTime = TM(content_datetime.time())
    seg.SeriesDate = DA(content_datetime.date())
    seg.SeriesTime = TM(content_datetime.time())
    for item in (*seg.get("DimensionOrganizationSequence", []), *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = uids.dimension_organization_uid
    add_algorithm_identity(
        seg, checked, content_datetime, "AI triage algorithm that made this attention map"
    )
    pin_creation_datetime(seg, content_datetime)
    return seg
