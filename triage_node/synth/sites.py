"""Acquisition profiles of other sites: what a second hospital's images do differently.

A :class:`SiteProfile` changes how an image is acquired and processed, never
the subject or the anatomy's bone: collimation borders (bright and grainy, as
an unshuttered CR plate shows them, or an electronic shutter's flat fill),
highlight clipping after strong edge enhancement, range compression, gamma,
noise and detector pitch, anti-scatter grid lines, a lead L/R marker beside
the hip, and metal (prostheses, neck screws, a sliding hip screw with its
side plate). ``default`` is the generator as it always was: the same seed
gives the same bytes with or without ``profile="default"``.

All of a profile's random choices come from their own stream
(``(seed, index, 2)``), so the default path draws exactly what it drew before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triage_node.synth.vendors import VendorProfile

DEFAULT_PROFILE = "default"
HARDWARE = ("prosthesis", "screws", "plate")  # metal kinds a hip can carry
BORDERS = ("leakage", "unshuttered", "shutter_black", "shutter_white")


@dataclass(frozen=True)
class SiteProfile:
    """One site's acquisition and processing habits (see module doc).

    ``vendor``: the modality the site uses (None: the cohort's choice), with
    ``vendor_changes`` applied on top (``spacing_mm`` keeps the field of view:
    rows and columns are rescaled). ``collimation_rate``: share of images with
    a collimated field (None: the default 70%); ``clearance_mm``: closest the
    blades come to the proximal femurs. ``border``: how the area outside the
    field looks (:data:`BORDERS`; ``leakage`` is the default's 2% leakage that
    processing pushes to saturation). ``clip_gain``: the LUT output is scaled
    by this and hard-clipped at the top of the output range (1: no clipping;
    bone highlights saturate above 1). ``dose``: dose factor (noise).
    ``gamma``: extra power on the LUT output. ``grid``: anti-scatter grid line
    contrast (0: none). ``hip_marker``: the lead letter lies beside the hip
    instead of in a top corner. ``metal_rate``: share of hips carrying metal,
    split over ``metal_kinds`` in equal parts.
    """

    name: str
    description: str
    vendor: str | None = None
    vendor_changes: dict[str, Any] = field(default_factory=dict)
    collimation_rate: float | None = None
    clearance_mm: float = 8.0
    border: str = "leakage"
    clip_gain: float = 1.0
    dose: float = 1.0
    gamma: float = 1.0
    grid: float = 0.0
    hip_marker: bool = False
    metal_rate: float = 0.0
    metal_kinds: tuple[str, ...] = HARDWARE

    def __post_init__(self) -> None:
        if self.border not in BORDERS:
            raise ValueError(f"profile {self.name}: border {self.border!r} not in {BORDERS}")
        if set(self.metal_kinds) - set(HARDWARE):
            raise ValueError(f"profile {self.name}: metal kinds {self.metal_kinds}")

    def vendor_profile(self, vendor: VendorProfile) -> VendorProfile:
        """``vendor`` with this site's changes (same field of view when the pitch changes)."""
        changes = dict(self.vendor_changes)
        if "spacing_mm" in changes:
            factor = vendor.spacing_mm / float(changes["spacing_mm"])
            changes["rows"] = int(round(vendor.rows * factor))
            changes["cols"] = int(round(vendor.cols * factor))
        return dataclasses.replace(vendor, **changes) if changes else vendor

    def draw(self, rng: np.random.Generator) -> SiteImage:
        """This profile's choices for one image (metal per side, border fill, grid pitch)."""
        metal: dict[str, str | None] = {}
        for side in ("R", "L"):
            has = rng.random() < self.metal_rate
            kind = self.metal_kinds[int(rng.integers(len(self.metal_kinds)))]
            metal[side] = kind if has else None
        border = self.border
        if border == "shutter_black" and rng.random() < 0.3:
            border = "shutter_white"
        return SiteImage(self, metal, border, float(rng.uniform(2.4, 3.6)))


@dataclass(frozen=True)
class SiteImage:
    """A profile's draws for one image.

    ``metal``: per side ("R", "L") "prosthesis", "screws", "plate" or None.
    ``border``: the fill outside the collimated field (:data:`BORDERS`).
    ``grid_period_px``: the grid lines' period on the detector grid.
    """

    profile: SiteProfile
    metal: dict[str, str | None]
    border: str
    grid_period_px: float


SITE_PROFILES: dict[str, SiteProfile] = {
    p.name: p
    for p in (
        SiteProfile(DEFAULT_PROFILE, "the generator's own images (unchanged)"),
        SiteProfile(
            "cr_unshuttered",
            "CR, MONOCHROME1 12-bit RLE 0.175 mm; tight collimation whose unexposed border "
            "is bright and grainy (not flat, not saturated); neck screws, plates, prostheses",
            vendor="tamarind",
            collimation_rate=1.0,
            clearance_mm=-3.0,
            border="unshuttered",
            metal_rate=0.08,
        ),
        SiteProfile(
            "dx_clipped",
            "DX, MONOCHROME2 14-bit 0.148 mm; strong edge enhancement, then the brightest "
            "bone is hard-clipped at the top of the range; metal as in cr_unshuttered",
            vendor="orion",
            vendor_changes={
                "spacing_mm": 0.148,
                "edge_amount": 2.2,
                "edge_sigma_mm": 1.5,
                "output_range": (0.0, 1.0),
            },
            clip_gain=1.3,
            metal_rate=0.08,
        ),
        SiteProfile(
            "shutter",
            "DX with electronic shutters: outside the collimated field a flat black or "
            "white fill with a sharp edge; collimation on every image",
            vendor="kestrel",
            collimation_rate=1.0,
            clearance_mm=4.0,
            border="shutter_black",
            metal_rate=0.08,
        ),
        SiteProfile(
            "compressed",
            "DX 0.10 mm pitch, strong range compression, flatter gamma, half the dose (noisier)",
            vendor="vireo",
            vendor_changes={"spacing_mm": 0.10, "range_compression": 0.9, "lut_param": 0.4},
            dose=0.5,
            gamma=0.8,
            metal_rate=0.08,
        ),
        SiteProfile(
            "grid_marker",
            "CR 0.2 mm with a stationary anti-scatter grid (line pattern) and the lead L/R "
            "marker placed beside the hip",
            vendor="halvard",
            grid=0.06,
            hip_marker=True,
            metal_rate=0.08,
        ),
        SiteProfile(
            "metal",
            "the default vendors, with a quarter of hips carrying saturating, sharp-edged "
            "metal: total hip prostheses, three neck screws, or a sliding hip screw and plate",
            metal_rate=0.25,
        ),
    )
}


def site_profile(name: str | None) -> SiteProfile | None:
    """The named profile, None for the default path; ValueError naming the known ones."""
    if name is None or name == DEFAULT_PROFILE:
        return None
    if name not in SITE_PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(SITE_PROFILES)}")
    return SITE_PROFILES[name]
