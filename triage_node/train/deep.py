"""Training the Siamese branch end to end on paired hip ROIs and labels (CPU).

As in the paper's code: the minority class is randomly oversampled to match
the majority, cross-entropy on the two logits, Adam. Data are small enough to
hold in memory as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from triage_node.score.siamese import SiameseConfig, SiameseNet


@dataclass(frozen=True)
class DeepTrainingSettings:
    """Optimiser settings. ``learning_rate`` per step; ``weight_decay`` L2 on all weights."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError(
                f"DeepTrainingSettings: epochs, batch_size, threads must be >= 1: {self}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"DeepTrainingSettings.learning_rate: {self.learning_rate} <= 0")


def oversample_minority(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices that repeat randomly drawn minority-class rows until both classes are equal.

    ``labels`` are 0/1. Returns a shuffled index array into ``labels``.
    """
    labels = np.asarray(labels).astype(int)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("labels: both classes are needed for training")
    minority, majority = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    extra = rng.choice(minority, size=len(majority) - len(minority), replace=True)
    index = np.concatenate([majority, minority, extra])
    rng.shuffle(index)
    return index


def train_siamese(
    left: torch.Tensor,
    right: torch.Tensor,
    labels: np.ndarray,
    config: SiameseConfig | None = None,
    settings: DeepTrainingSettings | None = None,
    progress: bool = False,
) -> SiameseNet:
    """Train a :class:`SiameseNet` from scratch on oriented, normalised ROIs.

    ``left``/``right``: (N, 1, H, W) tensors from
    :func:`triage_node.score.siamese.rois_to_tensor`; ``labels``: (N,) 0/1.
    Returns the model in eval mode. Deterministic for a given ``settings.seed``.
    ``progress`` shows a tqdm bar over epochs with the mean training loss.
    """
    from tqdm import tqdm

    settings = settings or DeepTrainingSettings()
    labels = np.asarray(labels).astype(np.int64)
    if not (len(left) == len(right) == len(labels)):
        raise ValueError(
            f"left/right/labels lengths differ: {len(left)}, {len(right)}, {len(labels)}"
        )
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model = SiameseNet(config)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    target = torch.from_numpy(labels)
    bar = tqdm(range(settings.epochs), desc="siamese", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        order = oversample_minority(labels, rng)
        total, seen = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = torch.from_numpy(order[start : start + settings.batch_size])
            if len(batch) < 2:  # BatchNorm needs more than one sample
                continue
            optimiser.zero_grad()
            loss = loss_fn(model(left[batch], right[batch]), target[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
    return model.eval()
