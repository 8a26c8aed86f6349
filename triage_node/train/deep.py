"""Training the Siamese branch end to end on paired hip ROIs and labels (CPU).

As in the paper's code: the minority class is randomly oversampled to match
the majority, cross-entropy on the two logits, Adam. Data are small enough to
hold in memory as tensors.

Early stopping (``patience``, needs validation data): after every epoch the
end-to-end Siamese head's AUC on the validation pairs is measured; training
stops once it has not improved for ``patience`` epochs (never before
``min_epochs``) and the weights of the best epoch are kept. ``patience=None``
runs all ``epochs`` and keeps the last weights (the paper's schedule).

``augment``: the probability that a training pair is passed through a randomly
drawn acquisition-processing chain in an epoch (:mod:`triage_node.train.augment`);
validation pairs never are.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm import tqdm

from triage_node.score.siamese import POSITIVE_CLASS, SiameseConfig, SiameseNet
from triage_node.train.augment import PairAugmenter


@dataclass(frozen=True)
class DeepTrainingSettings:
    """Optimiser settings. ``learning_rate`` per step; ``weight_decay`` L2 on all weights."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    patience: int | None = None
    min_epochs: int = 5
    augment: float = 0.0  # probability a pair is processed (train/augment.py); 0: off
    input_spacing_mm: float = 1.0  # the CNN input's pixel size (augmentation blur widths)

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"DeepTrainingSettings.patience: {self.patience} < 1")
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError(
                f"DeepTrainingSettings: epochs, batch_size, threads must be >= 1: {self}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"DeepTrainingSettings.learning_rate: {self.learning_rate} <= 0")
        if not 0.0 <= self.augment <= 1.0:
            raise ValueError(f"DeepTrainingSettings.augment: {self.augment} not in [0, 1]")


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


def _validation_auc(
    model: SiameseNet, validation: tuple[torch.Tensor, torch.Tensor, np.ndarray]
) -> float:
    left, right, labels = validation
    model.eval()
    with torch.no_grad():
        p = torch.cat(
            [
                torch.softmax(model(left[k : k + 64], right[k : k + 64]), dim=1)[:, POSITIVE_CLASS]
                for k in range(0, len(labels), 64)
            ]
        ).numpy()
    if len(set(np.asarray(labels).tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(labels, p))


def train_siamese(
    left: torch.Tensor,
    right: torch.Tensor,
    labels: np.ndarray,
    config: SiameseConfig | None = None,
    settings: DeepTrainingSettings | None = None,
    progress: bool = False,
    validation: tuple[torch.Tensor, torch.Tensor, np.ndarray] | None = None,
) -> SiameseNet:
    """Train a :class:`SiameseNet` from scratch on oriented, normalised ROIs.

    ``left``/``right``: (N, 1, H, W) tensors from
    :func:`triage_node.score.siamese.rois_to_tensor`; ``labels``: (N,) 0/1.
    ``validation``: (left, right, labels) pairs for the per-epoch AUC and early
    stopping (see module doc). Returns the model in eval mode with
    ``model.training_history`` (epochs run, best epoch, validation AUC per
    epoch). Deterministic for a given ``settings.seed``. ``progress`` shows a
    tqdm bar over epochs with the mean training loss (and validation AUC).
    """
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
    augmenter = PairAugmenter(settings.augment, settings.input_spacing_mm, settings.seed)
    bar = tqdm(range(settings.epochs), desc="siamese", unit="epoch", disable=not progress)
    aucs: list[float] = []
    best_auc, best_epoch, best_state = -1.0, 0, None
    epochs_run = 0
    for epoch in bar:
        model.train()
        order = oversample_minority(labels, rng)
        augmenter.start_epoch(epoch)
        total, seen = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = torch.from_numpy(order[start : start + settings.batch_size])
            if len(batch) < 2:  # BatchNorm needs more than one sample
                continue
            optimiser.zero_grad()
            pair_left, pair_right = augmenter(left[batch], right[batch])
            loss = loss_fn(model(pair_left, pair_right), target[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
        epochs_run = epoch + 1
        if validation is None:
            bar.set_postfix(loss=f"{total / max(seen, 1):.3f}")
            continue
        auc = _validation_auc(model, validation)
        aucs.append(auc)
        bar.set_postfix(loss=f"{total / max(seen, 1):.3f}", val_auc=f"{auc:.3f}")
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        if (
            settings.patience is not None
            and epoch + 1 >= settings.min_epochs
            and epoch + 1 - best_epoch >= settings.patience
        ):
            break
    bar.close()
    if settings.patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    model.training_history = {  # type: ignore[assignment]
        "epochs_run": epochs_run,
        "max_epochs": settings.epochs,
        "patience": settings.patience,
        "augment": settings.augment,
        "best_epoch": best_epoch if settings.patience is not None else epochs_run,
        "validation_auc": [round(a, 4) for a in aucs],
    }
    return model.eval()
