"""The paper's Siamese CNN: one shared branch per hip, 128 pooled features a side, Grad-CAM.

Architecture (Kim et al. 2022, code ``siamese/Siamese.py`` ``Branch`` with
``bw=32``): block 1 = three 3x3 conv-BN-ReLU with 32 channels (the first with
stride 2) and 2x2 max-pooling; block 2 = two with 64 channels and max-pooling;
block 3 = one with 128 channels; global average pooling gives 128 features
per side. Both hips go through the same branch; the head is dropout + a linear
layer on the 256 concatenated features and softmax over two classes
(trained with cross-entropy on the logits, which is the same thing).

Differences from the paper, on purpose: convolutions use padding 1 (the
paper's padding 0 loses a border at every layer and makes small inputs
vanish); inputs are ROIs of :data:`ROI_SIZE_PX` pixels at
:data:`ROI_SPACING_MM` mm, so one network pixel is the same distance on every
detector (the paper resized whole halves to a fixed size).

ROI size: a 128 mm square, enough for femoral head, neck, trochanters and
upper shaft of an adult, cut at 256 x 256 pixels at 0.5 mm; by default the
CNN sees it block-averaged to 128 x 128 at 1.0 mm (block 3 then has a
16 x 16 map, 8 mm a cell, for Grad-CAM), or at full resolution (32 x 32 map);
the bundle's ``model.json`` (``roi.deep_factor``) says which. Trabeculae themselves are finer than
0.5 mm; the texture branch sees the same grid, the CNN learns the coarser
trabecular pattern and cortical thickness. The network is size-agnostic (GAP),
so tests use small ROIs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from torch import nn

#: The ROI grid (256 px at 0.5 mm = 128 mm): texture always, the CNN with ``--deep-factor 1``.
ROI_SIZE_PX = 256
ROI_SPACING_MM = 0.5
#: The CNN's default grid (demo build): the same 128 mm square block-averaged to 128 px at
#: 1.0 mm; see docs/model.md "Training cost on 2 CPUs" (Siamese steps ~4x cheaper).
DEFAULT_ROI_SIZE_PX = 128
DEFAULT_ROI_SPACING_MM = 1.0
FEATURES_PER_SIDE = 128
#: Percentiles used to scale an ROI to [0, 1] (robust version of the paper's min-max).
NORMALISE_PERCENTILES = (0.5, 99.5)
POSITIVE_CLASS = 1  # index of "osteoporosis" in the two logits


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1),
        nn.BatchNorm2d(c_out, eps=1e-3),
        nn.ReLU(inplace=True),
    )


class SiameseBranch(nn.Module):
    """One hip's feature extractor: (B, 1, H, W) ROI -> (B, 4 * width) pooled features.

    ``first_width``: channels of block 1 (default ``width``, the paper's). Block 1
    runs at half the input resolution, so it dominates the cost on a CPU; 16
    instead of 32 channels there roughly halves a training step.
    """

    def __init__(self, width: int = 32, first_width: int | None = None) -> None:
        super().__init__()
        first = first_width or width
        self.block1 = nn.Sequential(
            _conv_bn_relu(1, first, stride=2),
            _conv_bn_relu(first, first),
            _conv_bn_relu(first, first),
            nn.MaxPool2d(2),
        )
        self.block2 = nn.Sequential(
            _conv_bn_relu(first, 2 * width), _conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2)
        )
        self.block3 = _conv_bn_relu(2 * width, 4 * width)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv block's activations (B, 4 * width, H/8, W/8); Grad-CAM uses these."""
        return self.block3(self.block2(self.block1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))


@dataclass(frozen=True)
class SiameseConfig:
    """Hyper-parameters stored with the weights (safetensors metadata).

    ``width``: base channels (blocks 32 -> 64 -> 128 for 32, the paper's);
    ``first_width``: block 1's channels (None = ``width``, the paper's).
    """

    width: int = 32
    dropout: float = 0.3
    first_width: int | None = None

    def __post_init__(self) -> None:
        if self.width < 1 or (self.first_width is not None and self.first_width < 1):
            raise ValueError(f"SiameseConfig: widths must be >= 1: {self}")

    @property
    def features_per_side(self) -> int:
        return 4 * self.width


class SiameseNet(nn.Module):
    """Shared branch for both hips plus the end-to-end head (dropout, linear, 2 logits)."""

    def __init__(self, config: SiameseConfig | None = None) -> None:
        super().__init__()
        self.config = config or SiameseConfig()
        self.branch = SiameseBranch(self.config.width, self.config.first_width)
        self.head = nn.Sequential(
            nn.Dropout(p=self.config.dropout),
            nn.Linear(2 * self.config.features_per_side, 2),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Pooled deep features (B, 256): the left hip's 128, then the right hip's 128."""
        return torch.cat([self.branch(left), self.branch(right)], dim=1)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Two-class logits (B, 2); softmax gives P(osteoporosis) in column 1."""
        return self.head(self.features(left, right))


def normalise_roi(roi: np.ndarray) -> np.ndarray:
    """Scale an ROI to [0, 1] between its 0.5th and 99.5th percentiles (float32)."""
    lo, hi = np.percentile(roi, NORMALISE_PERCENTILES)
    if hi <= lo:
        return np.zeros(roi.shape, dtype=np.float32)
    return np.clip((roi - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def rois_to_tensor(rois: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Stack oriented ROIs (each H x W) into a normalised (B, 1, H, W) float tensor."""
    return torch.from_numpy(np.stack([normalise_roi(np.asarray(r)) for r in rois])[:, None])


@torch.no_grad()
def branch_features(
    branch: SiameseBranch, inputs: torch.Tensor, batch_size: int = 32
) -> np.ndarray:
    """Pooled features (B, 4 * width), float64, of inputs (B, 1, H, W), ``batch_size`` at a time.

    The branch must be in eval mode (batch norm then uses its running statistics,
    so a hip's features do not depend on the batch it is in).
    """
    return np.vstack(
        [
            branch(inputs[k : k + batch_size]).double().numpy()
            for k in range(0, len(inputs), batch_size)
        ]
    )


def deep_feature_names(config: SiameseConfig | None = None) -> list[str]:
    """Names of one side's pooled features: ``deep_000`` ... ``deep_127``."""
    n = (config or SiameseConfig()).features_per_side
    return [f"deep_{i:03d}" for i in range(n)]


@torch.no_grad()
def extract_deep_features(model: SiameseNet, left: torch.Tensor, right: torch.Tensor) -> np.ndarray:
    """Pooled features (B, 256) in eval mode, as float64 for the head."""
    model.eval()
    return model.features(left, right).double().numpy()


@torch.no_grad()
def predict_proba(model: SiameseNet, left: torch.Tensor, right: torch.Tensor) -> np.ndarray:
    """End-to-end P(osteoporosis) per pair (B,) from the Siamese head, eval mode."""
    model.eval()
    return torch.softmax(model(left, right), dim=1)[:, POSITIVE_CLASS].double().numpy()


def grad_cam(
    model: SiameseNet, left: torch.Tensor, right: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the osteoporosis logit for each hip, upsampled to the ROI size.

    Uses the last conv block of the shared branch: the map of side s is
    ReLU(sum_k w_k A_k) with w_k the spatial mean of d(logit_1 - logit_0)/dA_k.
    Returns two arrays (B, H, W), >= 0, in each ROI's own (oriented) grid; use
    :meth:`triage_node.score.geometry.RoiGeometry.paste` to put them on the
    source image. Unnormalised: 0 means no evidence for osteoporosis there.
    """
    model.eval()
    maps = []
    with torch.enable_grad():
        acts = [model.branch.feature_map(x).detach().requires_grad_(True) for x in (left, right)]
        pooled = torch.cat([a.mean(dim=(2, 3)) for a in acts], dim=1)
        logits = model.head(pooled)
        score = (logits[:, POSITIVE_CLASS] - logits[:, 1 - POSITIVE_CLASS]).sum()
        grads = torch.autograd.grad(score, acts)
    for act, grad, x in zip(acts, grads, (left, right), strict=True):
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * act).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps.append(cam[:, 0].detach().double().numpy())
    return maps[0], maps[1]


def siamese_to_safetensors(model: SiameseNet) -> bytes:
    """Serialise weights and config to safetensors bytes (no pickle)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {"width": model.config.width, "dropout": model.config.dropout}
    if model.config.first_width is not None:
        config["first_width"] = model.config.first_width
    return save(state, metadata={"siamese_config": json.dumps(config)})


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian header length, JSON)."""
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    return dict(header.get("__metadata__", {}))


def siamese_from_safetensors(data: bytes, name: str = "siamese.safetensors") -> SiameseNet:
    """Rebuild a :class:`SiameseNet` (eval mode) from :func:`siamese_to_safetensors` bytes.

    ``name`` is used in error messages. Raises ``ValueError`` on a missing
    config or mismatched tensors.
    """
    tensors = load(data)
    metadata = safetensors_metadata(data)
    if "siamese_config" not in metadata:
        raise ValueError(f"{name}: no siamese_config in the safetensors metadata")
    config = SiameseConfig(**json.loads(metadata["siamese_config"]))
    model = SiameseNet(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{name}: weights do not fit the Siamese network: {exc}") from None
    return model.eval()
