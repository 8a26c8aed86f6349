"""Acquisition-processing augmentation of the Siamese branch's inputs (training only).

Sites differ in how they process a radiograph after it is acquired: range
compression (local contrast equalisation), edge enhancement, the LUT's gamma,
highlight clipping, noise. The CNN sees each hip's ROI scaled between its
0.5th and 99.5th percentiles (:func:`triage_node.score.siamese.normalise_roi`),
which removes gain and offset but none of these. During training, each pair
is, with probability ``probability`` per epoch, passed through one randomly
drawn processing chain, applied to both hips alike (one image, one site), and
normalised again as at scoring time:

1. range compression ``x - c * (G_25mm * x - mean)``, ``c`` in [0, 0.9];
2. unsharp masking ``x + a * (x - G_s * x)``, ``a`` in [0, 2.2], ``s`` in [1, 1.5] mm;
3. a gamma in [0.7, 1.4] (log-uniform) on the values clipped to [0, 1];
4. highlight clipping ``min(g * x, 1)`` at a gain ``g`` in [1, 1.3];
5. Gaussian noise of SD in [0, 0.03] of the range.

The ranges span the processing of the synthetic generator's vendors and site
profiles (docs/synth.md) and of what real DR/CR processing does; they are
generic, not one profile's: a profile held out of training is held out of
the augmentation's choice too, apart from sharing these generic kinds of
processing. Borders, shutters, grid lines and metal are the input checks'
business, not the CNN's. The draws are a pure function of (seed, epoch), so
training stays reproducible; cached features and the heads' inputs are never
augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from triage_node.score.siamese import NORMALISE_PERCENTILES

#: Draw ranges (see module doc).
RANGE_COMPRESSION = (0.0, 0.9)
COMPRESSION_SIGMA_MM = 25.0
EDGE_AMOUNT = (0.0, 2.2)
EDGE_SIGMA_MM = (1.0, 1.5)
GAMMA = (0.7, 1.4)
CLIP_GAIN = (1.0, 1.3)
NOISE_SD = (0.0, 0.03)


@dataclass(frozen=True)
class ProcessingDraw:
    """One pair's processing chain (per-pair arrays of length B; ``apply`` False: untouched)."""

    apply: np.ndarray
    compression: np.ndarray
    edge_amount: np.ndarray
    edge_sigma_mm: np.ndarray
    gamma: np.ndarray
    clip_gain: np.ndarray
    noise_sd: np.ndarray

    @classmethod
    def sample(cls, count: int, probability: float, rng: np.random.Generator) -> ProcessingDraw:
        """``count`` draws; each pair is processed with ``probability``."""
        u = rng.uniform
        return cls(
            apply=rng.random(count) < probability,
            compression=u(*RANGE_COMPRESSION, count),
            edge_amount=u(*EDGE_AMOUNT, count),
            edge_sigma_mm=u(*EDGE_SIGMA_MM, count),
            gamma=np.exp(u(math.log(GAMMA[0]), math.log(GAMMA[1]), count)),
            clip_gain=u(*CLIP_GAIN, count),
            noise_sd=u(*NOISE_SD, count),
        )


def _gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflected edges."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    padded = functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = functional.conv2d(padded, kernel.view(1, 1, 1, -1))
    return functional.conv2d(out, kernel.view(1, 1, -1, 1))


def _renormalise(x: torch.Tensor) -> torch.Tensor:
    """Per sample, as ``normalise_roi``: [0, 1] between the 0.5th and 99.5th percentiles."""
    flat = x.flatten(1)
    q = torch.tensor([p / 100.0 for p in NORMALISE_PERCENTILES], dtype=x.dtype)
    lo, hi = torch.quantile(flat, q, dim=1)
    span = (hi - lo).clamp_min(1e-6).view(-1, 1, 1, 1)
    return ((x - lo.view(-1, 1, 1, 1)) / span).clamp(0.0, 1.0)


def process(
    x: torch.Tensor,
    draw: ProcessingDraw,
    spacing_mm: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``x`` (B, 1, H, W, normalised ROIs) through each pair's drawn chain, renormalised.

    Rows whose ``draw.apply`` is False are returned unchanged. ``spacing_mm``:
    the inputs' pixel size (the blur widths are in mm).
    """
    rows = torch.from_numpy(np.flatnonzero(draw.apply))
    if len(rows) == 0:
        return x
    sel = draw.apply
    y = x[rows].clone()

    def per(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values[sel].astype(np.float32)).view(-1, 1, 1, 1)

    low = _gaussian_blur(y, COMPRESSION_SIGMA_MM / spacing_mm)
    y = y - per(draw.compression) * (low - low.mean(dim=(2, 3), keepdim=True))
    # one blur width per batch keeps this vectorised; the amount varies per pair
    sigma = float(np.mean(draw.edge_sigma_mm[sel])) / spacing_mm
    y = y + per(draw.edge_amount) * (y - _gaussian_blur(y, sigma))
    y = _renormalise(y)
    y = y.clamp(0.0, 1.0) ** per(draw.gamma)
    y = torch.minimum(y * per(draw.clip_gain), torch.ones_like(y))
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    y = _renormalise(y + per(draw.noise_sd) * noise)
    out = x.clone()
    out[rows] = y.to(x.dtype)
    return out


class PairAugmenter:
    """Processing augmentation of a training batch's pairs (both hips of a pair alike).

    Deterministic: the draws of epoch ``e`` come from ``(seed, e)``.
    """

    def __init__(self, probability: float, spacing_mm: float, seed: int) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"augmentation probability {probability} not in [0, 1]")
        self.probability = probability
        self.spacing_mm = spacing_mm
        self.seed = seed
        self._rng = np.random.default_rng([seed, 0])
        self._torch = torch.Generator().manual_seed(seed)

    def start_epoch(self, epoch: int) -> None:
        """Reset the draws to this epoch's stream."""
        self._rng = np.random.default_rng([self.seed, epoch])
        self._torch = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def __call__(
        self, left: torch.Tensor, right: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's pairs, each processed (or not) by its own draw."""
        if self.probability <= 0.0:
            return left, right
        draw = ProcessingDraw.sample(len(left), self.probability, self._rng)
        return (
            process(left, draw, self.spacing_mm, self._torch),
            process(right, draw, self.spacing_mm, self._torch),
        )
