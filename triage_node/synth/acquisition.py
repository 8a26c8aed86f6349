"""Turn projected attenuation into a processed radiograph: exposure, noise, vendor LUT."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import ndtr

from triage_node.synth.noise import resize
from triage_node.synth.sites import SiteImage
from triage_node.synth.vendors import VendorProfile


@dataclass(frozen=True)
class Exposure:
    """Per-image acquisition settings."""

    kvp: float
    dose: float  # relative detector dose (1 = the AEC target)
    collimation_mm: tuple[float, float, float, float] | None  # top, bottom, left, right margins
    window_shift: float  # per-image processing jitter
    window_gain: float
    gamma_jitter: float


METAL_SCATTER_BLOCK = 0.55  # share of the scatter an implant absorbs (generated in front)
MARKER_SCATTER_BLOCK = 0.97  # a lead marker lies on the detector: it absorbs all but a trace
COLLIMATION_CLEARANCE_MM = 8.0  # shutter blades stay this far from the proximal femurs


def draw_exposure(
    rng: np.random.Generator,
    body_thickness_mm: float,
    keep_clear_mm: tuple[float, float, float, float] | None = None,
) -> Exposure:
    """AEC-like exposure: dose varies around the target; thicker patients get higher kVp.

    ``keep_clear_mm`` (top, bottom, left, right): distance from each image edge
    to the anatomy the radiographer must not collimate away (the proximal
    femurs); each shutter margin stays ``COLLIMATION_CLEARANCE_MM`` short of it.
    """
    collimate = rng.random() < 0.7
    kvp = float(np.clip(65 + 0.06 * (body_thickness_mm - 200) + rng.normal(0, 3), 60, 90))
    dose = float(np.exp(rng.normal(0.0, 0.3)))
    margins = [float(x) for x in rng.uniform(4, 30, 4)] if collimate else None
    if margins is not None and keep_clear_mm is not None:
        margins = [
            min(m, max(k - COLLIMATION_CLEARANCE_MM, 0.0))
            for m, k in zip(margins, keep_clear_mm, strict=True)
        ]
    return Exposure(
        kvp=kvp,
        dose=dose,
        collimation_mm=tuple(margins) if margins is not None else None,  # type: ignore[arg-type]
        window_shift=float(rng.normal(0.0, 0.05)),
        window_gain=float(np.exp(rng.normal(0.0, 0.08))),
        gamma_jitter=float(np.exp(rng.normal(0.0, 0.1))),
    )


def scatter_block(
    metal: np.ndarray | None, marker: np.ndarray | None, marker_mu: float
) -> np.ndarray | None:
    """Fraction of the scatter absorbed before the detector at each pixel.

    An implant mid-body absorbs the scatter generated in front of it (about
    half; ``metal`` is its path length in mm). A lead marker on the detector
    absorbs nearly all of it (``marker``: its attenuation, ``marker_mu`` when
    fully covered). Both therefore stay far beyond the anatomy's signal range.
    """
    block: np.ndarray | None = None
    if metal is not None:
        block = (METAL_SCATTER_BLOCK * np.clip(metal / 2.0, 0.0, 1.0)).astype(np.float32)
    if marker is not None:
        rows, cols = np.nonzero(marker.any(axis=1))[0], np.nonzero(marker.any(axis=0))[0]
        if rows.size:
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            if block is None:
                block = np.zeros(marker.shape, np.float32)
            lead = MARKER_SCATTER_BLOCK * np.clip(marker[box] / marker_mu, 0.0, 1.0)
            block[box] = np.maximum(block[box], lead)
    return block


def _lowpass(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass, computed on a decimated copy when wide (cost independent of sigma)."""
    factor = max(1, int(sigma_px / 3))
    if factor == 1:
        return ndimage.gaussian_filter(img, sigma_px)
    small = resize(img, (max(2, img.shape[0] // factor), max(2, img.shape[1] // factor)))
    small = ndimage.gaussian_filter(small, sigma_px / factor, mode="nearest")
    return resize(small, img.shape)


def expose(
    attenuation: np.ndarray,
    spacing_mm: float,
    profile: VendorProfile,
    exposure: Exposure,
    rng: np.random.Generator,
    full_spacing_mm: float,
    scatter_block: np.ndarray | None = None,
    site: SiteImage | None = None,
) -> np.ndarray:
    """Detector signal (log of detected quanta) for an attenuation map on the detector grid.

    ``scatter_block``: fraction (0-1) of the scatter absorbed on its way to each
    pixel (see :func:`scatter_block`), or None. ``site``: another site's
    profile (its anti-scatter grid lines act here), None for the default.
    """
    rows, cols = attenuation.shape
    centre = attenuation[rows // 3 : 2 * rows // 3, cols // 3 : 2 * cols // 3]
    reference = float(np.median(centre)) if centre.size else 0.0
    quanta = profile.quanta_per_mm2 * exposure.dose * spacing_mm**2
    # softer beams (low kVp) give more bone contrast
    contrast = float(np.clip(1.0 + (70.0 - exposure.kvp) * 0.008, 0.8, 1.2))
    primary = quanta * np.exp(
        np.clip(contrast * (reference - attenuation), -20.0, 4.0), dtype=np.float32
    )
    if exposure.collimation_mm is not None:
        # separable blurred shutter edges (penumbra ~1.5 mm), 2% leakage outside
        t, b, lft, r = (m / spacing_mm for m in exposure.collimation_mm)
        pen = 1.5 / spacing_mm
        y = np.arange(rows, dtype=np.float32) + 0.5
        x = np.arange(cols, dtype=np.float32) + 0.5
        prof_y = ndtr((y - t) / pen) * ndtr((rows - b - y) / pen)
        prof_x = ndtr((x - lft) / pen) * ndtr((cols - r - x) / pen)
        shutter = 0.02 + 0.98 * np.outer(prof_y, prof_x).astype(np.float32)
        primary = primary * shutter
    if site is not None and site.profile.grid > 0:
        # stationary grid: lead strips every few pixels absorb part of the primary beam
        x = np.arange(cols, dtype=np.float32)
        lines = 0.5 + 0.5 * np.cos(2.0 * np.pi * x / site.grid_period_px)
        primary = primary * (1.0 - site.profile.grid * lines)[None, :]
    spr = profile.scatter_fraction * float(np.exp(0.01 * max(reference / 0.021 - 200.0, -100.0)))
    scatter = spr * _lowpass(primary, 30.0 / spacing_mm)
    if scatter_block is not None:
        scatter = scatter * (1.0 - scatter_block)
    signal = (primary + scatter).astype(np.float32)
    noise = rng.standard_normal(signal.shape, dtype=np.float32)
    signal = signal + noise * np.sqrt(np.maximum(signal, 1.0))
    blur = profile.blur_px * full_spacing_mm / spacing_mm
    if blur > 0.3:
        signal = ndimage.gaussian_filter(signal, blur)
    return np.log(np.maximum(signal, 1.0)).astype(np.float32)


ANATOMY_HEADROOM = (0.03, 0.92)  # where the anatomy window's ends land on the LUT input
ANATOMY_CEILING = 0.9  # top of the output range anatomy can reach (bone never saturates)
BEYOND_RANGE = (1.15, 1.45)  # window units beyond the anatomy where display saturates


def process(
    log_signal: np.ndarray,
    spacing_mm: float,
    profile: VendorProfile,
    exposure: Exposure,
    metal: np.ndarray | None = None,
    site: SiteImage | None = None,
) -> np.ndarray:
    """Vendor processing to stored pixel values (uint16, photometric applied).

    ``site`` (None: the default): another site's gamma, highlight clipping and
    collimation border (see :mod:`triage_node.synth.sites`).

    As real processing does: the anatomy window comes from a histogram of the
    central field with implants left out (``metal``: path length through metal
    in mm, or None); the anatomy, after range compression, edge enhancement
    and the LUT, stays below ``ANATOMY_CEILING`` of the output range, so bone
    never saturates; signal far beyond the anatomy window (metal, lead markers,
    collimated areas) rises to saturation, the brightest displayed value.
    """
    rows, cols = log_signal.shape
    central = (slice(rows // 6, rows - rows // 6, 5), slice(cols // 6, cols - cols // 6, 5))
    sample = log_signal[central]
    if metal is not None:
        sample = sample[metal[central] < 0.05]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi - lo < 0.3:  # flat field (blank image): centre it
        lo, hi = lo - 1.0, hi + 1.0
    z0 = (hi - log_signal) / (hi - lo)  # attenuating = high; anatomy in [0, 1]
    beyond = np.clip((z0 - BEYOND_RANGE[0]) / (BEYOND_RANGE[1] - BEYOND_RANGE[0]), 0.0, 1.0)
    if metal is not None:  # implant recognition: metal is shown as beyond the anatomy
        beyond = np.maximum(beyond, np.clip((metal - 0.3) / 1.2, 0.0, 1.0))
    beyond = beyond * beyond * (3.0 - 2.0 * beyond)  # smoothstep
    h0, h1 = ANATOMY_HEADROOM
    z = h0 + (h1 - h0) * np.minimum(z0, BEYOND_RANGE[0])  # out-of-range values do not
    z = (z - exposure.window_shift) * exposure.window_gain  # drive the filters below
    low = _lowpass(z, 25.0 / spacing_mm)
    z = z - profile.range_compression * (low - float(low.mean()))
    if profile.edge_amount > 0:
        z = z + profile.edge_amount * (z - _lowpass(z, profile.edge_sigma_mm / spacing_mm))
    if profile.lut == "sigmoid":
        w = profile.lut_param * exposure.gamma_jitter
        out = 1.0 / (1.0 + np.exp(-(z - 0.5) / w))
        a, b = 1.0 / (1.0 + float(np.exp(0.5 / w))), 1.0 / (1.0 + float(np.exp(-0.5 / w)))
        out = (out - a) / (b - a)
    elif profile.lut == "gamma":
        out = np.clip(z, 0.0, 1.0) ** (profile.lut_param * exposure.gamma_jitter)
    else:
        out = z
    if site is None:
        out = ANATOMY_CEILING * np.clip(out, 0.0, 1.0)
        out = out + (1.0 - out) * beyond
    else:
        out = _site_output(out, z0, beyond, spacing_mm, exposure, site)
    maxval = (1 << profile.bits_stored) - 1
    f0, f1 = profile.output_range
    values = (f0 + (f1 - f0) * out) * maxval
    if site is not None and site.border.startswith("shutter") and exposure.collimation_mm:
        # electronic shutter: a flat fill with a sharp edge just inside the penumbra
        outside = ~_field(log_signal.shape, spacing_mm, exposure.collimation_mm, 1.5)
        values[outside] = (f0 if site.border == "shutter_black" else f1) * maxval
    if profile.photometric == "MONOCHROME1":
        values = maxval - values
    return np.clip(np.rint(values), 0, maxval).astype(np.uint16)


def _field(
    shape: tuple[int, ...], spacing_mm: float, margins_mm: tuple[float, ...], inset_mm: float
) -> np.ndarray:
    """Boolean mask of the collimated field, ``inset_mm`` inside the blades' nominal edges."""
    t, b, lft, r = ((m + inset_mm) / spacing_mm for m in margins_mm)
    rows, cols = shape
    y = np.arange(rows)[:, None] + 0.5
    x = np.arange(cols)[None, :] + 0.5
    return (y >= t) & (y <= rows - b) & (x >= lft) & (x <= cols - r)


def _site_output(
    out: np.ndarray,
    z0: np.ndarray,
    beyond: np.ndarray,
    spacing_mm: float,
    exposure: Exposure,
    site: SiteImage,
) -> np.ndarray:
    """The LUT output (0-1) to the output range for another site's profile.

    ``gamma`` acts on the LUT output; ``clip_gain`` above 1 lifts it so the
    brightest bone hits the top of the range and is hard-clipped there, as
    metal is; an ``unshuttered`` border is bright and grainy but not
    saturated (0.90-0.999 of the range, the plate's grain).
    """
    p = site.profile
    out = np.clip(out, 0.0, 1.0) ** p.gamma
    out = np.clip(ANATOMY_CEILING * p.clip_gain * out, 0.0, 1.0)
    if site.border == "unshuttered" and exposure.collimation_mm is not None:
        t, b, lft, r = (m / spacing_mm for m in exposure.collimation_mm)
        pen = 1.5 / spacing_mm
        rows, cols = z0.shape
        y = np.arange(rows, dtype=np.float32) + 0.5
        x = np.arange(cols, dtype=np.float32) + 0.5
        inside = np.outer(
            ndtr((y - t) / pen) * ndtr((rows - b - y) / pen),
            ndtr((x - lft) / pen) * ndtr((cols - r - x) / pen),
        ).astype(np.float32)
        grain = np.clip(z0, 0.0, 4.0)
        grain = grain - ndimage.uniform_filter(grain, max(3, int(round(4.0 / spacing_mm))))
        border = np.clip(0.975 + 2.5 * grain, 0.90, 0.999)
        beyond = beyond * inside  # the border's low signal does not saturate here
        out = out * inside + border * (1.0 - inside)
    return out + (1.0 - out) * beyond
