"""Input checks that hold across sites: the collimated field, saturation and metal's signature.

Three questions, each answered from what the pixels physically are rather
than from a fraction of the displayed grey range:

* **Where is the exposed field?** Outside the collimator blades a site shows
  either the plate's unexposed area (bright and grainy on an unshuttered CR, or
  pushed to saturation by processing) or an electronic shutter's flat fill
  (black or white). :func:`find_field` finds the bands along each image edge
  whose rows (columns) are bright -- their median is near the top of the
  image's range -- or black and flat, on a 2 mm copy of the image. It
  handles blades parallel to the image edges (the usual hip collimation); a
  rotated field is left unmasked. :func:`fill_outside` gives the area outside
  one value, the image's brightest (as the default processing shows a
  shuttered area), so that the femur finder sees every site's border alike.
* **Which pixels are saturated?** :func:`saturated_pixels` works on the stored
  values before any windowing (MONOCHROME1 turned so that "bright" is high):
  the pixels within a hair of the image's brightest stored value. Metal, lead
  markers and clipped highlights saturate; anatomy mostly does not.
* **Is there metal in this hip?** :func:`metal_in_hip`: saturated pixels near
  the femur that survive a morphological opening (so a clipped cortical line
  or speckle does not count), form a component of at least
  ``min_metal_mm2``, and end in a sharp step: the grey level just outside the
  component lies well below the saturation level (metal ends abruptly on
  bone; a clipped bone highlight fades into bone that is almost as bright).

SimpleITK does the morphology and the labelling (binary opening with a
ball kernel, connected components, label shape statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Grid of the field search (mm): coarse enough to be cheap on a full-size image.
FIELD_SPACING_MM = 2.0


@dataclass(frozen=True)
class Field:
    """The exposed field as source-pixel bounds ``[top, bottom) x [left, right)``."""

    top: int
    bottom: int
    left: int
    right: int

    def mask(self, shape: tuple[int, ...], inset_px: int = 0) -> np.ndarray:
        """Boolean mask of the field, ``inset_px`` pixels inside its detected edges."""
        out = np.zeros(shape[:2], dtype=bool)
        r0, c0 = (
            self.top + (inset_px if self.top else 0),
            self.left + (inset_px if self.left else 0),
        )
        r1 = self.bottom - (inset_px if self.bottom < shape[0] else 0)
        c1 = self.right - (inset_px if self.right < shape[1] else 0)
        out[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
        return out

    def collimated(self, shape: tuple[int, ...]) -> bool:
        """Whether any edge was found (the field is smaller than the image)."""
        return (self.top, self.left, self.bottom, self.right) != (0, 0, shape[0], shape[1])


def _edge_band(bright: np.ndarray, flat: np.ndarray, limit: int) -> int:
    """Length of the run of border-like lines from the start of the 1-D flags."""
    border = bright | flat
    n = 0
    while n < min(limit, border.size) and border[n]:
        n += 1
    return n


def _block_mean(
    pixels: np.ndarray, spacing_mm: tuple[float, float], target_mm: float
) -> np.ndarray:
    """Means over blocks of about ``target_mm`` (whole blocks only)."""
    k = [max(int(round(target_mm / s)), 1) for s in spacing_mm]
    rows, cols = pixels.shape[0] // k[0] * k[0], pixels.shape[1] // k[1] * k[1]
    image = np.asarray(pixels[:rows, :cols], dtype=np.float64)
    return image.reshape(rows // k[0], k[0], cols // k[1], k[1]).mean(axis=(1, 3))


def find_field(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    bright_level: float = 0.8,
    dark_level: float = 0.05,
    flat_spread: float = 0.01,
    max_band: float = 0.35,
) -> Field:
    """The collimated field of a decoded image (bone bright); see the module doc.

    A row (column) of the 2 mm copy is border-like when its median reaches
    ``bright_level`` of the range between the image's 1st percentile and its
    maximum (an unshuttered border, a white shutter), or when it is dark (median
    at most ``dark_level``) and flat (5th-95th percentile spread below
    ``flat_spread``): a black shutter. A flat mid-grey band is not a shutter.
    Bands of such lines are searched from each edge, up to ``max_band`` of
    the image.
    """
    small = _block_mean(pixels, spacing_mm, FIELD_SPACING_MM)
    whole = Field(0, pixels.shape[0], 0, pixels.shape[1])
    if min(small.shape) < 8:
        return whole
    lo, hi = float(np.percentile(small, 1.0)), float(small.max())
    if hi <= lo:
        return whole
    norm = (small - lo) / (hi - lo)
    bands = []
    for axis in (1, 0):  # per row (top, bottom), then per column (left, right)
        median = np.median(norm, axis=axis)
        p5, p95 = np.percentile(norm, [5.0, 95.0], axis=axis)
        bright = median >= bright_level
        flat = ((p95 - p5) < flat_spread) & (median <= dark_level)  # a black shutter fill
        limit = int(max_band * median.size)
        bands.append(_edge_band(bright, flat, limit))
        bands.append(_edge_band(bright[::-1], flat[::-1], limit))
    top, bottom, left, right = bands
    row_step = max(int(round(FIELD_SPACING_MM / spacing_mm[0])), 1)
    col_step = max(int(round(FIELD_SPACING_MM / spacing_mm[1])), 1)
    return Field(
        top=int(round(top * row_step)),
        bottom=pixels.shape[0] - int(round(bottom * row_step)),
        left=int(round(left * col_step)),
        right=pixels.shape[1] - int(round(right * col_step)),
    )


def fill_outside(pixels: np.ndarray, field: Field) -> np.ndarray:
    """Set everything outside ``field`` to the image's brightest value, in place; returns it."""
    if field.collimated(pixels.shape):
        pixels[~field.mask(pixels.shape)] = pixels.max()
    return pixels


def saturated_pixels(stored: np.ndarray, photometric: str, tolerance: float = 0.002) -> np.ndarray:
    """Pixels whose stored value lies within ``tolerance`` of the range of the brightest one.

    ``stored``: the stored values as decoded, before any LUT or window;
    MONOCHROME1 is turned round (its bright end is the lowest value).
    """
    top, bottom = float(stored.max()), float(stored.min())
    if top <= bottom:
        return np.zeros(stored.shape, dtype=bool)
    margin = max(tolerance * (top - bottom), 0.5)
    if photometric == "MONOCHROME1":
        return np.asarray(stored <= bottom + margin)
    return np.asarray(stored >= top - margin)


@dataclass(frozen=True)
class MetalRule:
    """Thresholds of :func:`metal_in_hip`.

    ``reach_mm``: how far from the femur mask metal still counts as in the
    hip. ``opening_mm``: radius of the opening that removes thin saturated
    lines and speckle. ``min_metal_mm2``: smallest metal component.
    ``min_step``: how far the grey level just outside a component
    (``ring_mm`` wide) must lie below its saturation level, as a fraction of
    the hip region's range (1st percentile to saturation).
    """

    reach_mm: float = 2.0
    opening_mm: float = 1.0
    min_metal_mm2: float = 30.0
    ring_mm: float = 2.0
    min_step: float = 0.25


@dataclass(frozen=True)
class MetalFinding:
    """The largest qualifying metal component near a hip (or why none qualified)."""

    found: bool
    area_mm2: float
    step: float


#: Metal that stands in for a femur the finder missed: a stem, screws or a plate,
#: far larger than a lead letter.
MISSED_FEMUR_METAL = MetalRule(reach_mm=0.0, min_metal_mm2=300.0)


def metal_where_femur_missing(
    pixels: np.ndarray,
    saturated: np.ndarray,
    spacing_mm: tuple[float, float],
    region: tuple[slice, slice],
) -> bool:
    """Whether ``region`` (a side's half of the image) holds metal the size of an implant.

    For a side whose femur was not found: a prosthesis or a plate can hide the
    femur from the finder, and "metal in the hip" is then the truer reason.
    Same signature as :func:`metal_in_hip` with :data:`MISSED_FEMUR_METAL`.
    """
    area = np.zeros(pixels.shape[:2], dtype=np.uint8)
    area[region] = 1
    return metal_in_hip(pixels, saturated, area, spacing_mm, MISSED_FEMUR_METAL).found


def _ball(radius_px: int) -> list[int]:
    return [max(int(radius_px), 1)] * 2


def metal_in_hip(
    pixels: np.ndarray,
    saturated: np.ndarray,
    femur: np.ndarray,
    spacing_mm: tuple[float, float],
    rule: MetalRule | None = None,
) -> MetalFinding:
    """Whether saturated, compact, sharp-edged metal lies in or at this femur (module doc).

    ``pixels``: decoded image (bone bright); ``saturated``: the saturation
    mask (:func:`saturated_pixels`, limited to the field); ``femur``: this
    hip's mask; all on the same grid.
    """
    rule = rule or MetalRule()
    inside = np.asarray(femur) != 0
    rows, cols = np.nonzero(inside)
    if not rows.size:
        return MetalFinding(False, 0.0, 0.0)
    pixel_mm = float(np.sqrt(spacing_mm[0] * spacing_mm[1]))
    reach = int(np.ceil(rule.reach_mm / pixel_mm))
    ring = int(np.ceil(rule.ring_mm / pixel_mm))
    pad = reach + ring + 2
    box = (
        slice(max(rows.min() - pad, 0), rows.max() + pad + 1),
        slice(max(cols.min() - pad, 0), cols.max() + pad + 1),
    )
    sat = np.asarray(saturated[box], dtype=bool)
    if not sat.any():
        return MetalFinding(False, 0.0, 0.0)
    near = inside[box]
    if reach > 0:
        near = sitk.GetArrayFromImage(
            sitk.BinaryDilate(sitk.GetImageFromArray(near.astype(np.uint8)), _ball(reach))
        ).astype(bool)
    candidate = sitk.GetImageFromArray((sat & near).astype(np.uint8))
    opened = sitk.BinaryMorphologicalOpening(
        candidate, _ball(int(round(rule.opening_mm / pixel_mm)))
    )
    labels = sitk.ConnectedComponent(opened)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(labels)
    region = np.asarray(pixels[box], dtype=np.float64)
    label_array = sitk.GetArrayFromImage(labels)
    best = MetalFinding(False, 0.0, 0.0)
    for label in stats.GetLabels():
        area = stats.GetNumberOfPixels(label) * spacing_mm[0] * spacing_mm[1]
        if area < rule.min_metal_mm2:
            continue
        component = label_array == label
        grown = sitk.GetArrayFromImage(
            sitk.BinaryDilate(sitk.GetImageFromArray(component.astype(np.uint8)), _ball(ring))
        ).astype(bool)
        outside = grown & ~sat
        if not outside.any():
            continue
        level = float(region[component].max())
        floor = float(np.percentile(region, 1.0))
        if level <= floor:
            continue
        step = (level - float(np.median(region[outside]))) / (level - floor)
        finding = MetalFinding(step >= rule.min_step, area, step)
        if finding.found and (not best.found or area > best.area_mm2):
            best = finding
        elif not best.found and step > best.step:
            best = MetalFinding(False, area, step)
    return best
