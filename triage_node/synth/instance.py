"""Render one synthetic radiograph (hip, chest or blank) as DICOM plus its latent truth."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from triage_node.synth import acquisition, dicomio, scene
from triage_node.synth.noise import resize
from triage_node.synth.sites import SiteImage, site_profile
from triage_node.synth.subjects import Subject, draw_subject
from triage_node.synth.vendors import VENDORS, VendorProfile, matrix

KINDS = ("hip", "chest", "blank")
PELVIS_STEP_MM = 0.5  # raster step for pelvis, soft tissue and gas (at least)


@dataclass
class SyntheticImage:
    """A rendered image: the dataset, per-side femur masks and the truth row for labels.csv."""

    dataset: Dataset
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # "L"/"R" -> bool (rows, cols)
    row: dict[str, Any] = field(default_factory=dict)


def _downsample(a: np.ndarray, ss: int, shape: tuple[int, int]) -> np.ndarray:
    if ss == 1:
        return a
    h, w = shape
    return a[: h * ss, : w * ss].reshape(h, ss, w, ss).mean(axis=(1, 3))


def render_instance(
    seed: int,
    *,
    size: str = "small",
    kind: str = "hip",
    vendor: str | None = None,
    osteoporotic: bool | None = None,
    prosthesis: tuple[bool, bool] = (False, False),
    laterality: str | None = None,
    transfer_syntax: str | None = None,
    prevalence: float = 0.38,
    index: int | None = None,
    profile: str | None = None,
) -> SyntheticImage:
    """Render one image. All randomness comes from ``(seed, index)``.

    ``vendor`` None picks one from the seed; ``prosthesis`` is (right, left);
    ``laterality`` "L"/"R" makes a unilateral hip image; ``index`` is the
    position in a cohort (None for a stand-alone instance). ``profile``: a
    site profile name (:data:`~triage_node.synth.sites.SITE_PROFILES`; None or
    ``"default"``: the generator's own images). With a profile the row gains
    the :data:`SITE_COLUMNS` (what was applied).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if laterality not in (None, "L", "R"):
        raise ValueError(f"laterality must be None, 'L' or 'R', got {laterality!r}")
    key: tuple[int, ...] = (int(seed),) if index is None else (int(seed), int(index))
    site_kind = site_profile(profile)
    site: SiteImage | None = None
    if site_kind is not None:
        site = site_kind.draw(np.random.default_rng((*key, 2)))
        vendor = site_kind.vendor or vendor
        if kind == "hip":
            prosthesis = (
                prosthesis[0] or site.metal["R"] == "prosthesis",
                prosthesis[1] or site.metal["L"] == "prosthesis",
            )
    rng = np.random.default_rng(key)
    if vendor and vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}; known: {sorted(VENDORS)}")
    profile_v: VendorProfile = (
        VENDORS[vendor] if vendor else VENDORS[sorted(VENDORS)[int(rng.integers(len(VENDORS)))]]
    )
    if site_kind is not None:
        profile_v = site_kind.vendor_profile(profile_v)
    rows, cols, spacing = matrix(profile_v, size)
    grid = scene.Grid(rows, cols, spacing)
    ss = 2 if spacing > 0.3 else 1  # supersample coarse grids so trabeculae are area-averaged
    subject: Subject = draw_subject(rng, prevalence, osteoporotic)
    render_rng = np.random.default_rng((*key, 1))

    masks: dict[str, np.ndarray] = {}
    geom = None
    if kind == "hip":
        geom = scene.draw_geometry(
            render_rng,
            grid,
            subject.sex,
            subject.weight_kg,
            subject.height_cm,
            prosthesis,
            laterality,
        )
        step = max(PELVIS_STEP_MM, spacing)
        coarse = scene.render_pelvis(grid, geom, render_rng, step)
        density = {"R": subject.density_right, "L": subject.density_left}
        fixation = None
        if site is not None:
            fixation = {k: v if v in ("screws", "plate") else None for k, v in site.metal.items()}
        femurs = scene.render_femurs(grid, geom, density, render_rng, ss, fixation)
        thickness = geom.body_thickness
    elif kind == "chest":
        coarse = scene.render_chest(grid, render_rng, max(PELVIS_STEP_MM, spacing))
        femurs = {}
        thickness = 220.0
    else:
        coarse = np.zeros((8, 8), np.float32)
        femurs = {}
        thickness = 0.0

    fine_shape = (rows * ss, cols * ss)
    att = resize(coarse, fine_shape)
    metal_fine: np.ndarray | None = None
    for side, (box, femur_att, mask, metal_path) in femurs.items():
        att[box] += femur_att
        if metal_path is not None:
            if metal_fine is None:
                metal_fine = np.zeros(fine_shape, np.float32)
            metal_fine[box] += metal_path
        if side in (geom.present if geom else ()):
            full = np.zeros(fine_shape, bool)
            full[box] = mask
            masks[side] = _downsample(full.astype(np.float32), ss, (rows, cols)) >= 0.5
    att = _downsample(att, ss, (rows, cols)).astype(np.float32)
    metal = None if metal_fine is None else _downsample(metal_fine, ss, (rows, cols))
    if kind != "blank":
        letter = laterality or ("R" if render_rng.random() < 0.85 else "L")
        if site is not None and site.profile.hip_marker and geom is not None:
            lead = scene.hip_marker(grid, geom, letter)
        else:
            lead = scene.marker(att.shape, spacing, letter, at_left=(letter == "R"))
        att += lead
    else:
        lead = None

    keep_clear = None
    if geom is not None:  # the shutter must not cut into the proximal femurs
        x0, x1, y0, y1 = scene.femurs_extent(geom)
        keep_clear = (y0, grid.height_mm - y1, x0, grid.width_mm - x1)
    exposure = acquisition.draw_exposure(render_rng, thickness, keep_clear)
    if site is not None:
        exposure = _site_exposure(exposure, site, keep_clear, np.random.default_rng((*key, 3)))
    if kind == "blank":  # an open, empty field: nothing but detector noise
        exposure = dataclasses.replace(exposure, collimation_mm=None)
    log_signal = acquisition.expose(
        att,
        spacing,
        profile_v,
        exposure,
        render_rng,
        profile_v.spacing_mm,
        acquisition.scatter_block(metal, lead, scene.MU_LEAD_MARKER),
        site,
    )
    pixels = acquisition.process(log_signal, spacing, profile_v, exposure, metal, site)

    body_part = {"chest": "CHEST"}.get(
        kind, "HIP" if laterality else ("PELVIS" if rng.random() < 0.5 else "HIP")
    )
    header = dicomio.draw_header(
        rng,
        ("instance", *key),
        subject.sex,
        subject.age,
        subject.weight_kg,
        subject.height_cm,
        body_part,
        "PA" if kind == "chest" else "AP",
        laterality,
        exposure.kvp,
        exposure.dose,
    )
    ds = dicomio.build_dataset(pixels, spacing, profile_v, header)
    ts = transfer_syntax or profile_v.transfer_syntax
    ds = dicomio.encode(ds, ts)
    row = {
        "sop_instance_uid": header.sop_uid,
        "patient_id": header.patient_id,
        "kind": kind,
        "age": round(subject.age, 2),
        "sex": subject.sex,
        "weight": round(subject.weight_kg, 2),
        "height": round(subject.height_cm, 2),
        "weight_in_header": int(header.weight_kg is not None),
        "height_in_header": int(header.height_cm is not None),
        "t_score": round(subject.t_score, 4),
        "label": subject.label,
        "density_left": round(subject.density_left, 4),
        "density_right": round(subject.density_right, 4),
        "vendor": profile_v.name,
        "modality": profile_v.modality,
        "photometric": profile_v.photometric,
        "bits_stored": profile_v.bits_stored,
        "rows": rows,
        "cols": cols,
        "spacing_mm": spacing,
        "dose": round(exposure.dose, 4),
        "kvp": round(exposure.kvp, 1),
        "prosthesis_left": int(kind == "hip" and prosthesis[1]),
        "prosthesis_right": int(kind == "hip" and prosthesis[0]),
        "laterality": laterality or ("B" if kind == "hip" else ""),
        "mask_left": int("L" in masks),
        "mask_right": int("R" in masks),
        "transfer_syntax": str(ts),
    }
    if site_kind is not None or profile is not None:
        row.update(_site_row(site, kind, prosthesis, exposure, lead is not None))
    return SyntheticImage(dataset=ds, masks=masks, row=row)


#: labels.csv columns a cohort rendered with profiles adds (what each image got).
SITE_COLUMNS = (
    "profile",
    "metal_right",
    "metal_left",
    "border",
    "clipped",
    "grid",
    "marker_near_hip",
)


def _site_row(
    site: SiteImage | None,
    kind: str,
    prosthesis: tuple[bool, bool],
    exposure: acquisition.Exposure,
    marker: bool,
) -> dict[str, Any]:
    """The SITE_COLUMNS of one image: profile name, metal per side, border, and so on."""
    hip = kind == "hip"
    metal: dict[str, str | None] = dict(site.metal) if site else {"R": None, "L": None}
    for side, has in zip(("R", "L"), prosthesis, strict=True):
        if hip and has:
            metal[side] = "prosthesis"
    border = "none" if exposure.collimation_mm is None else "leakage"
    if site is not None and exposure.collimation_mm is not None:
        border = site.border
    p = site.profile if site is not None else None
    return {
        "profile": p.name if p is not None else "default",
        "metal_right": (metal["R"] or "") if hip else "",
        "metal_left": (metal["L"] or "") if hip else "",
        "border": border,
        "clipped": int(p is not None and p.clip_gain > 1.0),
        "grid": int(p is not None and p.grid > 0),
        "marker_near_hip": int(p is not None and p.hip_marker and hip and marker),
    }


def _site_exposure(
    exposure: acquisition.Exposure,
    site: SiteImage,
    keep_clear: tuple[float, float, float, float] | None,
    rng: np.random.Generator,
) -> acquisition.Exposure:
    """A profile's dose and collimation habits applied to the drawn exposure."""
    p = site.profile
    collimation = exposure.collimation_mm
    if p.collimation_rate is not None:
        collimation = None
        if rng.random() < p.collimation_rate:
            margins = [float(x) for x in rng.uniform(10, 45, 4)]
            if keep_clear is not None:
                margins = [
                    min(m, max(k - p.clearance_mm, 0.0))
                    for m, k in zip(margins, keep_clear, strict=True)
                ]
            collimation = (margins[0], margins[1], margins[2], margins[3])
    return dataclasses.replace(
        exposure,
        dose=exposure.dose * p.dose,
        collimation_mm=collimation,
    )


def make_instance(
    seed: int,
    *,
    size: str = "small",
    kind: str = "hip",
    vendor: str | None = None,
    osteoporotic: bool | None = None,
    prosthesis: tuple[bool, bool] = (False, False),
    laterality: str | None = None,
    transfer_syntax: str | None = None,
) -> Dataset:
    """One synthetic image as a pydicom Dataset (see ``render_instance`` for the truth)."""
    return render_instance(
        seed,
        size=size,
        kind=kind,
        vendor=vendor,
        osteoporotic=osteoporotic,
        prosthesis=prosthesis,
        laterality=laterality,
        transfer_syntax=transfer_syntax,
    ).dataset
