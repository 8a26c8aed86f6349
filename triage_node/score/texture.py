"""Texture (radiomics) features of one femur ROI, configured as in the paper's code.

Configuration (Kim et al. 2022, code ``feature_main.py``):

* intensities z-scored inside the mask (mean 0, SD 1 over mask pixels);
* pyradiomics classes first-order, GLCM, GLSZM, GLRLM, NGTDM and shape on the
  z-scored image ("original");
* the same classes without shape on the three detail bands of
  ``pywt.dwt2(image, "bior1.3")`` (LH, HL, HH), each band resized back to the
  ROI grid with cubic interpolation (the paper's code did the same with OpenCV).

Differences from the paper, on purpose:

* 2D extraction (``force2D``) with pyradiomics' ``shape2D`` class (9 features)
  instead of 3D ``shape`` on a one-pixel-thick volume (14 features that
  describe a slab, not a femur): 88 + 3 x 79 = **325 features per side**
  instead of 330.
* Binning. The paper passed ``binwidth=25`` (lower-case, so pyradiomics used
  its default ``binWidth`` 25 anyway); on z-scored values that is one grey
  level and every texture matrix degenerates. We use a fixed bin width in SD
  units: 0.2 on the z-scored image (about 30 grey levels over +-3 SD) and 0.1
  on the wavelet bands (detail coefficients have roughly 0.3-0.5 SD, again
  about 25-30 levels). Fixed width rather than fixed count keeps a band with
  little texture energy coarse instead of stretching its noise to 32 levels.
* Outside the mask the z-scored image is 0 (the mask mean) rather than the
  paper's large negative constant, so the wavelet bands do not ring at the
  mask border.

Intensity normalisation (``TextureSettings.normalisation``, recorded in a
bundle's ``model.json``; a bundle without the key uses ``"zscore"``):

* ``"zscore"`` (the paper's, and every bundle before the key existed): the
  mean and SD inside the mask. This is pyradiomics' own ``normalize`` setting
  restricted to the ROI (pyradiomics z-scores the whole image), so the features
  are already unchanged by a linear change of contrast (window, gain, offset).
* ``"rank"``: each pixel inside the mask is replaced by the normal score of its
  rank, ``Phi^-1((rank - 0.5) / n)`` (ties share their mean rank): mean 0, SD
  about 1, so the same bin widths apply. The values depend only on the order of
  the intensities, so any monotone processing a site applies (gamma, LUT shape,
  range compression) leaves them unchanged; what a monotone map cannot undo
  (edge enhancement, noise, clipping that ties the brightest pixels) still
  shows. pyradiomics has no such setting; this is the rank-based inverse normal
  transform used for the same purpose in quantitative imaging.

Feature names follow pyradiomics: ``original_<class>_<feature>`` and
``wavelet-LH_<class>_<feature>`` (HL, HH likewise).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pywt
import SimpleITK as sitk
from radiomics import featureextractor, getFeatureClasses, setVerbosity
from scipy import ndimage, special, stats

ORIGINAL = "original"
WAVELET_BANDS = ("LH", "HL", "HH")
WAVELET = "bior1.3"
TEXTURE_CLASSES = ("firstorder", "glcm", "glszm", "glrlm", "ngtdm")
SHAPE_CLASS = "shape2D"
IMAGE_TYPES = (ORIGINAL,) + tuple(f"wavelet-{band}" for band in WAVELET_BANDS)
ZSCORE = "zscore"
RANK = "rank"
NORMALISATIONS = (ZSCORE, RANK)


@dataclass(frozen=True)
class TextureSettings:
    """Discretisation and geometry for extraction.

    ``original_bin_width`` and ``wavelet_bin_width`` are in SD units of the
    z-scored ROI; ``spacing_mm`` is the (row, column) pixel spacing of the ROI
    grid in millimetres (it scales the shape features only); ``normalisation``
    is how the ROI's intensities are made unit-free (:data:`NORMALISATIONS`, see
    module doc).
    """

    original_bin_width: float = 0.2
    wavelet_bin_width: float = 0.1
    spacing_mm: tuple[float, float] = (0.5, 0.5)
    normalisation: str = ZSCORE

    def __post_init__(self) -> None:
        for name in ("original_bin_width", "wavelet_bin_width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TextureSettings.{name}: must be > 0, got {getattr(self, name)}")
        if len(self.spacing_mm) != 2 or min(self.spacing_mm) <= 0:
            raise ValueError(f"TextureSettings.spacing_mm: bad spacing {self.spacing_mm}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"TextureSettings.normalisation: {self.normalisation!r} not in {NORMALISATIONS}"
            )

    def to_json(self) -> dict[str, Any]:
        """The ``"texture"`` object of ``model.json``. ``normalisation`` is written only when
        it is not ``"zscore"``, so bundles (and feature caches) of the default are unchanged."""
        data: dict[str, Any] = {
            "original_bin_width": self.original_bin_width,
            "wavelet_bin_width": self.wavelet_bin_width,
            "spacing_mm": list(self.spacing_mm),
        }
        if self.normalisation != ZSCORE:
            data["normalisation"] = self.normalisation
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TextureSettings:
        """Settings from a ``model.json`` ``"texture"`` object; without ``normalisation``
        (every bundle before it existed): ``"zscore"``, as those bundles were trained."""
        spacing = data.get("spacing_mm", cls.spacing_mm)
        return cls(
            original_bin_width=float(data["original_bin_width"]),
            wavelet_bin_width=float(data["wavelet_bin_width"]),
            spacing_mm=(float(spacing[0]), float(spacing[1])),
            normalisation=str(data.get("normalisation", ZSCORE)),
        )


@cache
def _class_feature_names(feature_class: str) -> tuple[str, ...]:
    names = getFeatureClasses()[feature_class].getFeatureNames()
    return tuple(sorted(name for name, deprecated in names.items() if not deprecated))


def _classes_for(image_type: str) -> tuple[str, ...]:
    return TEXTURE_CLASSES + ((SHAPE_CLASS,) if image_type == ORIGINAL else ())


@cache
def texture_feature_names() -> tuple[str, ...]:
    """All texture feature names of one side, in extraction order (325 names)."""
    return tuple(
        f"{image_type}_{feature_class}_{feature}"
        for image_type in IMAGE_TYPES
        for feature_class in _classes_for(image_type)
        for feature in _class_feature_names(feature_class)
    )


def mirror_for_side(roi: np.ndarray, mirror: bool) -> np.ndarray:
    """Flip ``roi`` left-right when ``mirror`` is set (the paper mirrors one hip so both match).

    Which side gets mirrored is decided where ROIs are cut (``score/roi.py``);
    texture and deep branches take already-oriented ROIs.
    """
    return np.ascontiguousarray(roi[:, ::-1]) if mirror else roi


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score ``image`` with the mean and SD of the pixels inside ``mask``; 0 outside.

    Raises ``ValueError`` when the mask is empty or the ROI has no contrast.
    """
    inside = mask.astype(bool)
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} != mask shape {mask.shape}")
    if inside.sum() < 2:
        raise ValueError("mask: fewer than 2 pixels inside the ROI")
    values = image[inside].astype(np.float64)
    sd = float(values.std())
    if sd == 0.0:
        raise ValueError("image: constant intensity inside the mask (no texture to measure)")
    z = np.zeros(image.shape, dtype=np.float64)
    z[inside] = (values - values.mean()) / sd
    return z


def rank_normal_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks of ``image`` inside ``mask``, ``Phi^-1((r - 0.5) / n)``
    (ties: mean rank); 0 outside. Unchanged by any strictly increasing map of ``image``.

    Raises ``ValueError`` like :func:`zscore_in_mask`.
    """
    zscore_in_mask(image, mask)  # the same checks (shape, size, contrast)
    inside = mask.astype(bool)
    values = image[inside].astype(np.float64)
    ranks = stats.rankdata(values, method="average")
    out = np.zeros(image.shape, dtype=np.float64)
    out[inside] = special.ndtri((ranks - 0.5) / values.size)
    return out


def normalise_in_mask(image: np.ndarray, mask: np.ndarray, normalisation: str) -> np.ndarray:
    """The ROI normalised as ``normalisation`` says (see module doc)."""
    if normalisation == RANK:
        return rank_normal_in_mask(image, mask)
    if normalisation == ZSCORE:
        return zscore_in_mask(image, mask)
    raise ValueError(f"normalisation: {normalisation!r} not in {NORMALISATIONS}")


def wavelet_bands(image: np.ndarray, bands: Iterable[str] = WAVELET_BANDS) -> dict[str, np.ndarray]:
    """Detail bands of ``pywt.dwt2(image, 'bior1.3')`` (``bands``: of LH, HL, HH), each
    resized to ``image.shape``; only the bands asked for are resized."""
    _, (lh, hl, hh) = pywt.dwt2(image, WAVELET)
    wanted = set(bands)
    out = {}
    for name, band in zip(WAVELET_BANDS, (lh, hl, hh), strict=True):
        if name not in wanted:
            continue
        factors = (image.shape[0] / band.shape[0], image.shape[1] / band.shape[1])
        resized = ndimage.zoom(band, factors, order=3, grid_mode=True, mode="grid-mirror")
        out[name] = resized[: image.shape[0], : image.shape[1]]
    return out


def _to_sitk(array: np.ndarray, spacing_mm: tuple[float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((float(spacing_mm[1]), float(spacing_mm[0])))  # sitk: (x=col, y=row)
    return image


def _extract(
    image: np.ndarray,
    mask_image: sitk.Image,
    image_type: str,
    enabled: dict[str, list[str]],
    settings: TextureSettings,
) -> dict[str, float]:
    setVerbosity(logging.ERROR)  # its own stderr handler
    # Importing radiomics sets its logger to INFO, and those records (several per ROI)
    # would also reach the node's log handler: keep its warnings and errors only.
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    bin_width = (
        settings.original_bin_width if image_type == ORIGINAL else settings.wavelet_bin_width
    )
    extractor = featureextractor.RadiomicsFeatureExtractor(
        binWidth=bin_width,
        force2D=True,
        force2Ddimension=0,
        label=1,
        additionalInfo=False,
    )
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(**enabled)
    extractor.enableImageTypes(Original={})
    result = extractor.execute(_to_sitk(image, settings.spacing_mm), mask_image)
    out: dict[str, float] = {}
    for key, value in result.items():
        if key.startswith("original_"):
            out[f"{image_type}_{key[len('original_') :]}"] = float(value)
    return out


TextureGroup = tuple[str, str]
"""(image type, feature class), e.g. ``("wavelet-HH", "glcm")``: what pyradiomics computes
at once. Its cost is the class's matrices on that image, whatever features are read."""

#: The cost model of cost-aware selection: CPU seconds per ROI (256 px, full-size
#: radiographs, one thread; medians of 16 ROIs, ``bench/score --group-costs``, 2026-12-01).
#: Each image type computed pays a set-up (the z-scored image or band handed to
#: pyradiomics, its mask and discretisation), each wavelet band its transform and resize,
#: and each class its matrices and features (measured as what leaving the class out of
#: its image type saves). Only their ratios matter (:func:`texture_cost`).
IMAGE_TYPE_SECONDS = 0.0064
WAVELET_BAND_SECONDS = 0.0045
_CLASS_SECONDS = {
    ORIGINAL: {
        "firstorder": 0.0079,
        "glcm": 0.0055,
        "glszm": 0.0035,
        "glrlm": 0.0035,
        "ngtdm": 0.0028,
        "shape2D": 0.0020,
    },
    "wavelet-LH": {
        "firstorder": 0.0081,
        "glcm": 0.0056,
        "glszm": 0.0035,
        "glrlm": 0.0034,
        "ngtdm": 0.0037,
    },
    "wavelet-HL": {
        "firstorder": 0.0081,
        "glcm": 0.0057,
        "glszm": 0.0035,
        "glrlm": 0.0032,
        "ngtdm": 0.0035,
    },
    "wavelet-HH": {
        "firstorder": 0.0080,
        "glcm": 0.0045,
        "glszm": 0.0031,
        "glrlm": 0.0034,
        "ngtdm": 0.0033,
    },
}
GROUP_SECONDS: dict[TextureGroup, float] = {
    (image_type, feature_class): seconds
    for image_type, classes in _CLASS_SECONDS.items()
    for feature_class, seconds in classes.items()
}


def texture_group(name: str) -> TextureGroup:
    """The (image type, feature class) group of a pyradiomics base name
    (``"wavelet-HH_glcm_Contrast"`` -> ``("wavelet-HH", "glcm")``)."""
    parts = name.split("_", 2)
    if len(parts) != 3 or parts[0] not in IMAGE_TYPES or parts[1] not in _classes_for(parts[0]):
        raise ValueError(f"texture feature name {name!r}: no (image type, class) group")
    return parts[0], parts[1]


def texture_groups(names: Iterable[str]) -> list[TextureGroup]:
    """The distinct groups of base names, in :func:`texture_feature_names` order."""
    wanted = {texture_group(n) for n in names}
    return [g for g in all_texture_groups() if g in wanted]


@cache
def all_texture_groups() -> tuple[TextureGroup, ...]:
    """Every (image type, class) group, in extraction order (21)."""
    return tuple((t, c) for t in IMAGE_TYPES for c in _classes_for(t))


def texture_cost(groups: Iterable[TextureGroup]) -> float:
    """Estimated seconds per ROI to compute ``groups`` (see :data:`GROUP_SECONDS`).

    Each image type used pays its set-up once, each wavelet band its transform and
    resize once, and each group its matrices.
    """
    chosen = set(groups)
    types = {t for t, _ in chosen}
    return (
        IMAGE_TYPE_SECONDS * len(types)
        + WAVELET_BAND_SECONDS * sum(1 for t in types if t != ORIGINAL)
        + sum(GROUP_SECONDS[g] for g in chosen)
    )


def _parse(name: str) -> tuple[str, str, str]:
    parts = name.split("_", 2)
    if len(parts) != 3 or parts[0] not in IMAGE_TYPES or parts[1] not in _classes_for(parts[0]):
        raise ValueError(f"texture feature name {name!r}: not one of texture_feature_names()")
    if parts[2] not in _class_feature_names(parts[1]):
        raise ValueError(f"texture feature name {name!r}: unknown feature {parts[2]!r}")
    return parts[0], parts[1], parts[2]


def extract_selected_texture(
    image: np.ndarray,
    mask: np.ndarray,
    names: Iterable[str],
    settings: TextureSettings | None = None,
) -> dict[str, float]:
    """Compute only the texture features in ``names`` for one oriented ROI.

    ``image`` is the ROI's intensities (any unit; normalised here), ``mask`` the
    femur mask on the same grid (non-zero inside). Only the image types and
    feature classes that ``names`` need are computed; the wavelet transform is
    skipped entirely when no band feature is asked for. Returns name -> value
    in the order of ``names``.
    """
    settings = settings or TextureSettings()
    wanted = list(dict.fromkeys(names))
    by_type: dict[str, dict[str, list[str]]] = {}
    for name in wanted:
        image_type, feature_class, feature = _parse(name)
        by_type.setdefault(image_type, {}).setdefault(feature_class, []).append(feature)
    if not wanted:
        return {}
    mask01 = (np.asarray(mask) != 0).astype(np.uint8)
    z = normalise_in_mask(np.asarray(image, dtype=np.float64), mask01, settings.normalisation)
    mask_image = _to_sitk(mask01, settings.spacing_mm)
    bands = wavelet_bands(z, [t.split("-", 1)[1] for t in by_type if t != ORIGINAL])
    values: dict[str, float] = {}
    for image_type, enabled in by_type.items():
        source = z if image_type == ORIGINAL else bands[image_type.split("-", 1)[1]]
        values.update(_extract(source, mask_image, image_type, enabled, settings))
    return {name: values[name] for name in wanted}


def extract_texture(
    image: np.ndarray, mask: np.ndarray, settings: TextureSettings | None = None
) -> dict[str, float]:
    """All 325 texture features of one oriented ROI (see :func:`texture_feature_names`).

    Used for training (selection needs every candidate) and as the benchmark
    baseline for :func:`extract_selected_texture`.
    """
    return extract_selected_texture(image, mask, texture_feature_names(), settings)


def side_feature_names(names: Sequence[str], side: str) -> list[str]:
    """Prefix per-side feature names with the side, e.g. ``right:original_glcm_Contrast``."""
    if side not in ("left", "right"):
        raise ValueError(f"side: {side!r} is not 'left' or 'right'")
    return [f"{side}:{name}" for name in names]
