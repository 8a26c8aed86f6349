"""Decoding a radiograph for the model: pixels as a viewer shows them, plus pixel spacing.

Steps, in the order a viewer applies them: decode Pixel Data (any transfer
syntax pydicom's installed plugins handle), then the model's variant of
:func:`triage_node.display.display_pixels`: Modality LUT, VOI LUT or window
onto the VOI's own output range, MONOCHROME1 mirrored about the image's own
range so that bone is always bright. Then the collimated field is found and
the area outside it set to the image's brightest value, and the saturated
stored values (before windowing) are kept as a mask for the metal check
(:mod:`triage_node.score.input_checks`). Spacing comes from Pixel Spacing
(calibrated), else Imager Pixel Spacing divided by the Estimated Radiographic
Magnification Factor, else Nominal Scanned Pixel Spacing, else
:data:`FALLBACK_SPACING_MM` with a recorded warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
from scipy import ndimage

from triage_node.assessment import NotScorable
from triage_node.display import display_pixels
from triage_node.score.input_checks import (
    Field,
    fill_outside,
    find_field,
    saturated_pixels,
)

#: Used when the header gives no spacing: a typical CR/DX detector pitch (mm).
FALLBACK_SPACING_MM = 0.15
#: Saturated pixels this close (mm) inside the collimated field's edge are the
#: blade's penumbra, not metal.
FIELD_INSET_MM = 4.0


@dataclass(frozen=True)
class DecodedImage:
    """A radiograph ready for ROI finding.

    ``pixels``: float64 (rows, columns), bone bright, in the source grid.
    ``spacing_mm``: (row, column) spacing in mm; ``spacing_source`` names the
    attribute it came from (or ``"fallback"``). ``warnings`` are short,
    PHI-free notes for the report. ``field``: the collimated field found
    (:func:`~triage_node.score.input_checks.find_field`); outside it
    ``pixels`` hold the image's brightest value. ``saturated``: pixels whose
    stored value is at the bright end before any windowing, inside the field
    (None when not computed: the metal check then uses ``pixels``' own top).
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float]
    spacing_source: str
    warnings: tuple[str, ...] = ()
    field: Field | None = None
    saturated: np.ndarray | None = None


def _uid(ds: pydicom.Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "<no SOP Instance UID>"))


def _spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str]:
    def pair(keyword: str) -> tuple[float, float] | None:
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return None
        return (row, col) if row > 0 and col > 0 else None

    if (spacing := pair("PixelSpacing")) is not None:
        return spacing, "PixelSpacing"
    if (spacing := pair("ImagerPixelSpacing")) is not None:
        try:
            magnification = float(ds.get("EstimatedRadiographicMagnificationFactor", 1.0) or 1.0)
        except (TypeError, ValueError):
            magnification = 1.0
        if magnification <= 0:
            magnification = 1.0
        source = "ImagerPixelSpacing"
        if magnification != 1.0:
            source += "/EstimatedRadiographicMagnificationFactor"
        return (spacing[0] / magnification, spacing[1] / magnification), source
    if (spacing := pair("NominalScannedPixelSpacing")) is not None:
        return spacing, "NominalScannedPixelSpacing"
    return None, "fallback"


def decode_radiograph(ds: pydicom.Dataset) -> DecodedImage:
    """Decode one single-frame greyscale radiograph the way a viewer displays it.

    Raises :class:`NotScorable` naming the SOP Instance UID when the pixel
    data cannot be decoded or are not a single greyscale frame.
    """
    uid = _uid(ds)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise NotScorable(f"instance {uid}: colour image (Samples per Pixel != 1)")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise NotScorable(f"instance {uid}: multi-frame image")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise NotScorable(f"instance {uid}: Photometric Interpretation {photometric!r}")
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot score"
        raise NotScorable(f"instance {uid}: pixel data do not decode: {exc}") from None
    if raw.ndim != 2:
        raise NotScorable(f"instance {uid}: pixel array has shape {raw.shape}, expected 2-D")
    pixels = display_pixels(ds, output_range=None, dtype=np.float64, invert="pixel_range")
    spacing, source = _spacing(ds)
    warnings: list[str] = []
    if spacing is None:
        spacing = (FALLBACK_SPACING_MM, FALLBACK_SPACING_MM)
        warnings.append(
            f"no pixel spacing in the header; assumed {FALLBACK_SPACING_MM} mm "
            "(ROI size and shape features may be off)"
        )
    elif spacing[0] != spacing[1]:
        warnings.append(f"non-square pixels {spacing[0]} x {spacing[1]} mm")
    field = find_field(pixels, spacing)
    if np.shares_memory(pixels, raw):  # filled in place below: never the dataset's own array
        pixels = pixels.copy()
    pixels = fill_outside(pixels, field)
    inset = int(np.ceil(FIELD_INSET_MM / min(spacing)))
    saturated = saturated_pixels(raw, photometric) & field.mask(raw.shape, inset)
    return DecodedImage(pixels, spacing, source, tuple(warnings), field, saturated)


def resample_to_spacing(
    pixels: np.ndarray, spacing_mm: tuple[float, float], target_mm: float
) -> np.ndarray:
    """Resample ``pixels`` to square ``target_mm`` pixels (Gaussian anti-alias, then linear).

    Output shape is ``round(shape * spacing / target)``; row r of the output
    samples source row ``r * target / spacing_row`` (same convention as
    :class:`triage_node.score.geometry.RoiGeometry`).

    The anti-alias filter is a Gaussian of sigma ``0.5 * step`` source pixels. For
    large reductions (a full-size radiograph to the femur finder's grid: steps of
    ~20) it is applied in two parts: a mean over k x k blocks (k = step // 4, a box
    filter of variance (k^2 - 1) / 12) and a Gaussian for the remaining variance on
    the k-times smaller grid. The result matches the one-pass filter to a fraction of
    a percent of the image's range and costs a small fraction of its time.
    """
    if target_mm <= 0 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing: source {spacing_mm} and target {target_mm} must be > 0")
    steps = np.array([target_mm / spacing_mm[0], target_mm / spacing_mm[1]])
    image = np.asarray(pixels, dtype=np.float64)
    shape = np.maximum(np.round(np.array(image.shape) / steps).astype(int), 1)
    sigma = np.where(steps > 1.0, 0.5 * steps, 0.0)  # anti-alias only when shrinking
    k = np.maximum(np.floor(steps / 4.0).astype(int), 1)
    k = np.minimum(k, np.maximum(np.array(image.shape) // 2, 1))
    if np.any(k > 1):
        h, w = image.shape[0] // k[0] * k[0], image.shape[1] // k[1] * k[1]
        image = image[:h, :w].reshape(h // k[0], k[0], w // k[1], k[1]).mean(axis=(1, 3))
        sigma = np.sqrt(np.maximum(sigma**2 - (k.astype(float) ** 2 - 1) / 12.0, 0.0)) / k
    if np.any(sigma > 0):
        image = ndimage.gaussian_filter(image, sigma=sigma)
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    # Source row r lies at block coordinate (r - (k - 1) / 2) / k.
    return ndimage.map_coordinates(
        image,
        [(rows * steps[0] - (k[0] - 1) / 2) / k[0], (cols * steps[1] - (k[1] - 1) / 2) / k[1]],
        order=1,
        mode="nearest",
    )
