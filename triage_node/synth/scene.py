"""Lay out a whole AP pelvis (or chest) as a projected attenuation map on the detector grid.

Coordinates: image millimetres, ``x`` to the viewer's right (patient's left in an
AP view), ``y`` caudal. The pelvis lives in a "patient frame" centred between the
femoral heads, rotated and shifted per image. Pelvic bones, soft tissue and gas
are rasterised on a coarse grid (~0.35 mm) and upsampled; the femurs are rendered
at the output grid in a box each (see ``femur.py``), because their structure
carries the density signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from scipy.interpolate import splev, splprep

from triage_node.synth.femur import FemurShape, draw_femur_shape, outline_points, render_femur
from triage_node.synth.noise import resize, smooth_noise

MU_TISSUE = 0.021  # per mm, soft tissue at the effective energy
MU_BONE_PLATE = 0.030
MU_LEAD_MARKER = 6.0  # a lead letter: opaque, saturates like metal
FEMUR_MARGIN_MM = (6.0, 25.0)  # space kept between each proximal femur and the field edge
FEMUR_MIN_SPACING_MM = 0.25
SIDES = ("R", "L")  # patient's right is on the viewer's left in an AP view


@dataclass
class Grid:
    """Detector pixel grid: ``rows`` x ``cols`` pixels of ``spacing`` mm."""

    rows: int
    cols: int
    spacing: float

    @property
    def height_mm(self) -> float:
        return self.rows * self.spacing

    @property
    def width_mm(self) -> float:
        return self.cols * self.spacing


@dataclass
class HipGeometry:
    """Per-image anatomy and positioning (mm, degrees)."""

    scale: float
    centre: tuple[float, float]  # patient-frame origin in image mm
    rotation: float
    head_half_distance: float
    femurs: dict[str, FemurShape]
    abduction: dict[str, float]
    body_half_width: float
    body_thickness: float  # AP, mm
    gas: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    prosthesis: dict[str, bool] = field(default_factory=dict)
    present: tuple[str, ...] = SIDES


def draw_geometry(
    rng: np.random.Generator,
    grid: Grid,
    sex: str,
    weight_kg: float,
    height_cm: float,
    prosthesis: tuple[bool, bool],
    laterality: str | None,
) -> HipGeometry:
    """Draw positioning and anatomy for one AP hip/pelvis image on ``grid``."""
    scale = float(rng.normal(1.06 if sex == "M" else 1.0, 0.04))
    hw = 92.0 * scale * float(rng.uniform(0.96, 1.04))
    if laterality is None:
        cx = grid.width_mm / 2 + float(rng.normal(0.0, 10.0))
    else:  # unilateral: the field is centred on one hip
        side_sign = -1.0 if laterality == "R" else 1.0
        cx = grid.width_mm / 2 - side_sign * (hw + 12.0) + float(rng.normal(0.0, 6.0))
    cy = grid.height_mm * float(rng.uniform(0.40, 0.47))
    nsa = float(np.clip(rng.normal(131.0, 4.5), 120.0, 140.0))
    femurs = {
        side: draw_femur_shape(rng, scale, float(np.clip(nsa + rng.normal(0, 1.5), 120, 140)))
        for side in SIDES
    }
    bmi = weight_kg / (height_cm / 100.0) ** 2
    gas = []
    for _ in range(int(rng.integers(1, 6))):
        gas.append(
            (
                float(rng.uniform(-110, 110)),
                float(rng.uniform(-170, -40)),
                float(rng.uniform(8, 30)),
                float(rng.uniform(6, 18)),
                float(rng.uniform(0.1, 0.5)),
            )
        )
    present = SIDES if laterality is None else (laterality,)
    geom = HipGeometry(
        scale=scale,
        centre=(cx, cy),
        rotation=float(rng.normal(0.0, 2.0)),
        head_half_distance=hw,
        femurs=femurs,
        abduction={side: float(rng.normal(0.0, 2.5)) for side in SIDES},
        body_half_width=float(np.clip(105.0 + 1.25 * weight_kg, 150, 260)) * scale,
        body_thickness=float(np.clip(95.0 + 5.0 * bmi + rng.normal(0, 10), 150, 340)),
        gas=gas,
        prosthesis={"R": prosthesis[0], "L": prosthesis[1]},
        present=present,
    )
    margin = float(rng.uniform(*FEMUR_MARGIN_MM))
    _centre_femurs(grid, geom, margin)
    return geom


def femur_extent(geom: HipGeometry, side: str) -> tuple[float, float, float, float]:
    """Bounding box (x0, x1, y0, y1) in image mm of one side's proximal femur (and stem)."""
    pts = outline_points(geom.femurs[side], geom.prosthesis.get(side, False))
    sgn = -1.0 if side == "R" else 1.0
    ab = np.radians(geom.abduction[side])
    ca, sa = np.cos(ab), np.sin(ab)
    lu = ca * pts[:, 0] + sa * pts[:, 1]  # inverse of the rotation in render_femurs
    lv = -sa * pts[:, 0] + ca * pts[:, 1]
    px, py = sgn * (lu + geom.head_half_distance), lv
    c, s = np.cos(np.radians(geom.rotation)), np.sin(np.radians(geom.rotation))
    xs = geom.centre[0] + c * px - s * py
    ys = geom.centre[1] + s * px + c * py
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())


def femurs_extent(geom: HipGeometry) -> tuple[float, float, float, float]:
    """Bounding box (x0, x1, y0, y1) in image mm of the femurs the image must show."""
    boxes = np.array([femur_extent(geom, side) for side in geom.present])
    return (
        float(boxes[:, 0].min()),
        float(boxes[:, 1].max()),
        float(boxes[:, 2].min()),
        float(boxes[:, 3].max()),
    )


def _centre_femurs(grid: Grid, geom: HipGeometry, margin: float) -> None:
    """Shift the patient so the present proximal femurs lie ``margin`` mm inside the field.

    A radiographer centres the hip/pelvis so both proximal femurs, with about
    8 cm of shaft below the lesser trochanter, are on the detector. Positions
    already inside keep their random offset; only the overshoot is corrected.
    Where the femurs cannot fit (a field too small for the patient) they are
    centred and stay cut off.
    """
    x0, x1, y0, y1 = femurs_extent(geom)
    shift = []
    for lo, hi, size in ((x0, x1, grid.width_mm), (y0, y1, grid.height_mm)):
        room = min(margin, (size - (hi - lo)) / 2.0)  # a tight field leaves less margin
        if room < 3.0:
            shift.append(size / 2.0 - (lo + hi) / 2.0)
        else:
            shift.append(max(room - lo, 0.0) - max(hi - (size - room), 0.0))
    geom.centre = (geom.centre[0] + shift[0], geom.centre[1] + shift[1])


class _Canvas:
    """Coarse raster for polygons/lines in patient-frame mm."""

    def __init__(self, grid: Grid, step: float, geom: HipGeometry | None) -> None:
        self.step = step
        self.shape = (int(np.ceil(grid.height_mm / step)), int(np.ceil(grid.width_mm / step)))
        self.geom = geom

    def to_px(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        g = self.geom
        if g is None:
            return [(x / self.step, y / self.step) for x, y in pts]
        c, s = np.cos(np.radians(g.rotation)), np.sin(np.radians(g.rotation))
        out = []
        for x, y in pts:
            xi = g.centre[0] + c * x - s * y
            yi = g.centre[1] + s * x + c * y
            out.append((xi / self.step, yi / self.step))
        return out

    def new(self) -> tuple[Image.Image, ImageDraw.ImageDraw]:
        img = Image.new("L", (self.shape[1], self.shape[0]), 0)
        return img, ImageDraw.Draw(img)

    def ellipse_pts(self, cx, cy, a, b, angle=0.0, a0=0.0, a1=360.0, n=72):
        t = np.radians(np.linspace(a0, a1, n))
        ca, sa = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        xs, ys = a * np.cos(t), b * np.sin(t)
        return [(cx + ca * x - sa * y, cy + sa * x + ca * y) for x, y in zip(xs, ys, strict=True)]

    def inside_distance(self, img: Image.Image) -> np.ndarray:
        """Distance (mm) from each inside pixel to the outline; 0 outside."""
        out = np.zeros(self.shape, np.float32)
        bbox = img.getbbox()
        if bbox is None:
            return out
        c0, r0, c1, r1 = bbox
        box = (slice(max(r0 - 2, 0), r1 + 2), slice(max(c0 - 2, 0), c1 + 2))
        mask = np.asarray(img)[box] > 127
        out[box] = ndimage.distance_transform_edt(mask) * self.step
        return out


def _smooth_closed(points: list[tuple[float, float]], n: int = 120) -> list[tuple[float, float]]:
    """A smooth closed outline through ``points`` (periodic cubic spline)."""
    xy = np.array(points + points[:1], dtype=float).T
    tck, _ = splprep(xy, s=0, per=True)
    xs, ys = splev(np.linspace(0, 1, n), tck)
    return list(zip(map(float, xs), map(float, ys), strict=True))


def _tube(dist: np.ndarray, half_width: float) -> np.ndarray:
    dd = np.clip(dist, 0.0, half_width)
    return 2.0 * np.sqrt(dd * (2.0 * half_width - dd))


def _plate(dist: np.ndarray, thickness: float, rim: float) -> np.ndarray:
    inside = dist > 0
    return inside * (thickness * (1.0 - np.exp(-dist / 1.5)) + rim * np.exp(-dist / 2.5))


def render_pelvis(grid: Grid, geom: HipGeometry, rng: np.random.Generator, step: float):
    """Soft tissue, gas and pelvic bones (not the femurs) as attenuation on a coarse grid."""
    cv = _Canvas(grid, step, geom)
    k = geom.scale
    hw = geom.head_half_distance
    bone = np.zeros(cv.shape, np.float32)

    for sgn in (-1.0, 1.0):

        def m(pts, sgn=sgn):
            return [(sgn * x, y) for x, y in pts]

        # iliac wing: a thin plate with a dense rim (crest, sciatic notch)
        wing = m(
            _smooth_closed(
                [
                    (hw + 26 * k, -20 * k),
                    (hw + 48 * k, -62 * k),
                    (hw + 60 * k, -100 * k),
                    (hw + 45 * k, -128 * k),
                    (hw + 5 * k, -142 * k),
                    (hw - 40 * k, -136 * k),
                    (52 * k, -120 * k),
                    (40 * k, -95 * k),
                    (46 * k, -64 * k),
                    (hw - 45 * k, -34 * k),
                    (hw - 28 * k, -16 * k),
                ]
            )
        )
        img, dr = cv.new()
        dr.polygon(cv.to_px(wing), fill=255)
        bone += _plate(cv.inside_distance(img), 7.0, 10.0) * MU_BONE_PLATE
        # acetabulum: thick bone around the head, with the sourcil (roof) as a dense arc
        img, dr = cv.new()
        dr.polygon(cv.to_px(cv.ellipse_pts(sgn * (hw - 8 * k), -14 * k, 36 * k, 32 * k)), fill=255)
        bone += (
            _plate(cv.inside_distance(img), 6.0, 0.0)
            * MU_BONE_PLATE
            * np.clip(cv.inside_distance(img) / 12.0, 0, 1)
        )
        hr = geom.femurs["R" if sgn < 0 else "L"].head_radius
        img, dr = cv.new()
        roof = cv.ellipse_pts(sgn * hw, 0.0, hr + 3.5, hr + 3.5, 0, 195, 345, n=40)
        dr.line(cv.to_px(roof), fill=255, width=max(1, int(5.0 / step)), joint="curve")
        bone += _tube(cv.inside_distance(img), 2.5) * 0.07
        # teardrop
        img, dr = cv.new()
        dr.line(
            cv.to_px(cv.ellipse_pts(sgn * (hw - hr - 9 * k), 6 * k, 5 * k, 9 * k, 0, 0, 180, n=20)),
            fill=255,
            width=max(1, int(3.0 / step)),
            joint="curve",
        )
        bone += _tube(cv.inside_distance(img), 1.5) * 0.05
        # obturator ring: pubic and ischial rami
        img, dr = cv.new()
        ring = cv.ellipse_pts(sgn * (hw - 40 * k), 45 * k, 24 * k, 30 * k, sgn * 25.0)
        dr.line(
            cv.to_px(ring + ring[:1]), fill=255, width=max(1, int(13 * k / step)), joint="curve"
        )
        bone += _tube(cv.inside_distance(img), 6.5 * k) * 0.035
        # superior ramus to the symphysis, pubic body, ischial tuberosity
        img, dr = cv.new()
        dr.line(
            cv.to_px(m([(hw - 22 * k, 4 * k), (30 * k, 18 * k), (8 * k, 30 * k)])),
            fill=255,
            width=max(1, int(15 * k / step)),
            joint="curve",
        )
        bone += _tube(cv.inside_distance(img), 7.5 * k) * 0.035
        img, dr = cv.new()
        dr.polygon(cv.to_px(cv.ellipse_pts(sgn * 17 * k, 42 * k, 12 * k, 20 * k)), fill=255)
        dr.polygon(
            cv.to_px(cv.ellipse_pts(sgn * (hw - 30 * k), 80 * k, 20 * k, 14 * k, sgn * 20)),
            fill=255,
        )
        bone += _plate(cv.inside_distance(img), 16.0, 6.0) * MU_BONE_PLATE
        # transverse processes of L5
        img, dr = cv.new()
        dr.line(
            cv.to_px(m([(20 * k, -178 * k), (62 * k, -170 * k)])),
            fill=255,
            width=max(1, int(11 * k / step)),
            joint="curve",
        )
        bone += _tube(cv.inside_distance(img), 5.5 * k) * 0.03

    # pelvic brim (iliopectineal line)
    img, dr = cv.new()
    brim = cv.ellipse_pts(0.0, -40 * k, 68 * k, 68 * k, 0, -10, 190, n=60)
    dr.line(cv.to_px(brim), fill=255, width=max(1, int(7 * k / step)), joint="curve")
    bone += _tube(cv.inside_distance(img), 3.5 * k) * 0.04
    # sacrum with foramina, coccyx
    img, dr = cv.new()
    dr.polygon(
        cv.to_px([(-52 * k, -140 * k), (52 * k, -140 * k), (14 * k, -35 * k), (-14 * k, -35 * k)]),
        fill=255,
    )
    dr.line(
        cv.to_px([(0, -38 * k), (0, -20 * k)]),
        fill=255,
        width=max(1, int(6 * k / step)),
        joint="curve",
    )
    for row in range(4):
        for sgn in (-1.0, 1.0):
            dr.polygon(
                cv.to_px(
                    cv.ellipse_pts(
                        sgn * (24 - 3 * row) * k, (-122 + 20 * row) * k, 3.5 * k, 3.0 * k, n=16
                    )
                ),
                fill=0,
            )
    bone += _plate(cv.inside_distance(img), 9.0, 5.0) * MU_BONE_PLATE
    # lower lumbar vertebrae at the top edge: bodies, end plates, pedicles
    for i, vy in enumerate((-178.0, -218.0, -258.0)):
        img, dr = cv.new()
        body = [
            (-27 * k, (vy - 15) * k),
            (27 * k, (vy - 15) * k),
            (29 * k, (vy + 15) * k),
            (-29 * k, (vy + 15) * k),
        ]
        dr.polygon(cv.to_px(body), fill=255)
        bone += _plate(cv.inside_distance(img), 22.0 - 2 * i, 7.0) * MU_BONE_PLATE
        img, dr = cv.new()
        for sgn in (-1.0, 1.0):
            dr.line(
                cv.to_px(cv.ellipse_pts(sgn * 17 * k, (vy - 3) * k, 5 * k, 8 * k, n=24)),
                fill=255,
                width=max(1, int(3.0 / step)),
                joint="curve",
            )
        dr.line(
            cv.to_px([(0, (vy + 2) * k), (0, (vy + 28) * k)]),
            fill=255,
            width=max(1, int(8 * k / step)),
            joint="curve",
        )
        bone += _tube(cv.inside_distance(img), 2.0) * 0.04

    texture = 1.0 + 0.12 * smooth_noise(rng, cv.shape, step, 0.8)
    bone *= texture

    # soft tissue: an elliptic body above the crotch, two thighs below
    yy, xx = np.mgrid[0 : cv.shape[0], 0 : cv.shape[1]].astype(np.float32) * step
    c, s = np.cos(np.radians(geom.rotation)), np.sin(np.radians(geom.rotation))
    px = c * (xx - geom.centre[0]) + s * (yy - geom.centre[1])
    py = -s * (xx - geom.centre[0]) + c * (yy - geom.centre[1])
    a, t0 = geom.body_half_width, geom.body_thickness
    trunk = t0 * np.sqrt(np.clip(1.0 - (px / a) ** 2, 0.0, None))
    thigh_r = a * 0.52
    thighs = np.zeros_like(trunk)
    for sgn in (-1.0, 1.0):
        tx = px - sgn * (hw + 12.0)
        thighs = np.maximum(thighs, 0.62 * t0 * np.sqrt(np.clip(1 - (tx / thigh_r) ** 2, 0, None)))
    crotch = 1.0 / (1.0 + np.exp(-(py - 70.0 * k) / 12.0))
    tissue = trunk * (1 - crotch) + thighs * crotch
    tissue *= 1.0 + 0.03 * smooth_noise(rng, cv.shape, step, 25.0)
    gas = np.zeros_like(tissue)
    for gx, gy, ga, gb, depth in geom.gas:
        gas += depth * np.exp(-((((px - gx) / ga) ** 2 + ((py - gy) / gb) ** 2) ** 1.5))
    attenuation = MU_TISSUE * tissue - gas + bone
    return attenuation.astype(np.float32)


def femur_box(grid: Grid, geom: HipGeometry, side: str, ss: int):
    """Pixel box (row/col slices on the ``ss``-times supersampled grid) holding one femur."""
    sgn = -1.0 if side == "R" else 1.0
    hx = sgn * geom.head_half_distance
    corners = [(hx + sgn * u, v) for u in (-40.0, 100.0) for v in (-50.0, 200.0)]
    c, s = np.cos(np.radians(geom.rotation)), np.sin(np.radians(geom.rotation))
    xs = [geom.centre[0] + c * x - s * y for x, y in corners]
    ys = [geom.centre[1] + s * x + c * y for x, y in corners]
    sp = grid.spacing / ss
    r0 = max(0, int(min(ys) / sp))
    r1 = min(grid.rows * ss, int(np.ceil(max(ys) / sp)))
    c0 = max(0, int(min(xs) / sp))
    c1 = min(grid.cols * ss, int(np.ceil(max(xs) / sp)))
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def render_femurs(
    grid: Grid,
    geom: HipGeometry,
    density: dict[str, float],
    rng: np.random.Generator,
    ss: int,
    fixation: dict[str, str | None] | None = None,
):
    """Render both femurs on the supersampled grid.

    Returns {side: (box, attenuation, mask, metal)}; ``metal`` is the path
    length through a prosthesis or fixation (mm) or None. ``fixation``: per
    side ``"screws"``, ``"plate"`` or None.
    """
    out = {}
    sp = grid.spacing / ss
    femur_sp = max(sp, FEMUR_MIN_SPACING_MM)
    c, s = np.cos(np.radians(geom.rotation)), np.sin(np.radians(geom.rotation))
    for side in SIDES:
        box = femur_box(grid, geom, side, ss)
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        if h <= 1 or w <= 1:
            continue
        # render at >= FEMUR_MIN_SPACING_MM and resample to the box (speed at full size)
        nh, nw = max(2, int(round(h * sp / femur_sp))), max(2, int(round(w * sp / femur_sp)))
        yy = box[0].start * sp + (np.arange(nh, dtype=np.float32) + 0.5) * (h * sp / nh)
        xx = box[1].start * sp + (np.arange(nw, dtype=np.float32) + 0.5) * (w * sp / nw)
        X, Y = np.meshgrid(xx - geom.centre[0], yy - geom.centre[1])
        px = c * X + s * Y
        py = -s * X + c * Y
        sgn = -1.0 if side == "R" else 1.0
        lu = sgn * (px - sgn * geom.head_half_distance)
        lv = py
        ab = np.radians(geom.abduction[side])
        ca, sa = np.float32(np.cos(ab)), np.float32(np.sin(ab))
        u = ca * lu - sa * lv
        v = sa * lu + ca * lv
        r = render_femur(
            u,
            v,
            geom.femurs[side],
            density[side],
            rng,
            femur_sp,
            prosthesis=geom.prosthesis.get(side, False),
            fixation=(fixation or {}).get(side),
        )
        att = resize(r.attenuation, (h, w))
        mask = resize(r.mask.astype(np.float32), (h, w)) >= 0.5
        metal = None if r.metal is None else resize(r.metal, (h, w))
        out[side] = (box, att, mask, metal)
    return out


def marker(shape: tuple[int, int], spacing: float, letter: str, at_left: bool) -> np.ndarray:
    """A lead L/R marker near a top corner, as extra attenuation (opaque: it saturates)."""
    size = max(8, int(14.0 / spacing))
    img = Image.new("L", (size * 2, size * 2), 0)
    font = ImageFont.load_default(size=size)
    ImageDraw.Draw(img).text(
        (size // 3, size // 6),
        letter,
        fill=255,
        font=font,
        stroke_width=max(1, size // 10),
        stroke_fill=255,
    )
    stamp = np.asarray(img, np.float32) / 255.0 * MU_LEAD_MARKER
    out = np.zeros(shape, np.float32)
    r0 = int(25.0 / spacing)
    c0 = int(25.0 / spacing) if at_left else shape[1] - int(25.0 / spacing) - stamp.shape[1]
    h = min(stamp.shape[0], shape[0] - r0)
    w = min(stamp.shape[1], shape[1] - c0)
    if h > 0 and w > 0 and c0 >= 0:
        out[r0 : r0 + h, c0 : c0 + w] = stamp[:h, :w]
    return out


def hip_marker(grid: Grid, geom: HipGeometry, letter: str) -> np.ndarray:
    """The lead letter on the soft tissue beside the greater trochanter of its own side."""
    side = letter if letter in geom.present else geom.present[0]
    x0, x1, y0, y1 = femur_extent(geom, side)
    stamp = marker((grid.rows, grid.cols), grid.spacing, letter, at_left=True)
    rows, cols = np.nonzero(stamp)
    if not rows.size:
        return stamp
    letter_px = stamp[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    gap = 12.0  # mm between the femur's outline and the letter
    x = x0 - gap - letter_px.shape[1] * grid.spacing if side == "R" else x1 + gap
    y = y0 + 0.35 * (y1 - y0)
    r0 = int(np.clip(y / grid.spacing, 0, grid.rows - letter_px.shape[0]))
    c0 = int(np.clip(x / grid.spacing, 0, grid.cols - letter_px.shape[1]))
    out = np.zeros_like(stamp)
    out[r0 : r0 + letter_px.shape[0], c0 : c0 + letter_px.shape[1]] = letter_px
    return out


def render_chest(grid: Grid, rng: np.random.Generator, step: float) -> np.ndarray:
    """A PA chest-like attenuation map: lungs, heart, mediastinum, ribs, clavicles, spine."""
    cv = _Canvas(grid, step, None)
    W, H = grid.width_mm, grid.height_mm
    cx = W / 2 + float(rng.normal(0, 10))
    yy, xx = np.mgrid[0 : cv.shape[0], 0 : cv.shape[1]].astype(np.float32) * step
    body = 220.0 * np.sqrt(np.clip(1 - ((xx - cx) / (0.46 * W)) ** 2, 0, None))
    lungs = np.zeros(cv.shape, np.float32)
    for sgn in (-1, 1):
        lx = cx + sgn * 0.2 * W
        lungs += np.exp(
            -((((xx - lx) / (0.15 * W)) ** 2 + ((yy - 0.5 * H) / (0.33 * H)) ** 2) ** 2)
        )
    heart = np.exp(
        -((((xx - cx - 0.05 * W) / (0.14 * W)) ** 2 + ((yy - 0.66 * H) / (0.13 * H)) ** 2) ** 2)
    )
    tissue = body * (1 - 0.75 * lungs * (1 - heart))
    bone = np.zeros(cv.shape, np.float32)
    img, dr = cv.new()
    for i in range(10):
        for sgn in (-1, 1):
            y0 = 0.18 * H + i * 0.07 * H
            pts = cv.ellipse_pts(
                cx + sgn * 0.05 * W,
                y0 + 0.06 * H,
                0.32 * W,
                0.1 * H,
                0,
                180 if sgn < 0 else 270,
                270 if sgn < 0 else 360,
                n=30,
            )
            dr.line(cv.to_px(pts), fill=255, width=max(1, int(9.0 / step)), joint="curve")
    for sgn in (-1, 1):
        dr.line(
            cv.to_px([(cx + sgn * 15, 0.16 * H), (cx + sgn * 0.3 * W, 0.12 * H)]),
            fill=255,
            width=max(1, int(12.0 / step)),
            joint="curve",
        )
    dr.line(cv.to_px([(cx, 0.0), (cx, H)]), fill=255, width=max(1, int(40.0 / step)), joint="curve")
    bone += _tube(cv.inside_distance(img), 5.0) * 0.03
    return (MU_TISSUE * tissue + bone).astype(np.float32)
