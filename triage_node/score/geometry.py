"""Where an ROI sits on the source image: cutting ROIs out and mapping maps and points back.

An ROI is a square grid of ``size`` x ``size`` pixels at a fixed spacing (see
``siamese.ROI_SIZE_PX`` / ``ROI_SPACING_MM``). Its pixel (u, v) (row, column)
samples the source image at row ``origin_row + u * step_rows`` and column
``origin_col + v' * step_cols``, where ``v' = size - 1 - v`` when the ROI is
mirrored (so every hip looks like the same side) and ``v' = v`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RoiGeometry:
    """The affine map between ROI pixels and source-image pixels.

    ``origin_row``/``origin_col``: source pixel coordinates of ROI pixel (0, 0)
    before mirroring. ``step_rows``/``step_cols``: source pixels per ROI pixel
    (ROI spacing / source spacing). ``size``: ROI edge in pixels.
    """

    origin_row: float
    origin_col: float
    step_rows: float
    step_cols: float
    size: int
    mirrored: bool = False

    def __post_init__(self) -> None:
        if self.step_rows <= 0 or self.step_cols <= 0:
            raise ValueError(f"RoiGeometry steps must be > 0: {self.step_rows}, {self.step_cols}")
        if self.size < 2:
            raise ValueError(f"RoiGeometry.size: {self.size} < 2")

    def roi_to_source(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source (row, column) of ROI pixel coordinates (fractional allowed)."""
        cols = np.asarray(cols, dtype=np.float64)
        if self.mirrored:
            cols = (self.size - 1) - cols
        return (
            self.origin_row + np.asarray(rows, dtype=np.float64) * self.step_rows,
            self.origin_col + cols * self.step_cols,
        )

    def source_to_roi(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ROI (row, column) of source pixel coordinates; inverse of :meth:`roi_to_source`."""
        u = (np.asarray(rows, dtype=np.float64) - self.origin_row) / self.step_rows
        v = (np.asarray(cols, dtype=np.float64) - self.origin_col) / self.step_cols
        if self.mirrored:
            v = (self.size - 1) - v
        return u, v

    def cut(self, image: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """Sample the ROI from a 2D source ``image`` (``order`` 1 = bilinear, 0 = nearest).

        Bilinear sampling is float64; nearest keeps ``image``'s dtype (it only copies
        values, and a full-size mask need not be converted first).
        """
        u, v = np.mgrid[: self.size, : self.size]
        r, c = self.roi_to_source(u, v)
        data = image if order == 0 else np.asarray(image, dtype=np.float64)
        return ndimage.map_coordinates(data, [r, c], order=order, mode="constant", cval=cval)

    def paste(
        self,
        roi_map: np.ndarray,
        source_shape: tuple[int, int],
        dtype: type[np.floating[Any]] = np.float64,
    ) -> np.ndarray:
        """Map an ROI-grid array (e.g. a Grad-CAM) onto the source grid; 0 outside the ROI.

        ``dtype``: of the result (float32 halves a full-size map; the interpolation
        itself is done in float64 either way).
        """
        if roi_map.shape != (self.size, self.size):
            raise ValueError(f"roi_map shape {roi_map.shape} != ROI ({self.size}, {self.size})")
        edge = self.size - 1.0
        r, c = self.roi_to_source(
            np.array([0.0, 0.0, edge, edge]), np.array([0.0, edge, 0.0, edge])
        )
        row_lo = max(int(np.floor(r.min())), 0)
        row_hi = min(int(np.ceil(r.max())) + 1, source_shape[0])
        col_lo = max(int(np.floor(c.min())), 0)
        col_hi = min(int(np.ceil(c.max())) + 1, source_shape[1])
        out = np.zeros(source_shape, dtype=dtype)
        if row_lo >= row_hi or col_lo >= col_hi:
            return out
        rows, cols = np.mgrid[row_lo:row_hi, col_lo:col_hi]
        u, v = self.source_to_roi(rows, cols)
        out[row_lo:row_hi, col_lo:col_hi] = ndimage.map_coordinates(
            np.asarray(roi_map, dtype=np.float64), [u, v], order=1, mode="constant", cval=0.0
        )
        return out

    def polygon(self) -> list[tuple[float, float]]:
        """The ROI outline on the source image as closed (column, row) points."""
        corners_u = np.array([0.0, 0.0, self.size - 1.0, self.size - 1.0, 0.0])
        corners_v = np.array([0.0, self.size - 1.0, self.size - 1.0, 0.0, 0.0])
        r, c = self.roi_to_source(corners_u, corners_v)
        return [(float(cc), float(rr)) for rr, cc in zip(r, c, strict=True)]
