"""Acquisition-processing augmentation of the Siamese branch's training pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_siamese import _toy_pairs
from triage_node.score.siamese import SiameseConfig, normalise_roi, predict_proba
from triage_node.train.augment import PairAugmenter, ProcessingDraw, process
from triage_node.train.deep import DeepTrainingSettings, train_siamese
from triage_node.train.presets import training_options


def _hip_like(n: int, seed: int) -> torch.Tensor:
    """Normalised ROIs with a bright blob (a femoral head) on a smooth ramp, plus grain."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:64, :64]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(20, 44, 2)
        head = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 200.0)
        roi = 0.3 * cols / 64 + head + 0.05 * rng.normal(size=head.shape)
        out.append(normalise_roi(roi))
    return torch.from_numpy(np.stack(out)[:, None])


def test_processed_pairs_change_and_stay_in_range_untouched_pairs_do_not() -> None:
    x = _hip_like(8, seed=0)
    draw = ProcessingDraw.sample(8, 1.0, np.random.default_rng(1))
    apply = np.array([True, False] * 4)
    draw = ProcessingDraw(**{**draw.__dict__, "apply": apply})
    y = process(x, draw, spacing_mm=1.0, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    for i in range(8):
        diff = float((y[i] - x[i]).abs().mean())
        # renormalised as at scoring time, the processing still shows (not a gain/offset)
        assert (diff > 0.02) if apply[i] else (diff == 0.0)


def test_the_draws_are_reproducible_per_epoch_and_differ_between_epochs() -> None:
    x = _hip_like(6, seed=2)

    def run(epoch: int) -> torch.Tensor:
        augmenter = PairAugmenter(1.0, spacing_mm=1.0, seed=7)
        augmenter.start_epoch(epoch)
        return augmenter(x, x)[0]

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_both_hips_of_a_pair_get_the_same_chain() -> None:
    x = _hip_like(6, seed=3)
    draw = ProcessingDraw.sample(6, 1.0, np.random.default_rng(5))
    quiet = ProcessingDraw(**{**draw.__dict__, "noise_sd": np.zeros(6)})
    left = process(x, quiet, 1.0, torch.Generator().manual_seed(0))
    right = process(x, quiet, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(left, right)  # without noise, one image's hips look alike


def test_probability_zero_is_no_augmentation_and_bad_values_are_refused() -> None:
    x = _hip_like(4, seed=4)
    augmenter = PairAugmenter(0.0, spacing_mm=1.0, seed=0)
    left, right = augmenter(x, x)
    assert left is x and right is x
    with pytest.raises(ValueError, match="augment"):
        DeepTrainingSettings(augment=1.5)
    with pytest.raises(ValueError, match="augment"):
        training_options("cpu", {"augment": -0.1})


def test_training_with_augmentation_still_learns_and_records_it() -> None:
    left, right, labels = _toy_pairs(48, seed=0)
    settings = DeepTrainingSettings(
        epochs=8, batch_size=8, learning_rate=3e-3, seed=0, threads=1, augment=0.5
    )
    model = train_siamese(left, right, labels, SiameseConfig(width=8, dropout=0.1), settings)
    plain = train_siamese(
        left,
        right,
        labels,
        SiameseConfig(width=8, dropout=0.1),
        DeepTrainingSettings(epochs=8, batch_size=8, learning_rate=3e-3, seed=0, threads=1),
    )
    assert model.training_history["augment"] == 0.5
    test_left, test_right, test_labels = _toy_pairs(30, seed=1)
    predicted = predict_proba(model, test_left, test_right) >= 0.5
    assert (predicted == test_labels).mean() >= 0.9
    weights = model.state_dict()
    assert any(not torch.equal(weights[k], v) for k, v in plain.state_dict().items())


def test_the_cpu_preset_augments_and_the_paper_preset_does_not() -> None:
    assert training_options("cpu").augment == 0.5
    assert training_options("paper").augment == 0.0
    assert training_options("cpu", {"augment": 0.0}).augment == 0.0
