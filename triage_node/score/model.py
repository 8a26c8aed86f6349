"""The DTC model at inference: DICOM dataset in, per-side and bilateral probabilities out.

Path of one image (every step is the trained bundle's, nothing is guessed):

1. :func:`~triage_node.score.decode.decode_radiograph` (viewer-like pixels, spacing);
2. the bundle's :class:`~triage_node.score.femur_finder.FemurFinder` finds each
   femur (:func:`~triage_node.score.features.find_femurs`);
3. :func:`~triage_node.score.features.measure_hips` -- the same code training
   uses -- checks each hip (not found, cut off, prosthesis), cuts its oriented
   ROI on the bundle's grid (``model.json`` ``roi``: 128 px at 1.0 mm, or 256 px
   at 0.5 mm), computes only the texture features the head uses and the
   Siamese branch's input (a hip whose texture cannot be measured stays
   assessable with its texture imputed; see that module);
4. the Siamese branch's 128 pooled features per side, and age/sex/weight from
   the header (missing values imputed with the training medians, named in
   ``warnings``);
5. the named variant's :class:`~triage_node.score.head.LinearHead` gives a
   calibrated probability; a side is positive by
   :func:`~triage_node.assessment.is_positive` at the operating point.

The head is bilateral (the paper's: left and right hip features side by side).
Per-side probability = the bilateral head applied to that hip duplicated into
both slots (ROIs are already oriented alike, so no further mirroring);
``combined_probability`` = the head on both hips (kept for evaluation; it decides
nothing: the image value is the highest assessed side, ``assessment.py``). When
only one hip is assessable the image value is that hip's alone, scored by the
variant's one-hip head (``head_<V>_onehip.json``: trained on single hips, its own
Platt calibration) when the bundle has one, else by the bilateral head with the hip
duplicated; a warning says so and ``extra["head"]`` names the head
(docs/model.md, "One hip").

Grad-CAM of the Siamese branch for each assessable hip is pasted back onto the
source grid and returned in ``ImageAssessment.extra["cam"]`` (``{"right": array,
"left": array}``, float32 in [0, 1], source shape); ``explain(dataset)`` gives
the same maps alone. Calls are thread-safe: the networks stay in eval mode
and no call changes shared state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import torch
from scipy import ndimage

from triage_node.assessment import (
    ImageAssessment,
    ModelUnavailable,
    Side,
    SideAssessment,
    is_positive,
)
from triage_node.score.bundle import Bundle
from triage_node.score.clinical import ClinicalImputation, read_clinical
from triage_node.score.decode import decode_radiograph
from triage_node.score.features import (
    HipFeatures,
    find_femurs,
    measure_hips,
    patient_row,
    texture_bases,
)
from triage_node.score.femur_finder import FINDER_FILE, SIDES, FemurFinder
from triage_node.score.geometry import RoiGeometry
from triage_node.score.head import LinearHead
from triage_node.score.manifest import VARIANTS
from triage_node.score.roi import RoiSettings, SideRoi
from triage_node.score.siamese import (
    SiameseNet,
    branch_features,
    grad_cam,
    siamese_from_safetensors,
)
from triage_node.score.texture import TextureSettings

SIAMESE_FILE = "siamese.safetensors"
CLINICAL_FILE = "clinical.json"
MODEL_FILE = "model.json"
STAND_IN_WARNING = "only the {side} hip was assessable; the image value is that hip's alone"
ONEHIP_WARNING = (
    "only the {side} hip was assessable; the image value is that hip's, scored by the one-hip head"
)
#: ``ImageAssessment.extra["head"]``: which head gave the per-side probabilities.
BILATERAL_HEAD = "bilateral"
ONEHIP_HEAD = "one-hip"


def head_file(variant: str) -> str:
    """Bundle file name of a variant's head, e.g. ``head_DTC.json``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {sorted(VARIANTS)}")
    return f"head_{variant}.json"


def onehip_head_file(variant: str) -> str:
    """Bundle file name of a variant's one-hip head, e.g. ``head_DTC_onehip.json``.

    A one-hip head takes one hip's features (named with the ``right:`` slot, ROIs
    being oriented alike) and the clinical values; bundles without it score a lone
    hip by duplicating it into the bilateral head.
    """
    return head_file(variant).replace(".json", "_onehip.json")


@dataclass
class ImageFeatures:
    """Intermediate results of one image (used by ``assess``, ``explain`` and evaluation)."""

    shape: tuple[int, int]
    rois: dict[Side, SideRoi]
    not_assessable: dict[Side, str]
    clinical: np.ndarray
    warnings: list[str]
    hips: dict[Side, HipFeatures] = field(default_factory=dict)
    deep_input: dict[Side, np.ndarray] = field(default_factory=dict)  # the CNN's (H, W) input


class BundleScoringModel:
    """A loaded bundle as a :class:`~triage_node.assessment.ScoringModel`.

    ``threshold``: operating point override (None: the bundle's). ``variant``:
    which of the bundle's seven heads scores (None: the manifest's).
    """

    def __init__(
        self, bundle: Bundle, threshold: float | None = None, variant: str | None = None
    ) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.name = manifest.name
        self.version = manifest.version
        self.synthetic = manifest.synthetic
        self.variant = variant or manifest.variant
        try:
            info = bundle.read_json(MODEL_FILE)
            self.heads = {
                v: LinearHead.from_json(bundle.read_json(head_file(v)), head_file(v))
                for v in VARIANTS
                if bundle.has(head_file(v))
            }
            self.onehip_heads = {
                v: LinearHead.from_json(bundle.read_json(onehip_head_file(v)), onehip_head_file(v))
                for v in VARIANTS
                if bundle.has(onehip_head_file(v))
            }
            self.clinical_imputation = ClinicalImputation.from_json(bundle.read_json(CLINICAL_FILE))
            self.finder = FemurFinder.from_safetensors(bundle.raw(FINDER_FILE))
            self.siamese: SiameseNet = siamese_from_safetensors(bundle.raw(SIAMESE_FILE))
            self.texture_settings = TextureSettings.from_json(info["texture"])
            self.roi = RoiSettings.from_json(info.get("roi"))
            self.operating_points: dict[str, float] = {
                v: float(t) for v, t in info["thresholds"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelUnavailable(f"bundle {bundle.path}: {exc}") from None
        if self.variant not in self.heads:
            raise ModelUnavailable(f"bundle {bundle.path}: no head for variant {self.variant}")
        self.head = self.heads[self.variant]
        default = (
            manifest.operating_point.threshold
            if self.variant == manifest.variant
            else self.operating_points[self.variant]
        )
        self.threshold = float(default if threshold is None else threshold)
        onehip = self.onehip_heads.get(self.variant)
        self._texture_needed = texture_bases(
            [*self.head.feature_names, *(onehip.feature_names if onehip else ())]
        )

    @property
    def texture_names(self) -> list[str]:
        """The texture features inference computes per hip: the head's and its one-hip
        head's (pyradiomics names).

        Only their (image type, feature class) groups are computed
        (:func:`~triage_node.score.texture.extract_selected_texture`).
        """
        return list(self._texture_needed)

    # -- steps ---------------------------------------------------------------------------
    def image_features(
        self, dataset: pydicom.Dataset, texture_names: Sequence[str] | None = None
    ) -> ImageFeatures:
        """Decode, find, cut and describe both hips; ``texture_names`` default: the head's."""
        decoded = decode_radiograph(dataset)
        masks, reasons = find_femurs(dataset, decoded, self.finder)
        names = self._texture_needed if texture_names is None else list(texture_names)
        hips = measure_hips(decoded, masks, reasons, self.roi, self.texture_settings, names)
        clinical, clinical_warnings = self.clinical_imputation.apply(read_clinical(dataset))
        features = ImageFeatures(
            shape=decoded.pixels.shape,  # type: ignore[arg-type]
            rois=hips.rois,
            not_assessable=hips.not_assessable,
            clinical=clinical,
            warnings=[*decoded.warnings, *clinical_warnings, *hips.warnings],
            deep_input=hips.deep_input,
        )
        if hips.rois:
            order = list(hips.rois)
            deep = branch_features(
                self.siamese.branch,
                torch.from_numpy(np.stack([hips.deep_input[s] for s in order])[:, None]),
            )
            for i, side in enumerate(order):
                features.hips[side] = HipFeatures(hips.texture[side], deep[i])
        return features

    def logits(
        self, features: ImageFeatures, head: LinearHead | None = None
    ) -> tuple[dict[Side, float], float | None]:
        """Per-side (hip duplicated) and combined raw logits of one head, before calibration.

        ``calibrate`` refits the calibration map on these; :meth:`probabilities` maps them.
        """
        head = head or self.head
        hips = features.hips
        if not hips:
            return {}, None
        rows = [
            patient_row(head.feature_names, features.clinical, {"right": h, "left": h})
            for h in hips.values()
        ]
        both = {s: hips.get(s) or next(iter(hips.values())) for s in SIDES}
        rows.append(patient_row(head.feature_names, features.clinical, both))
        logits = head.logit(np.vstack(rows))
        per_side = {side: float(z) for side, z in zip(hips, logits[:-1], strict=True)}
        return per_side, float(logits[-1])

    def onehip_probability(
        self, features: ImageFeatures, variant: str | None = None
    ) -> float | None:
        """The one-hip head's calibrated probability of an image with exactly one assessable
        hip; None when the image has two (or none) or the bundle has no one-hip head."""
        head = self.onehip_heads.get(variant or self.variant)
        if head is None or len(features.hips) != 1:
            return None
        hip = next(iter(features.hips.values()))
        row = patient_row(head.feature_names, features.clinical, {"right": hip, "left": hip})
        return float(head.probability(row[None])[0])

    def probabilities(
        self, features: ImageFeatures, head: LinearHead | None = None
    ) -> tuple[dict[Side, float], float | None]:
        """Per-side (hip duplicated) and combined calibrated probabilities of one head."""
        head = head or self.head
        per_side, combined = self.logits(features, head)
        if combined is None:
            return {}, None
        probs = head.calibration.apply(np.array([*per_side.values(), combined]))
        return (
            {side: float(p) for side, p in zip(per_side, probs[:-1], strict=True)},
            float(probs[-1]),
        )

    def side_probabilities(
        self, features: ImageFeatures
    ) -> tuple[dict[Side, float], float | None, str]:
        """What the node decides on: per-side probabilities, the combined one and which head.

        Two assessable hips: the bilateral head, each hip in both slots. One: the
        variant's one-hip head when the bundle has it, else the bilateral head with
        the hip duplicated (docs/model.md, "One hip").
        """
        per_side, combined = self.probabilities(features)
        onehip = self.onehip_probability(features)
        if onehip is None:
            return per_side, combined, BILATERAL_HEAD
        return {side: onehip for side in per_side}, combined, ONEHIP_HEAD

    def cams(self, features: ImageFeatures) -> dict[Side, np.ndarray]:
        """Grad-CAM per assessable hip on the source grid, scaled together to [0, 1]."""
        rois, inputs = features.rois, features.deep_input
        if not rois:
            return {}
        stand_in = next(iter(inputs.values()))
        left = torch.from_numpy(inputs.get("left", stand_in)[None, None])
        right = torch.from_numpy(inputs.get("right", stand_in)[None, None])
        cam_left, cam_right = grad_cam(self.siamese, left, right)
        maps = {"left": cam_left[0], "right": cam_right[0]}
        if self.roi.deep_factor > 1:  # CNN grid -> ROI grid
            maps = {
                s: ndimage.zoom(m, self.roi.deep_factor, order=1, grid_mode=True, mode="nearest")
                for s, m in maps.items()
            }
        pasted = {side: _paste(rois[side].geometry, maps[side], features.shape) for side in rois}
        peak = max(float(m.max()) for m in pasted.values())
        if peak > 0:
            for m in pasted.values():
                m /= np.float32(peak)  # in place: each map is a full-size array
        return pasted

    # -- ScoringModel -------------------------------------------------------------------
    def assess(self, dataset: pydicom.Dataset) -> ImageAssessment:
        """Score one radiograph (see module doc); raises :class:`NotScorable` if undecodable."""
        features = self.image_features(dataset)
        return self._assessment(features, self.cams(features) if features.rois else {})

    def explain(self, dataset: pydicom.Dataset) -> dict[Side, np.ndarray]:
        """Only the Grad-CAM maps of :meth:`assess` (``{}`` when no hip is assessable)."""
        return self.cams(self.image_features(dataset, texture_names=()))

    def _assessment(
        self, features: ImageFeatures, cams: Mapping[Side, np.ndarray]
    ) -> ImageAssessment:
        per_side, combined, head = self.side_probabilities(features)
        warnings = list(features.warnings)
        if len(per_side) == 1:
            warning = ONEHIP_WARNING if head == ONEHIP_HEAD else STAND_IN_WARNING
            warnings.append(warning.format(side=next(iter(per_side))))
        sides = []
        for side in SIDES:
            roi = features.rois.get(side)
            polygon = _clipped_polygon(roi.geometry, features.shape) if roi else None
            if side in per_side:
                p = per_side[side]
                positive = is_positive(p, self.threshold)
                sides.append(SideAssessment(side, p, None, polygon, positive))
            else:
                reason = features.not_assessable.get(side, "femur not found")
                sides.append(SideAssessment(side, None, reason, polygon, None))
        return ImageAssessment(
            sides=tuple(sides),
            model_name=self.name,
            model_version=self.version,
            threshold=self.threshold,
            synthetic_model=self.synthetic,
            warnings=tuple(warnings),
            extra={"cam": dict(cams), "variant": self.variant, "head": head},
            combined_probability=combined,
        )


def _clipped_polygon(geometry: RoiGeometry, shape: tuple[int, int]) -> list[tuple[float, float]]:
    """The ROI outline clipped to the image (an ROI near the edge reaches past it)."""
    rows, cols = shape
    return [
        (min(max(c, 0.0), cols - 1.0), min(max(r, 0.0), rows - 1.0)) for c, r in geometry.polygon()
    ]


def _paste(geometry: RoiGeometry, roi_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # float32: a map is only drawn and saved (as float32, ``report.results.save_cams``)
    return geometry.paste(np.asarray(roi_map, dtype=np.float64), shape, dtype=np.float32)


def model_info_json(
    texture: TextureSettings, thresholds: Mapping[str, float], extra: Mapping[str, Any]
) -> bytes:
    """``model.json``: texture settings and every variant's threshold (plus free-form extras)."""
    data = {
        "texture": texture.to_json(),
        "thresholds": {v: float(t) for v, t in thresholds.items()},
        **extra,
    }
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
