"""Build the secondary-capture heatmap of one scored radiograph (RGB, burned-in text).

The picture is what a radiologist sees when scrolling past it in the viewer:

* the radiograph, windowed as a viewer would show it (Modality LUT, then the
  first VOI LUT or window of the file; MONOCHROME1 inverted; with no window
  at all, the 0.5-99.5 percentile range of the pixels);
* over each femur ROI, the model's class-activation map in colour
  (matplotlib "inferno", alpha proportional to activation) clipped to the ROI,
  and the ROI outline coloured by the side's decision; with no CAM, the
  outline only;
* below the image, a black band with burned-in text: "AI triage, not for
  diagnosis" (and "synthetic demo model, not for clinical use" when it is),
  each hip's probability and decision, the study result in the SR's words and
  numbers (:func:`triage_node.report.wording.study_conclusion`: decision,
  study value, its hip, the operating point), what a reader must know (only
  one hip assessed, imputed clinical values), the model name and version, and
  the colour bar with its per-image scale.

Probabilities are in percent with two decimals, as in the SR. The object
carries the algorithm's AIR identity (:mod:`triage_node.report.identity`).

Size and encoding: the long side of the radiograph part is scaled to at most
:data:`MAX_LONG_SIDE` pixels (what a reading monitor shows of it at once: a
3000x2500 DX becomes 1280x1067; an SC is for looking at, not for measuring) and
at least :data:`MIN_LONG_SIDE` (so that text stays legible on tiny images); the
text and outlines are drawn at that size, so they are as sharp as the screen.
Font size follows the output width. Text uses DejaVu Sans shipped with
matplotlib, so no system font is needed. The object is encoded in one of
:data:`TRANSFER_SYNTAXES` (``[report] heatmap_transfer_syntax``): JPEG baseline
(YBR_FULL_422, the usual for a secondary capture, a few hundred kB for a
full-size radiograph), JPEG-LS lossless (RGB) or uncompressed Explicit VR Little
Endian (RGB, several MB). The SC carries no Pixel Spacing, so nothing about its
geometry changes with the size; Patient Orientation (row and column directions)
is the same at any scale.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless

from triage_node import identity
from triage_node.assessment import ImageAssessment
from triage_node.display import display_pixels
from triage_node.report.identity import add_algorithm_identity, software_versions
from triage_node.report.sr import (
    check_assessment,
    check_polygon,
    content_datetime_of,
    pin_creation_datetime,
)
from triage_node.report.uids import heatmap_uids
from triage_node.report.wording import (
    image_label,
    ordered_sides,
    percent_text,
    reader_notes,
    side_is_positive,
    side_result,
    study_conclusion,
    study_decision,
)

#: Series Number of our heatmap series.
SC_SERIES_NUMBER = identity.SC_SERIES_NUMBER
#: Longest side, in pixels, of the radiograph part of the heatmap (see module docstring).
MAX_LONG_SIDE = 1280
MIN_LONG_SIDE = 768
#: The heatmap's transfer syntaxes by their ``[report] heatmap_transfer_syntax`` names,
#: each with the Photometric Interpretation highdicom encodes it in.
TRANSFER_SYNTAXES: dict[str, tuple[str, hd.PhotometricInterpretationValues]] = {
    "jpeg-baseline": (JPEGBaseline8Bit, hd.PhotometricInterpretationValues.YBR_FULL_422),
    "jpeg-ls-lossless": (JPEGLSLossless, hd.PhotometricInterpretationValues.RGB),
    "explicit-little-endian": (ExplicitVRLittleEndian, hd.PhotometricInterpretationValues.RGB),
}
DEFAULT_TRANSFER_SYNTAX = "jpeg-baseline"
COLORMAP = "inferno"
#: Outline colours: DXA recommended, low likelihood, not assessable.
POSITIVE_RGB = (255, 64, 64)
NEGATIVE_RGB = (64, 220, 96)
UNKNOWN_RGB = (200, 200, 200)
_MAX_ALPHA = 0.55
NOTE_RGB = (200, 200, 200)
DISCLAIMER_RGB = (255, 220, 0)
TEXT_RGB = (255, 255, 255)
#: Without a VOI LUT or window in the file, the picture spans these percentiles.
WINDOW_PERCENTILES = (0.5, 99.5)
#: The colour bar's legend: the Grad-CAM map is normalised per image.
ATTENTION_LEGEND = "model attention, low to high (scaled per image: not comparable between images)"


def windowed_grayscale(source: pydicom.Dataset) -> npt.NDArray[np.floating[Any]]:
    """The source's pixels as a viewer shows them: float32 array in [0, 1], white = dense bone.

    :func:`triage_node.display.display_pixels` onto [0, 1]: Modality LUT, the first
    VOI LUT Sequence item or Window Center/Width, MONOCHROME1 inverted; without any
    VOI, the 0.5-99.5 percentile range. Raises ``ValueError`` for a colour or
    multi-frame source.
    """
    return display_pixels(
        source, output_range=(0.0, 1.0), dtype=np.float32, fallback_percentiles=WINDOW_PERCENTILES
    )


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    prop = font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal")
    path = font_manager.findfont(prop, fallback_to_default=True)
    return ImageFont.truetype(str(Path(path)), size)


def _check_cams(
    cams: object, assessment: ImageAssessment, rows: int, columns: int
) -> dict[str, np.ndarray]:
    if cams is None:
        return {}
    if not isinstance(cams, Mapping):
        raise TypeError("cams: expected a dict side -> array, or None")
    sides = {s.side for s in assessment.sides}
    checked: dict[str, np.ndarray] = {}
    for side, cam in cams.items():
        if side not in sides:
            raise ValueError(f"cams: side {side!r} is not among the assessed sides {sorted(sides)}")
        arr = np.asarray(cam, dtype=np.float32)  # full-size maps: float32 is what is drawn
        if arr.shape != (rows, columns):
            raise ValueError(
                f"cams[{side!r}]: shape {arr.shape} is not the source grid {(rows, columns)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"cams[{side!r}]: values must be finite")
        checked[side] = np.clip(arr, 0.0, 1.0)
    return checked


def _output_scale(rows: int, columns: int) -> float:
    long_side = max(rows, columns)
    if long_side > MAX_LONG_SIDE:
        return MAX_LONG_SIDE / long_side
    if long_side < MIN_LONG_SIDE:
        return MIN_LONG_SIDE / long_side
    return 1.0


def _resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float image in [0, 1] to (width, height) with bilinear filtering."""
    img = Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


@dataclass(frozen=True)
class DisplayCopy:
    """What the heatmap is drawn from, at the heatmap's size: made once, when scoring.

    ``gray``: the radiograph windowed as a viewer shows it (:func:`windowed_grayscale`),
    scaled to the heatmap's size, uint8 (0 black, 255 white); ``cams``: per assessed
    side, the class-activation map scaled to the same size, float32 in [0, 1];
    ``source_shape``: the source's (rows, columns), which the ROI polygons refer to.
    The score job keeps it beside the spool file
    (:func:`triage_node.report.results.save_display`), so the report job draws the
    heatmap without decoding the full-size source again.
    """

    gray: npt.NDArray[np.uint8]
    cams: Mapping[str, npt.NDArray[np.float32]]
    source_shape: tuple[int, int]


def output_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) of the radiograph part of the heatmap of a rows x columns source."""
    scale = _output_scale(rows, columns)
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def display_copy(
    source: pydicom.Dataset, assessment: ImageAssessment, cams: Mapping[str, np.ndarray] | None
) -> DisplayCopy:
    """The :class:`DisplayCopy` of ``source`` (pixels decoded) with its CAMs (see there).

    Raises ``TypeError``/``ValueError`` naming the argument, as :func:`render_heatmap`.
    """
    rows, columns = int(source.Rows), int(source.Columns)
    checked = check_assessment(assessment, "assessment", source)
    checked_cams = _check_cams(cams, checked, rows, columns)
    size = output_size(rows, columns)
    gray = windowed_grayscale(source)
    if gray.shape != (rows, columns):
        raise ValueError(
            f"source: pixel array {gray.shape} is not Rows x Columns {(rows, columns)}"
        )
    if size != (columns, rows):
        gray = _resize(gray, size)
    gray8 = np.round(np.clip(gray, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    del gray
    scaled = {
        side: _resize(cam, size) if size != (columns, rows) else cam.astype(np.float32)
        for side, cam in checked_cams.items()
    }
    return DisplayCopy(gray8, scaled, (rows, columns))


def _check_display(
    display: object, rows: int, columns: int, assessment: ImageAssessment
) -> DisplayCopy:
    if not isinstance(display, DisplayCopy):
        raise TypeError(f"display: expected a DisplayCopy, got {type(display).__name__}")
    width, height = output_size(rows, columns)
    if display.source_shape != (rows, columns) or display.gray.shape != (height, width):
        raise ValueError(
            f"display: made for a {display.source_shape} source at {display.gray.shape}, "
            f"not this {(rows, columns)} source at {(height, width)}"
        )
    sides = {s.side for s in assessment.sides}
    for side, cam in display.cams.items():
        if side not in sides or cam.shape != (height, width):
            raise ValueError(f"display: CAM {side!r} of shape {cam.shape} does not fit")
    return display


def render_heatmap(
    source: pydicom.Dataset,
    assessment: ImageAssessment,
    cams: Mapping[str, np.ndarray] | None = None,
    study: Sequence[ImageAssessment] | None = None,
    image_number: int | None = None,
    display: DisplayCopy | None = None,
) -> np.ndarray:
    """Render the heatmap picture as an (rows, columns, 3) uint8 RGB array.

    ``cams`` maps a side ("left"/"right") to its class-activation map on the
    source pixel grid (values in [0, 1]); None draws the ROI outlines only.
    ``study``: the assessments of every image of the report, this one included,
    for the study line (default: this image alone); ``image_number``: this
    image's 1-based position in ``study``, as the SR numbers the images.
    ``display``: the source's :class:`DisplayCopy` made when it was scored; then
    neither the source's pixels nor ``cams`` are read (the picture is the same).
    """
    rows, columns = int(source.Rows), int(source.Columns)
    checked = check_assessment(assessment, "assessment", source)
    checked_study = _check_study(study, image_number, checked)
    if display is None:
        display = display_copy(source, checked, cams)
    else:
        display = _check_display(display, rows, columns, checked)
    scale = _output_scale(rows, columns)
    width, height = output_size(rows, columns)
    gray = display.gray.astype(np.float32) / np.float32(255.0)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    del gray
    cmap = colormaps[COLORMAP]

    outlines: list[tuple[list[tuple[float, float]], tuple[int, int, int], str]] = []
    for side in checked.sides:
        positive = side_is_positive(side, checked.threshold)
        colour = UNKNOWN_RGB if positive is None else POSITIVE_RGB if positive else NEGATIVE_RGB
        if side.roi_polygon is None:
            continue
        points = check_polygon(
            side.roi_polygon, rows, columns, f"assessment.sides[{side.side}].roi_polygon"
        )
        scaled = [(float(x) * scale, float(y) * scale) for x, y in points]
        label = f"{side.side[0].upper()} " + (
            percent_text(side.probability) if side.probability is not None else "n/a"
        )
        outlines.append((scaled, colour, label))
        cam = display.cams.get(side.side)
        if cam is None:
            continue
        mask_img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_img).polygon(scaled, fill=255)
        box = mask_img.getbbox()  # the CAM is blended inside the ROI only: work there
        if box is None:
            continue
        x0, y0, x1, y1 = box
        mask = np.asarray(mask_img.crop(box), dtype=np.float32) / np.float32(255.0)
        heat = np.clip(np.asarray(cam[y0:y1, x0:x1], dtype=np.float32), 0, 1)
        alpha = (np.float32(_MAX_ALPHA) * heat * mask)[:, :, None]
        region = rgb[y0:y1, x0:x1]
        rgb[y0:y1, x0:x1] = region * (1 - alpha) + cmap(heat)[:, :, :3] * alpha

    rgb *= 255
    image = Image.fromarray(np.round(rgb, out=rgb).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    line_width = max(2, round(width / 400))
    label_font = _font(max(14, round(width / 40)), bold=True)
    for scaled, colour, label in outlines:
        draw.line(scaled, fill=colour, width=line_width, joint="curve")
        left = min(x for x, _ in scaled)
        top = min(y for _, y in scaled)
        draw.text(
            (left + line_width, max(0, top - label_font.size - line_width)),
            label,
            fill=colour,
            font=label_font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
    return _with_caption_band(np.asarray(image), checked, checked_study, bool(display.cams))


@dataclass(frozen=True)
class _Study:
    """The report's assessments and where this image is among them (None: not said)."""

    assessments: Sequence[ImageAssessment]
    image_number: int | None


def _check_study(study: object, image_number: object, assessment: ImageAssessment) -> _Study:
    if study is None:
        if image_number not in (None, 1):
            raise ValueError(f"image_number: {image_number!r} given without a study")
        return _Study([assessment], None)
    if not isinstance(study, Sequence) or isinstance(study, (str, bytes)) or not study:
        raise TypeError("study: expected a non-empty list of ImageAssessment")
    if image_number is not None and (
        isinstance(image_number, bool)
        or not isinstance(image_number, int)
        or not 1 <= image_number <= len(study)
    ):
        raise ValueError(f"image_number: expected 1 to {len(study)}, got {image_number!r}")
    for i, other in enumerate(study):
        if not isinstance(other, ImageAssessment):
            raise TypeError(f"study[{i}]: expected an ImageAssessment, got {type(other).__name__}")
        if (other.model_name, other.model_version, other.threshold) != (
            assessment.model_name,
            assessment.model_version,
            assessment.threshold,
        ):
            raise ValueError(
                f"study[{i}]: from another model or operating point than the assessment; "
                "one report is made by one model"
            )
    return _Study(study, image_number)


def _decision_rgb(decision: bool | None) -> tuple[int, int, int]:
    return UNKNOWN_RGB if decision is None else POSITIVE_RGB if decision else NEGATIVE_RGB


def _caption_lines(
    assessment: ImageAssessment, context: _Study
) -> list[tuple[str, tuple[int, int, int]]]:
    study = context.assessments
    lines: list[tuple[str, tuple[int, int, int]]] = [
        (identity.TRIAGE_DISCLAIMER.upper(), DISCLAIMER_RGB)
    ]
    if assessment.synthetic_model:
        lines.append((identity.SYNTHETIC_DISCLAIMER.upper(), DISCLAIMER_RGB))
    # In a report of several images, say which one this is, as the SR names it.
    number = context.image_number
    label = image_label(number, len(study)) if number is not None else ""
    for side in ordered_sides(assessment):
        text = side_result(side, assessment.threshold)
        text = f"{label}, {text}" if label else text
        colour = TEXT_RGB if side.probability is not None else NOTE_RGB
        lines.append((text[:1].upper() + text[1:], colour))
    lines.append((f"Study: {study_conclusion(study)}", _decision_rgb(study_decision(study))))
    lines.extend((f"Note: {note}", NOTE_RGB) for note in reader_notes(assessment))
    lines.append((f"Model: {assessment.model_name} {assessment.model_version}", TEXT_RGB))
    return lines


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Break ``text`` at spaces into lines no wider than ``width`` pixels (long words stay)."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    return lines


def _with_caption_band(
    image: np.ndarray, assessment: ImageAssessment, study: _Study, with_cam: bool
) -> np.ndarray:
    height, width = image.shape[:2]
    font_size = max(14, round(width / 48))
    font = _font(font_size)
    bold = _font(font_size, bold=True)
    margin = font_size // 2
    indent = font_size
    line_height = round(font_size * 1.35)
    rows: list[tuple[str, tuple[int, int, int], ImageFont.FreeTypeFont, int]] = []
    for i, (text, colour) in enumerate(_caption_lines(assessment, study)):
        face = bold if i == 0 else font
        for j, part in enumerate(_wrap(text, face, width - 2 * margin - indent)):
            rows.append((part, colour, face, indent if j else 0))
    bar_height = font_size if with_cam else 0
    legend = _wrap(ATTENTION_LEGEND, font, width - 3 * margin - max(10, width // 3))
    legend_height = max(bar_height, line_height * len(legend)) + line_height // 2
    band = margin * 2 + line_height * len(rows) + (legend_height if with_cam else 0)
    canvas = Image.new("RGB", (width, height + band), (0, 0, 0))
    canvas.paste(Image.fromarray(image, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + margin
    for text, colour, face, x in rows:
        draw.text((margin + x, y), text, fill=colour, font=face)
        y += line_height
    if with_cam:
        bar_width = max(10, width // 3)
        ramp = colormaps[COLORMAP](np.linspace(0, 1, bar_width))[:, :3]
        bar = np.round(np.repeat(ramp[None, :, :], bar_height, axis=0) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(bar, mode="RGB"), (margin, y + font_size // 6))
        for k, part in enumerate(legend):
            draw.text((margin * 2 + bar_width, y + k * line_height), part, fill=TEXT_RGB, font=font)
    return np.asarray(canvas, dtype=np.uint8)


def _patient_orientation(source: pydicom.Dataset) -> tuple[str, str]:
    orientation = source.get("PatientOrientation")
    if orientation and len(orientation) == 2 and all(orientation):
        return str(orientation[0]), str(orientation[1])
    view = str(source.get("ViewPosition", "")).upper()
    # Without Patient Orientation, the standard display of a frontal view: AP -> rows
    # run to the patient's left, columns to the feet; PA -> to the right.
    if view == "PA":
        return "R", "F"
    if view in ("AP", ""):
        return "L", "F"
    raise ValueError(f"source: no Patient Orientation and view {view!r} is not AP/PA")


def _header(ds: pydicom.Dataset) -> pydicom.Dataset:
    header = pydicom.Dataset()
    for elem in ds:
        if elem.tag.group not in (0x7FE0, 0x0002):
            header.add(deepcopy(elem))
    return header


def build_heatmap(
    source: pydicom.Dataset,
    assessment: ImageAssessment,
    cams: Mapping[str, np.ndarray] | None = None,
    *,
    report_version: int,
    series_number: int = SC_SERIES_NUMBER,
    content_datetime: datetime.datetime | None = None,
    study: Sequence[ImageAssessment] | None = None,
    image_number: int | None = None,
    transfer_syntax: str = DEFAULT_TRANSFER_SYNTAX,
    display: DisplayCopy | None = None,
) -> hd.sc.SCImage:
    """Build the RGB secondary capture of ``source`` with the model's heatmap burned in.

    Parameters
    ----------
    source:
        The scored radiograph (with pixel data unless ``display`` is given), grayscale,
        one frame.
    assessment:
        The model's result for ``source``.
    cams:
        Per side ("left"/"right"), the class-activation map on the source pixel
        grid, values in [0, 1]; None (no CAM from the model) draws only the ROIs.
    report_version:
        The study's report version (see :func:`triage_node.report.sr.build_study_report`).
    series_number:
        Series Number of the heatmap series.
    content_datetime:
        Content Date/Time; default derived from the source (deterministic).
    study:
        The assessments of every image in the study's report, this one included:
        the caption states the study result as the SR does. Default: this image
        alone (a one-image study).
    image_number:
        This image's 1-based position in ``study`` (the SR's "image N"), so that
        the caption of a several-image report names it; None: not named.
    transfer_syntax:
        How the pixels are encoded: a key of :data:`TRANSFER_SYNTAXES`.
    display:
        The source's :class:`DisplayCopy` made when scoring: the heatmap is drawn from
        it (same picture) and ``source`` needs no pixel data; None: from ``source``.

    Raises ``TypeError``/``ValueError`` naming the argument before anything is built.
    """
    if not isinstance(source, pydicom.Dataset):
        raise TypeError(f"source: expected a pydicom Dataset, got {type(source).__name__}")
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "Rows", "Columns"):
        if not source.get(kw):
            raise ValueError(f"source: {kw} is missing")
    checked = check_assessment(assessment, "assessment", source)
    checked_study = _check_study(study, image_number, checked)
    if isinstance(series_number, bool) or not isinstance(series_number, int) or series_number < 1:
        raise ValueError(f"series_number: expected a positive int, got {series_number!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"transfer_syntax: {transfer_syntax!r} is not one of {sorted(TRANSFER_SYNTAXES)}"
        )
    syntax_uid, photometric = TRANSFER_SYNTAXES[transfer_syntax]
    if content_datetime is None:
        content_datetime = content_datetime_of([source])
    elif not isinstance(content_datetime, datetime.datetime):
        raise TypeError("content_datetime: expected a datetime.datetime")
    uids = heatmap_uids(
        source.StudyInstanceUID, source.SOPInstanceUID, checked.model_version, report_version
    )
    orientation = _patient_orientation(source)
    pixels = render_heatmap(
        source, checked, cams, checked_study.assessments, image_number, display=display
    )

    sides = sorted({s.side for s in checked.sides})
    laterality = {"left": "L", "right": "R"}[sides[0]] if len(sides) == 1 else None
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_header(source),
        pixel_array=pixels,
        photometric_interpretation=photometric,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=report_version,
        manufacturer=identity.MANUFACTURER,
        # series Laterality (Type 2C) may not be sent when Image Laterality is (dciodvfy)
        laterality=None,
        patient_orientation=orientation,
        series_description=identity.SC_SERIES_DESCRIPTION,
        manufacturer_model_name=identity.MANUFACTURER_MODEL_NAME,
        software_versions=software_versions(checked),
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
        series_date=content_datetime.date(),
        series_time=content_datetime.time(),
        transfer_syntax_uid=syntax_uid,
    )
    if syntax_uid == JPEGBaseline8Bit:
        sc.LossyImageCompression = "01"  # Type 1C once lossy compressed (PS3.3 C.7.6.1.1.5)
        sc.LossyImageCompressionRatio = f"{3 * sc.Rows * sc.Columns / len(sc.PixelData):.2f}"[:16]
        sc.LossyImageCompressionMethod = "ISO_10918_1"
    sc.BurnedInAnnotation = "YES"
    sc.ImageLaterality = laterality or "B"  # both hips on one image
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    sc.DerivationDescription = (
        f"Radiograph windowed, {COLORMAP} gradient-weighted class-activation map (scaled "
        "per image) over the femur ROIs, "
        f"burned-in results of {checked.model_name} {checked.model_version}"
    )[:1024]
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    add_algorithm_identity(
        sc, checked, content_datetime, "Grad-CAM heatmap and results burned into the radiograph"
    )
    pin_creation_datetime(sc, content_datetime)
    return sc


def caption_text(
    assessment: ImageAssessment,
    study: Sequence[ImageAssessment] | None = None,
    image_number: int | None = None,
) -> list[str]:
    """The caption lines burned in below the picture, before wrapping (tests and logs)."""
    checked = check_assessment(assessment, "assessment")
    context = _check_study(study, image_number, checked)
    return [text for text, _ in _caption_lines(checked, context)]
