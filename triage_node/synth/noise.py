"""Band-limited random fields used for texture, made cheaply at a coarse grid and upsampled."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float image to ``shape`` (rows, cols); fast (Pillow, float32)."""
    if a.shape == shape:
        return a.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.array(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], spacing_mm: float, scale_mm: float
) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``scale_mm``.

    The field is drawn on a grid about ``scale_mm / 2`` apart and upsampled, so the
    cost does not grow with the correlation length.
    """
    step = max(1.0, scale_mm / (2.0 * spacing_mm))
    coarse = (max(2, int(np.ceil(shape[0] / step))), max(2, int(np.ceil(shape[1] / step))))
    white = rng.standard_normal(coarse, dtype=np.float32)
    field = ndimage.gaussian_filter(white, scale_mm / (spacing_mm * step), mode="wrap")
    field = resize(field, shape)
    std = float(field.std()) or 1.0
    return ((field - field.mean()) / std).astype(np.float32)
