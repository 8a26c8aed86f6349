"""Vendor profiles: detector, processing and header conventions of fictional modalities."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)


@dataclass(frozen=True)
class VendorProfile:
    """How one (fictional) modality acquires, processes and writes an image."""

    name: str
    manufacturer: str
    model: str
    modality: str  # "DX" or "CR"
    sop_class_uid: str
    photometric: str  # MONOCHROME1 or MONOCHROME2
    bits_stored: int
    spacing_mm: float  # full-size detector pitch
    rows: int  # full-size matrix
    cols: int
    transfer_syntax: str
    quanta_per_mm2: float  # detected quanta per mm^2 at the AEC target (DQE included)
    blur_px: float  # detector blur, Gaussian sigma at full size
    scatter_fraction: float  # scatter-to-primary ratio behind 20 cm of tissue
    edge_amount: float  # unsharp-mask gain
    edge_sigma_mm: float
    range_compression: float  # subtract this much of the 25 mm low-pass
    lut: str  # "sigmoid", "gamma" or "linear"
    lut_param: float
    output_range: tuple[float, float]  # fraction of 2**bits_stored - 1 used
    header_style: str  # "full", "minimal" or "legacy"


VENDORS: dict[str, VendorProfile] = {
    p.name: p
    for p in (
        VendorProfile(
            "kestrel",
            "Kestrel Synthetic Imaging",
            "KX-4300 (synthetic)",
            "DX",
            DigitalXRayImageStorageForPresentation,
            "MONOCHROME2",
            16,
            0.139,
            2500,
            3000,
            JPEGLosslessSV1,
            9.0e4,
            0.8,
            0.35,
            0.8,
            1.5,
            0.7,
            "sigmoid",
            0.22,
            (0.02, 0.96),
            "full",
        ),
        VendorProfile(
            "nordlys",
            "Nordlys Synthetic Medical",
            "NL Flatpanel 2 (synthetic)",
            "DX",
            DigitalXRayImageStorageForPresentation,
            "MONOCHROME1",
            12,
            0.148,
            2400,
            2880,
            ExplicitVRLittleEndian,
            7.0e4,
            0.9,
            0.45,
            0.5,
            2.5,
            0.8,
            "gamma",
            1.4,
            (0.0, 1.0),
            "full",
        ),
        VendorProfile(
            "orion",
            "Orion Synthetic Radiography",
            "OR-DR 14 (synthetic)",
            "DX",
            DigitalXRayImageStorageForPresentation,
            "MONOCHROME2",
            14,
            0.160,
            2208,
            2688,
            JPEGLSLossless,
            8.0e4,
            0.7,
            0.40,
            1.1,
            1.0,
            0.6,
            "sigmoid",
            0.3,
            (0.05, 0.9),
            "minimal",
        ),
        VendorProfile(
            "tamarind",
            "Tamarind Synthetic CR",
            "TCR-500 (synthetic)",
            "CR",
            ComputedRadiographyImageStorage,
            "MONOCHROME1",
            12,
            0.175,
            2000,
            2430,
            RLELossless,
            3.5e4,
            1.1,
            0.5,
            0.6,
            3.0,
            0.65,
            "gamma",
            0.8,
            (0.03, 0.98),
            "legacy",
        ),
        VendorProfile(
            "halvard",
            "Halvard Synthetic Systems",
            "HV Reader (synthetic)",
            "CR",
            ComputedRadiographyImageStorage,
            "MONOCHROME2",
            12,
            0.200,
            1760,
            2140,
            JPEG2000Lossless,
            3.0e4,
            1.0,
            0.5,
            0.4,
            2.0,
            0.7,
            "linear",
            1.0,
            (0.0, 1.0),
            "minimal",
        ),
        VendorProfile(
            "vireo",
            "Vireo Synthetic Diagnostics",
            "VR-Hip 30 (synthetic)",
            "DX",
            DigitalXRayImageStorageForPresentation,
            "MONOCHROME2",
            15,
            0.120,
            2500,
            3500,
            ImplicitVRLittleEndian,
            1.2e5,
            0.9,
            0.35,
            0.9,
            1.2,
            0.65,
            "sigmoid",
            0.26,
            (0.0, 0.94),
            "legacy",
        ),
    )
}

SMALL_COLS = 640


def matrix(profile: VendorProfile, size: str) -> tuple[int, int, float]:
    """(rows, cols, spacing_mm) of the detector for ``size`` "full" or "small".

    "small" keeps the field of view (so the anatomy) and coarsens the spacing.
    """
    if size == "full":
        return profile.rows, profile.cols, profile.spacing_mm
    if size == "small":
        factor = profile.cols / SMALL_COLS
        return int(round(profile.rows / factor)), SMALL_COLS, round(profile.spacing_mm * factor, 4)
    raise ValueError(f"size must be 'full' or 'small', got {size!r}")
