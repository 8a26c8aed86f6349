"""Render one proximal femur as projected attenuation, with a density-driven cortex and trabeculae.

Geometry lives in a femur-local frame (mm): origin at the femoral head centre,
``u`` pointing lateral, ``v`` pointing caudal. Bone density (``density``, in
T-score units) acts on structure, at the scales a CNN sees at 0.2-0.3 mm/pixel:

* cortical thickness (shaft, calcar, neck) scales with density;
* trabecular groups fade in the Singh order as density falls (greater
  trochanter and secondary tensile first, then secondary compressive, then
  principal tensile; the principal compressive group thins but stays);
* trabeculae get thinner and more broken;
* Ward's triangle widens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from triage_node.synth.noise import smooth_noise

# Linear attenuation above soft tissue, per mm of path (effective energy ~50 keV).
MU_CORTEX = 0.060
MU_TRABECULAR = 0.020  # fully packed trabecular texture (texture value 1)
MU_MARROW = 0.002
MU_METAL = 0.60  # cobalt-chrome / titanium: opaque at diagnostic energies
MU_CEMENT = 0.012
MASK_SHAFT_MM = 80.0  # the ROI mask runs this far below the lesser trochanter


@dataclass(frozen=True)
class FemurShape:
    """Size and angles of one proximal femur (mm, degrees)."""

    head_radius: float
    neck_length: float  # head centre to the shaft axis, along the neck axis
    neck_radius: float  # at the narrowest (subcapital) point
    shaft_radius: float
    neck_shaft_angle: float
    shaft_tilt: float  # shaft axis from vertical, distal end medial
    trochanter_scale: float
    cortex_jitter: float  # individual cortical thickness factor unrelated to density
    texture_jitter: float


def draw_femur_shape(rng: np.random.Generator, scale: float, nsa: float) -> FemurShape:
    """Draw a femur shape for a pelvis of size ``scale`` and neck-shaft angle ``nsa``."""
    return FemurShape(
        head_radius=23.5 * scale * rng.uniform(0.95, 1.05),
        neck_length=58.0 * scale * rng.uniform(0.9, 1.1),
        neck_radius=15.0 * scale * rng.uniform(0.92, 1.08),
        shaft_radius=15.0 * scale * rng.uniform(0.92, 1.08),
        neck_shaft_angle=float(nsa),
        shaft_tilt=float(rng.uniform(4.0, 10.0)),
        trochanter_scale=scale * rng.uniform(0.9, 1.1),
        cortex_jitter=float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.15)),
        texture_jitter=float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15)),
    )


def _p(xy: list[float]) -> np.ndarray:
    return np.asarray(xy, dtype=np.float32)


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return expit(np.asarray(x, dtype=np.float32)).astype(np.float32, copy=False)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _segment(u: np.ndarray, v: np.ndarray, p0: np.ndarray, p1: np.ndarray):
    d0, d1 = float(p1[0] - p0[0]), float(p1[1] - p0[1])
    x0, y0 = float(p0[0]), float(p0[1])
    t = np.clip(((u - x0) * d0 + (v - y0) * d1) / (d0 * d0 + d1 * d1), 0.0, 1.0)
    du = u - (x0 + t * d0)
    dv = v - (y0 + t * d1)
    return np.sqrt(du * du + dv * dv), t


def _ellipse_sdf(u, v, c, a, b, angle_deg):
    ca, sa = float(np.cos(np.radians(angle_deg))), float(np.sin(np.radians(angle_deg)))
    cx, cy, a, b = float(c[0]), float(c[1]), float(a), float(b)
    x = (u - cx) * ca + (v - cy) * sa
    y = -(u - cx) * sa + (v - cy) * ca
    f = np.sqrt((x / a) ** 2 + (y / b) ** 2) + 1e-6
    grad = np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2) / f + 1e-6
    return (f - 1.0) / grad


def _chord(d: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Path length through a round body of local radius ``radius`` at signed distance ``d``."""
    dd = np.clip(-d, 0.0, radius)
    return 2.0 * np.sqrt(dd * (2.0 * radius - dd))


def _lines(psi: np.ndarray, spacing: float, thickness: float, pixel: float) -> np.ndarray:
    """Anti-aliased parallel lines: level sets of ``psi`` (mm) every ``spacing`` mm."""
    delta = (np.mod(psi / spacing, 1.0) - 0.5) * spacing
    sigma = np.sqrt((0.5 * thickness) ** 2 + (0.5 * pixel) ** 2)
    return (0.5 * thickness / sigma) * np.exp(-0.5 * (delta / sigma) ** 2)


@dataclass
class FemurRender:
    """Projected attenuation of a femur on a box grid, and its ROI mask."""

    attenuation: np.ndarray  # float32, added to the soft-tissue line integral
    mask: np.ndarray  # bool, proximal femur ROI (head to ~8 cm below the lesser trochanter)
    metal: np.ndarray | None = None  # float32 path length through metal (mm), prosthesis only


def mask_length(shape: FemurShape) -> float:
    """How far (mm) below the neck-shaft junction the ROI mask reaches."""
    return 36.0 * shape.trochanter_scale + MASK_SHAFT_MM


def stem_length(shape: FemurShape) -> float:
    """Length (mm) of a prosthesis stem below the neck-shaft junction."""
    return 118.0 * shape.trochanter_scale


def outline_points(shape: FemurShape, prosthesis: bool = False) -> np.ndarray:
    """Points (N, 2) in the femur-local frame (mm) that enclose the ROI mask (and any stem).

    Head circle, greater and lesser trochanter ellipses and the shaft down to the
    mask's lower end (or the stem tip), padded by 3 mm for the smooth unions.
    Used to position the patient so the proximal femur lies inside the field.
    """
    s = shape
    beta = np.radians(s.shaft_tilt)
    sdir = np.array([-np.sin(beta), np.cos(beta)])
    ang = beta + np.radians(s.neck_shaft_angle)
    ndir = np.array([-np.sin(ang), np.cos(ang)])
    junction = -ndir * s.neck_length
    ts = s.trochanter_scale
    pad = 3.0
    t = np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False)
    pts = [np.stack([(s.head_radius + pad) * np.cos(t), (s.head_radius + pad) * np.sin(t)], 1)]
    for centre, a, b, angle in (
        (junction + np.array([13.0, -17.0]) * ts, 15.0 * ts, 25.0 * ts, -12.0),
        (
            junction + sdir * 36.0 * ts - np.array([s.shaft_radius - 3.0, 0.0]),
            9.0 * ts,
            12.5 * ts,
            25.0,
        ),
    ):
        ca, sa = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        x, y = (a + pad) * np.cos(t), (b + pad) * np.sin(t)
        pts.append(np.stack([centre[0] + ca * x - sa * y, centre[1] + sa * x + ca * y], 1))
    length = max(mask_length(s), stem_length(s) + 4.0 if prosthesis else 0.0)
    across = np.array([sdir[1], -sdir[0]]) * (s.shaft_radius + pad)
    for along in (0.0, length):
        base = junction + sdir * along
        pts.append(np.stack([base + across, base - across]))
    return np.concatenate(pts).astype(np.float64)


def render_femur(
    u: np.ndarray,
    v: np.ndarray,
    shape: FemurShape,
    density: float,
    rng: np.random.Generator,
    pixel_mm: float,
    prosthesis: bool = False,
    fixation: str | None = None,
) -> FemurRender:
    """Render a femur at femur-local coordinates ``u``, ``v`` (mm arrays, one per pixel).

    ``density`` is the side's latent bone density in T-score units; ``pixel_mm``
    the grid spacing (for anti-aliasing the trabecular lines). ``fixation``:
    ``"screws"`` or ``"plate"`` adds that metal (:func:`fixation_metal`).
    """
    s = shape
    beta = np.radians(s.shaft_tilt)
    sdir = np.array([-np.sin(beta), np.cos(beta)], dtype=np.float32)  # shaft axis, distal
    ang = beta + np.radians(s.neck_shaft_angle)
    ndir = np.array([-np.sin(ang), np.cos(ang)], dtype=np.float32)  # neck axis, to the head
    head = np.zeros(2, dtype=np.float32)
    junction = head - ndir * s.neck_length
    nperp = _p([-ndir[1], ndir[0]])  # across the neck; positive = inferior
    if nperp[1] < 0:
        nperp = -nperp
    ts = s.trochanter_scale

    # --- outer shape: smooth union of head, tapered neck, shaft and trochanters
    d_head = np.sqrt(u * u + v * v) - s.head_radius
    dist_n, t_n = _segment(u, v, head, junction + sdir * 6.0)
    r_neck = s.neck_radius + (s.shaft_radius * 1.45 - s.neck_radius) * t_n**2
    d_neck = dist_n - r_neck
    top = junction - sdir * 8.0
    dist_s, t_s = _segment(u, v, top, junction + sdir * 420.0)
    d_shaft = dist_s - s.shaft_radius
    gt_c = junction + _p([13.0, -17.0]) * ts
    d_gt = _ellipse_sdf(u, v, gt_c, 15.0 * ts, 25.0 * ts, -12.0)
    lt_c = junction + sdir * 36.0 * ts - _p([s.shaft_radius - 3.0, 0.0])
    d_lt = _ellipse_sdf(u, v, lt_c, 9.0 * ts, 12.5 * ts, 25.0)
    d = _smin(_smin(_smin(_smin(d_head, d_neck, 5.0), d_shaft, 9.0), d_gt, 7.0), d_lt, 6.0)

    parts = np.stack([d_head, d_neck, d_shaft, d_gt, d_lt])
    w = np.exp(-(parts - parts.min(axis=0)) / 3.0)
    w /= w.sum(axis=0)
    wh, wn, ws, wg, wl = w
    radius = wh * s.head_radius + wn * r_neck + ws * s.shaft_radius + wg * 17.0 * ts + wl * 9.0 * ts

    # --- cortical thickness: density acts here first (cortical thickness index)
    along_shaft = (u - junction[0]) * sdir[0] + (v - junction[1]) * sdir[1]  # mm below junction
    across_neck = (u - head[0]) * nperp[0] + (v - head[1]) * nperp[1]
    f_density = float(np.clip(1.0 + 0.13 * density, 0.4, 1.35)) * s.cortex_jitter
    c_shaft = 1.8 + 4.6 * _sigmoid((along_shaft - 30.0) / 12.0)
    c_neck = 0.9 + 2.6 * _sigmoid((across_neck - 0.55 * s.neck_radius) / 3.0)  # calcar
    cortex = (wh * 0.8 + wn * c_neck + ws * c_shaft + wg * 0.7 + wl * 2.2) * f_density
    cortex = np.minimum(cortex, radius * 0.8)

    outer = _chord(d, radius)
    inner = _chord(d + cortex, np.maximum(radius - cortex, 0.5))
    cortical_path = outer - inner

    # --- trabecular texture, computed only on the box around the proximal femur
    rows, cols = np.nonzero((d < 1.0) & (along_shaft < 75.0))
    texture = np.zeros_like(u)
    if rows.size:
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        texture[box] = _trabecular_texture(
            u[box],
            v[box],
            s,
            float(density),
            rng,
            pixel_mm,
            head,
            junction,
            sdir,
            nperp,
            d_gt[box],
            along_shaft[box],
        )
    canal = _sigmoid((along_shaft - 55.0) / 10.0)  # medullary canal: marrow, few trabeculae
    texture = texture * (1.0 - 0.85 * canal)

    attenuation = MU_CORTEX * cortical_path + inner * (MU_MARROW + MU_TRABECULAR * texture)

    metal = None
    if prosthesis:
        attenuation, metal = _add_prosthesis(u, v, inner, cortical_path, junction, sdir, ndir, s)
    if fixation is not None:
        path = fixation_metal(u, v, s, junction, sdir, ndir, fixation)
        attenuation = attenuation + MU_METAL * path
        metal = path if metal is None else metal + path

    mask = (d < 0) & (along_shaft < mask_length(s))
    return FemurRender(attenuation=attenuation.astype(np.float32), mask=mask, metal=metal)


def _add_prosthesis(u, v, inner, cortical_path, junction, sdir, ndir, s):
    """Total hip replacement: metal ball, stem and cup; cemented canal, no trabeculae.

    The stem is a tapered wedge in the medullary canal (about 20 mm wide at the
    shoulder, 10 mm at the tip, ``stem_length`` below the neck-shaft junction)
    with a 12 mm neck up to a 28-32 mm ball; the cup is a 50-54 mm metal shell
    in the acetabulum. Returns (attenuation, metal path length in mm).
    """
    ball_r = 14.0 + 2.0 * float(s.texture_jitter > 1.0)
    rr = np.sqrt(u * u + v * v)
    ball = _chord(rr - ball_r, np.full_like(u, ball_r))
    # stem body along the shaft axis, from the shoulder above the junction to the tip
    tip = junction + sdir * stem_length(s)
    shoulder = junction - sdir * 6.0
    dist_body, t_body = _segment(u, v, tip, shoulder)
    r_body = np.minimum(5.0 + 5.0 * t_body, s.shaft_radius - 2.0)
    body = _chord(dist_body - r_body, r_body)
    # prosthetic neck (trunnion) from the shoulder region to the ball
    dist_neck, _ = _segment(u, v, junction + sdir * 4.0, -ndir * (ball_r - 3.0))
    neck = _chord(dist_neck - 6.0, np.full_like(u, 6.0))
    cup_r = ball_r + 12.0
    cup_outer = _chord(rr - cup_r, np.full_like(u, cup_r))
    cup_inner = _chord(rr - (cup_r - 4.0), np.full_like(u, cup_r - 4.0))
    cup = (cup_outer - cup_inner) * _sigmoid((2.0 - v) / 0.5)
    head_removed = _sigmoid(-(rr - s.head_radius) / 1.5)
    bone = (MU_CORTEX * cortical_path + inner * (MU_MARROW + MU_CEMENT)) * (1.0 - head_removed)
    metal = (np.maximum(np.maximum(ball, body), neck) + cup).astype(np.float32)
    return bone + MU_METAL * metal, metal


def fixation_metal(u, v, s, junction, sdir, ndir, kind: str) -> np.ndarray:
    """Path length (mm) through fracture fixation metal; ``kind`` "screws" or "plate".

    ``screws``: three parallel 6.5 mm cannulated screws along the neck, from the
    lateral cortex into the head (a fixed femoral-neck fracture). ``plate``: a
    sliding hip screw: a 12 mm lag screw up the neck, its barrel, and a side
    plate along the lateral shaft cortex (seen edge-on: a 5 mm strip of 16 mm
    metal path) held by four cortical screws across the shaft.
    """
    head = np.zeros(2, dtype=np.float32)
    lateral = _p([float(sdir[1]), float(-sdir[0])])  # across the shaft, towards +u
    if lateral[0] < 0:
        lateral = -lateral
    nperp = _p([-float(ndir[1]), float(ndir[0])])
    tip = head + ndir * (0.55 * s.head_radius)
    entry = junction - ndir * 30.0
    path = np.zeros_like(u)
    if kind == "screws":
        for k in (-0.45, 0.0, 0.45):
            off = nperp * (k * s.neck_radius)
            dist, _ = _segment(u, v, entry + off, tip + off)
            path = np.maximum(path, _chord(dist - 3.25, np.full_like(u, 3.25)))
        return path.astype(np.float32)
    if kind != "plate":
        raise ValueError(f"fixation kind {kind!r}: expected 'screws' or 'plate'")
    dist, _ = _segment(u, v, entry, tip)
    path = _chord(dist - 6.0, np.full_like(u, 6.0))
    barrel_end = junction - ndir * 8.0
    dist, _ = _segment(u, v, entry, barrel_end)
    path = np.maximum(path, _chord(dist - 9.5, np.full_like(u, 9.5)))
    # side plate: from where the barrel leaves the lateral cortex down the shaft
    surface = junction + lateral * (s.shaft_radius + 2.5)
    along = (u - float(surface[0])) * sdir[0] + (v - float(surface[1])) * sdir[1]
    across = (u - float(surface[0])) * lateral[0] + (v - float(surface[1])) * lateral[1]
    start = float(((entry - surface) * sdir).sum())
    plate = _sigmoid((2.5 - np.abs(across)) / 0.2) * _sigmoid((along - start) / 0.3)
    plate = plate * _sigmoid((start + 95.0 - along) / 0.3)
    path = np.maximum(path, 16.0 * plate)
    for k in range(4):
        centre = surface + sdir * (start + 30.0 + 18.0 * k)
        dist, _ = _segment(u, v, centre, centre - lateral * (2.0 * s.shaft_radius + 4.0))
        path = np.maximum(path, _chord(dist - 2.25, np.full_like(u, 2.25)))
    return path.astype(np.float32)


def _trabecular_texture(
    u, v, s, rho, rng, pixel_mm, head, junction, sdir, nperp, d_gt, along_shaft
):
    """Trabecular volume fraction seen in projection (about 0-1.5), Singh-graded by ``rho``."""
    ts = s.trochanter_scale
    phase = smooth_noise(rng, u.shape, pixel_mm, 2.5) * 0.45
    breaks = smooth_noise(rng, u.shape, pixel_mm, 1.0)
    mesh = smooth_noise(rng, u.shape, pixel_mm, 0.5)
    thick = float(np.clip(0.42 + 0.06 * rho, 0.18, 0.55)) * s.texture_jitter
    continuity = 0.2 + 0.8 * _sigmoid((breaks + 0.7 + 0.28 * rho) / 0.35)

    def group(psi: np.ndarray, spacing: float, width: float) -> np.ndarray:
        return _lines(psi + phase * spacing, spacing, width, pixel_mm) * continuity

    def ray_psi(focus: np.ndarray, ref: float) -> np.ndarray:
        return np.arctan2(u - float(focus[0]), v - float(focus[1])) * ref

    def arc_psi(centre: np.ndarray) -> np.ndarray:
        return np.sqrt((u - float(centre[0])) ** 2 + (v - float(centre[1])) ** 2)

    hr = s.head_radius
    # principal compressive: from the head dome down onto the calcar (fan)
    f_pc = _p([-0.15 * hr, 3.4 * hr])
    reg_pc = _sigmoid(-_ellipse_sdf(u, v, _p([0.1 * hr, 0.55 * hr]), 0.85 * hr, 1.6 * hr, 0) / 3.0)
    # principal tensile: arcs from the lateral cortex over the neck into the inferior head
    c_pt = junction + _p([-0.25 * s.neck_length, 1.25 * s.neck_length])
    r_pt = float(np.sqrt(((head + _p([0.0, 0.3 * hr]) - c_pt) ** 2).sum()))
    rr = arc_psi(c_pt)
    reg_pt = _sigmoid((rr - (r_pt - 14.0)) / 3.0) * _sigmoid(((r_pt + 8.0) - rr) / 3.0)
    reg_pt = reg_pt * _sigmoid((float(c_pt[1]) - 10.0 - v) / 6.0)
    # secondary compressive: fan from the medial cortex below the neck towards the trochanter
    f_sc = junction + sdir * 40.0 - _p([s.shaft_radius, 0.0])
    reg_sc = _sigmoid(-_ellipse_sdf(u, v, junction + _p([0.0, -4.0]), 22.0, 26.0, 0) / 3.0)
    # secondary tensile: lower arcs from the lateral cortex towards mid-neck
    c_st = junction + _p([-30.0, 55.0])
    rr2 = arc_psi(c_st)
    reg_st = _sigmoid(
        -_ellipse_sdf(u, v, junction + _p([6.0, 14.0]), 18.0, 16.0, 0) / 3.0
    ) * _sigmoid((float(c_st[1]) - v) / 5.0)
    # greater trochanter group
    f_gt = junction + _p([13.0, -17.0]) * ts + _p([-6.0, 45.0])
    reg_gt = _sigmoid(-d_gt / 2.0)

    vis_gt = _sigmoid((rho + 1.0) / 0.45)  # Singh order: first to go
    vis_st = _sigmoid((rho + 1.3) / 0.45)
    vis_sc = _sigmoid((rho + 2.0) / 0.45)
    vis_pt = _sigmoid((rho + 2.8) / 0.45)
    vis_pc = 0.35 + 0.65 * _sigmoid((rho + 3.8) / 0.6)  # thins, never quite goes
    texture = (
        vis_pc * reg_pc * group(ray_psi(f_pc, 3.4 * hr), 2.1, thick * 1.7)
        + vis_pt * reg_pt * group(rr, 1.8, thick * 1.2)
        + vis_sc * reg_sc * group(ray_psi(f_sc, 45.0), 1.7, thick)
        + vis_st * reg_st * group(rr2, 1.7, thick * 0.9)
        + vis_gt * reg_gt * group(ray_psi(f_gt, 50.0), 1.5, thick * 0.8)
    )
    mesh_amp = 0.22 + 0.06 * float(np.clip(rho + 2.0, -1.5, 2.0))
    texture = texture + mesh_amp * np.clip(mesh * 0.6 + 0.6, 0.0, None)
    # Ward's triangle: between the compressive and tensile groups, widening with bone loss
    ward_c = head + (junction - head) * 0.62 + nperp * 2.0
    ward_r = float(np.clip(6.0 - 3.2 * rho, 4.0, 19.0)) * ts
    ward = _sigmoid(-_ellipse_sdf(u, v, ward_c, ward_r * 0.75, ward_r, -40.0) / 2.0)
    return texture * (1.0 - 0.8 * ward)
