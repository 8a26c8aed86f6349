"""Training the femur finder (tiny U-Net) on radiographs and their per-side femur masks (CPU).

Inputs are decoded images with the union of both femur masks; the network
learns "femur vs not" at :attr:`FinderConfig.spacing_mm`. Loss: binary
cross-entropy plus soft Dice (the femur is a small part of the image, so
plain cross-entropy alone drifts towards "nothing"). Augmentation: left-right
flips (a mirrored hip is still a hip), brightness/contrast/gamma jitter and
small shifts, so vendor processing differences do not matter.

Images without any femur (mask all zero) are welcome: they teach the network
to answer "not found".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from triage_node.score.femur_finder import (
    FemurFinder,
    FinderConfig,
    TinyUNet,
    network_input,
    network_target,
)


@dataclass(frozen=True)
class FinderTrainingSettings:
    """Optimiser settings: ``epochs`` over all images, ``batch_size`` images a step.

    ``negative_rate``: share of samples turned into negatives (rotated by 90, 180
    or 270 degrees with an empty target).
    """

    epochs: int = 40
    batch_size: int = 4
    learning_rate: float = 1e-2
    negative_rate: float = 0.2
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError(f"FinderTrainingSettings: values must be >= 1: {self}")


@dataclass(frozen=True)
class FinderSample:
    """One training image at the finder's spacing: network input and femur target (same shape)."""

    image: np.ndarray
    target: np.ndarray


def finder_sample(
    pixels: np.ndarray,
    spacing_mm: tuple[float, float],
    masks: Sequence[np.ndarray],
    config: FinderConfig,
) -> FinderSample:
    """Prepare one decoded image and its femur masks (any number, source grid) for training."""
    union = np.zeros(pixels.shape, dtype=bool)
    for mask in masks:
        if mask.shape != pixels.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {pixels.shape}")
        union |= np.asarray(mask) != 0
    return FinderSample(
        network_input(pixels, spacing_mm, config), network_target(union, spacing_mm, config)
    )


def _augment(
    image: np.ndarray, target: np.ndarray, rng: np.random.Generator, negative_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < negative_rate:
        # Upside-down or sideways: the same bones, but not a hip on an AP view. Teaches the
        # network that "bright and bone-like" is not enough, so other views are not found.
        image = np.rot90(image, k=int(rng.integers(1, 4)))
        target = np.zeros_like(image)
    if rng.random() < 0.5:
        image, target = image[:, ::-1], target[:, ::-1]
    gamma = float(np.exp(rng.normal(0.0, 0.25)))
    contrast = float(rng.uniform(0.8, 1.2))
    offset = float(rng.normal(0.0, 0.05))
    image = np.clip(contrast * np.power(image, gamma) + offset, 0.0, 1.0)
    shift = rng.integers(-8, 9, size=2)
    image = np.roll(image, tuple(int(s) for s in shift), axis=(0, 1))
    target = np.roll(target, tuple(int(s) for s in shift), axis=(0, 1))
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(target, np.float32)


def _batch(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], multiple: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = max(p[0].shape[0] for p in pairs)
    cols = max(p[0].shape[1] for p in pairs)
    rows += -rows % multiple
    cols += -cols % multiple
    images = np.zeros((len(pairs), 1, rows, cols), np.float32)
    targets = np.zeros_like(images)
    for i, (image, target) in enumerate(pairs):
        images[i, 0, : image.shape[0], : image.shape[1]] = image
        targets[i, 0, : target.shape[0], : target.shape[1]] = target
    return torch.from_numpy(images), torch.from_numpy(targets)


def finder_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus (1 - soft Dice) over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + (1.0 - dice)


def train_femur_finder(
    samples: Sequence[FinderSample],
    config: FinderConfig | None = None,
    settings: FinderTrainingSettings | None = None,
    progress: bool = False,
) -> FemurFinder:
    """Train a :class:`FemurFinder` from scratch on :func:`finder_sample` outputs.

    Deterministic for a given ``settings.seed`` (and thread count). With
    ``progress`` a tqdm bar shows epochs and the running loss.
    """
    config = config or FinderConfig()
    settings = settings or FinderTrainingSettings()
    if not samples:
        raise ValueError("samples: no images to train the femur finder on")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    net = TinyUNet(config.channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    steps_per_epoch = -(-len(samples) // settings.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=settings.learning_rate,
        total_steps=settings.epochs * steps_per_epoch,
        pct_start=0.2,
    )
    bar = tqdm(range(settings.epochs), desc="femur finder", unit="epoch", disable=not progress)
    for _ in bar:
        net.train()
        order = rng.permutation(len(samples))
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            chosen = [samples[int(i)] for i in order[start : start + settings.batch_size]]
            images, targets = _batch(
                [_augment(s.image, s.target, rng, settings.negative_rate) for s in chosen],
                config.multiple,
            )
            optimiser.zero_grad()
            loss = finder_loss(net(images), targets)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += float(loss.detach()) * len(chosen)
        bar.set_postfix(loss=f"{total / len(samples):.3f}")
    return FemurFinder(net.eval(), config)
