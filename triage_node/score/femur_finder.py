"""Finding each proximal femur on a decoded radiograph: a tiny U-Net, then per-side masks.

The network sees the whole image resampled to :attr:`FinderConfig.spacing_mm`
(2 mm: a 43 cm field is about 215 pixels wide, so the whole image fits in
one pass on a CPU) and predicts, per pixel, the probability of "proximal
femur" (one class for both sides). Connected components of the thresholded
map become femur candidates; a candidate must

* be large enough to be a femur (``min_area_mm2``) and not absurdly large
  (``max_area_mm2``), and
* be confidently predicted: the mean probability inside it must reach
  ``min_confidence``.

Otherwise that side is "femur not found": the finder never guesses.

Sides: on an AP view the patient's right hip is on the image's left, so a
candidate whose centre lies in the image's left half is the patient's right
femur and vice versa. A unilateral view (Image Laterality ``L`` or ``R``)
shows one hip anywhere in the field: the most probable candidate is that
side's, and the other side is "not in the image". Metal (prosthesis) and
femurs touching the image edge are judged later, by
:func:`triage_node.score.roi.cut_side_roi`, on the mask found here.

Weights and configuration travel as one safetensors file
(``femur_finder.safetensors`` in a bundle); see
:func:`triage_node.train.finder.train_femur_finder` for training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from scipy import ndimage
from torch import nn

from triage_node.assessment import Side
from triage_node.score.decode import resample_to_spacing
from triage_node.score.roi import NOT_FOUND
from triage_node.score.siamese import safetensors_metadata

FINDER_FILE = "femur_finder.safetensors"
NOT_IN_IMAGE = "side not in the image (unilateral view)"
SIDES: tuple[Side, Side] = ("right", "left")
#: Percentiles that scale the whole image to [0, 1] before the network.
INPUT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class FinderConfig:
    """Network size and the acceptance rules for a found femur.

    ``spacing_mm``: network pixel size. ``channels``: feature channels per
    U-Net level (the last one is the bottleneck). ``threshold``: probability
    above which a pixel belongs to a femur. ``min_confidence``: mean
    probability a component needs to count. ``min_area_mm2`` /
    ``max_area_mm2``: believable femur area on the image.
    """

    spacing_mm: float = 4.0
    channels: tuple[int, ...] = (8, 16, 32, 64)
    threshold: float = 0.5
    min_confidence: float = 0.75
    min_area_mm2: float = 1500.0
    max_area_mm2: float = 30000.0

    def __post_init__(self) -> None:
        if self.spacing_mm <= 0:
            raise ValueError(f"FinderConfig.spacing_mm: {self.spacing_mm} must be > 0")
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"FinderConfig.channels: {self.channels} needs >= 2 levels >= 1")
        for name in ("threshold", "min_confidence"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"FinderConfig.{name}: {getattr(self, name)} not in (0, 1)")
        if not 0 < self.min_area_mm2 < self.max_area_mm2:
            raise ValueError("FinderConfig: need 0 < min_area_mm2 < max_area_mm2")

    @property
    def multiple(self) -> int:
        """Input edges are padded to a multiple of this (one halving per level below the top)."""
        return 2 ** (len(self.channels) - 1)

    def to_json(self) -> str:
        """The configuration as JSON (stored in the safetensors metadata)."""
        return json.dumps({**asdict(self), "channels": list(self.channels)})

    @classmethod
    def from_json(cls, text: str) -> FinderConfig:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(**{**data, "channels": tuple(int(c) for c in data["channels"])})


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """A small U-Net: (B, 1, H, W) image -> (B, 1, H, W) femur logits; H, W multiples of 2^(L-1)."""

    def __init__(self, channels: tuple[int, ...] = (8, 16, 32)) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = 1
        for c in channels:
            self.down.append(_double_conv(c_prev, c))
            c_prev = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_skip in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(c_prev, c_skip, 2, stride=2))
            self.merge.append(_double_conv(2 * c_skip, c_skip))
            c_prev = c_skip
        self.out = nn.Conv2d(c_prev, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


def network_input(
    pixels: np.ndarray, spacing_mm: tuple[float, float], config: FinderConfig
) -> np.ndarray:
    """The decoded image at the finder's spacing, scaled to [0, 1] (float32, unpadded)."""
    small = resample_to_spacing(pixels, spacing_mm, config.spacing_mm)
    lo, hi = np.percentile(small, INPUT_PERCENTILES)
    if hi <= lo:
        return np.zeros(small.shape, dtype=np.float32)
    return np.clip((small - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def network_target(
    mask: np.ndarray, spacing_mm: tuple[float, float], config: FinderConfig
) -> np.ndarray:
    """A source-grid femur mask at the finder's spacing (area fraction > 0.5), float32 0/1."""
    small = resample_to_spacing(np.asarray(mask, dtype=np.float64), spacing_mm, config.spacing_mm)
    return (small > 0.5).astype(np.float32)


def pad_to_multiple(array: np.ndarray, multiple: int, value: float = 0.0) -> np.ndarray:
    """Pad a 2-D array at the bottom and right so both edges are multiples of ``multiple``."""
    rows = -array.shape[0] % multiple
    cols = -array.shape[1] % multiple
    return np.pad(array, ((0, rows), (0, cols)), constant_values=value)


@dataclass(frozen=True)
class FoundFemurs:
    """The finder's answer for one image.

    ``masks[side]``: the femur mask on the source grid (uint8 0/1), or None
    with ``reasons[side]`` saying why. ``confidence[side]``: mean network
    probability inside the chosen component (0 when nothing was there).
    ``probability``: the network's map at the finder's spacing (for review).
    """

    masks: dict[Side, np.ndarray | None]
    reasons: dict[Side, str | None]
    confidence: dict[Side, float]
    probability: np.ndarray


class FemurFinder:
    """A trained finder. Calls are thread-safe (eval mode, no state changes)."""

    def __init__(self, net: TinyUNet, config: FinderConfig) -> None:
        self.net = net.eval()
        self.config = config

    @torch.no_grad()
    def probability_map(self, pixels: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
        """Per-pixel femur probability at the finder's spacing (unpadded shape)."""
        image = network_input(pixels, spacing_mm, self.config)
        padded = pad_to_multiple(image, self.config.multiple)
        logits = self.net(torch.from_numpy(padded)[None, None])
        return torch.sigmoid(logits)[0, 0].numpy()[: image.shape[0], : image.shape[1]]

    def find(
        self,
        pixels: np.ndarray,
        spacing_mm: tuple[float, float],
        laterality: str | None = None,
    ) -> FoundFemurs:
        """Find the patient's right and left proximal femurs on a decoded image.

        ``pixels``/``spacing_mm`` as from
        :func:`triage_node.score.decode.decode_radiograph`; ``laterality``:
        Image Laterality (``"L"``/``"R"`` for a one-hip view, else None/"B").
        """
        cfg = self.config
        prob = self.probability_map(pixels, spacing_mm)
        labels, count = ndimage.label(prob >= cfg.threshold)
        pixel_mm2 = cfg.spacing_mm**2
        candidates: list[tuple[float, float, int]] = []  # (confidence, centre column, label)
        best_rejected = 0.0
        for index in range(1, count + 1):
            inside = labels == index
            area = float(inside.sum()) * pixel_mm2
            confidence = float(prob[inside].mean())
            if cfg.min_area_mm2 <= area <= cfg.max_area_mm2 and confidence >= cfg.min_confidence:
                candidates.append((confidence, float(np.nonzero(inside)[1].mean()), index))
            elif area >= cfg.min_area_mm2 / 4:
                best_rejected = max(best_rejected, confidence)
        chosen: dict[Side, tuple[float, int] | None] = {"right": None, "left": None}
        reasons: dict[Side, str | None] = {"right": None, "left": None}
        if laterality in ("L", "R"):
            side: Side = "left" if laterality == "L" else "right"
            other: Side = "right" if side == "left" else "left"
            reasons[other] = NOT_IN_IMAGE
            if candidates:
                confidence, _, index = max(candidates, key=lambda c: (c[0], -c[2]))
                chosen[side] = (confidence, index)
        else:
            middle = prob.shape[1] / 2.0
            for confidence, centre, index in sorted(candidates, key=lambda c: (-c[0], c[2])):
                side = "right" if centre < middle else "left"  # patient's right = image left
                if chosen[side] is None:
                    chosen[side] = (confidence, index)
        masks: dict[Side, np.ndarray | None] = {}
        confidences: dict[Side, float] = {}
        for name in SIDES:
            pick = chosen[name]
            if pick is None:
                masks[name] = None
                confidences[name] = best_rejected if reasons[name] is None else 0.0
                reasons[name] = reasons[name] or NOT_FOUND
                continue
            confidences[name] = pick[0]
            component = (labels == pick[1]) * prob
            masks[name] = self._to_source(component, pixels.shape, spacing_mm)
        return FoundFemurs(masks, reasons, confidences, prob)

    def _to_source(
        self, component_prob: np.ndarray, shape: tuple[int, ...], spacing_mm: tuple[float, float]
    ) -> np.ndarray:
        """Upsample one component's probability (linear) and threshold it on the source grid."""
        steps = (spacing_mm[0] / self.config.spacing_mm, spacing_mm[1] / self.config.spacing_mm)
        rows, cols = np.nonzero(component_prob > 0)
        # Work in a box around the component only: the source grid can be 3000 x 3000.
        margin = 2
        r0, r1 = max(rows.min() - margin, 0), rows.max() + margin + 1
        c0, c1 = max(cols.min() - margin, 0), cols.max() + margin + 1
        src_r0 = int(np.floor(r0 / steps[0]))
        src_r1 = min(int(np.ceil(r1 / steps[0])), shape[0])
        src_c0 = int(np.floor(c0 / steps[1]))
        src_c1 = min(int(np.ceil(c1 / steps[1])), shape[1])
        rr, cc = np.mgrid[src_r0:src_r1, src_c0:src_c1].astype(np.float64)
        values = ndimage.map_coordinates(
            component_prob, [rr * steps[0], cc * steps[1]], order=1, mode="constant", cval=0.0
        )
        box = (values >= self.config.threshold).astype(np.uint8)
        labels, count = ndimage.label(box)  # in the box: nothing lies outside it
        if count > 1:  # keep the main piece; interpolation can split thin tips
            sizes = np.bincount(labels.ravel())[1:]
            box = (labels == 1 + int(np.argmax(sizes))).astype(np.uint8)
        mask = np.zeros(shape[:2], dtype=np.uint8)
        mask[src_r0:src_r1, src_c0:src_c1] = box
        return mask

    def to_safetensors(self) -> bytes:
        """Weights plus configuration as safetensors bytes (no pickle)."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        return save(state, metadata={"finder_config": self.config.to_json()})

    @classmethod
    def from_safetensors(cls, data: bytes, name: str = FINDER_FILE) -> FemurFinder:
        """Rebuild a finder from :meth:`to_safetensors` bytes; ``ValueError`` naming ``name``."""
        metadata = safetensors_metadata(data)
        if "finder_config" not in metadata:
            raise ValueError(f"{name}: no finder_config in the safetensors metadata")
        config = FinderConfig.from_json(metadata["finder_config"])
        net = TinyUNet(config.channels)
        try:
            net.load_state_dict(load(data), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{name}: weights do not fit the femur finder: {exc}") from None
        return cls(net, config)
