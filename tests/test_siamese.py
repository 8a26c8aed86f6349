"""Siamese branch: shapes, Grad-CAM, safetensors round trip, learns a toy texture task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triage_node.score.geometry import RoiGeometry
from triage_node.score.siamese import (
    SiameseConfig,
    SiameseNet,
    deep_feature_names,
    extract_deep_features,
    grad_cam,
    predict_proba,
    rois_to_tensor,
    siamese_from_safetensors,
    siamese_to_safetensors,
)
from triage_node.train.deep import DeepTrainingSettings, oversample_minority, train_siamese

SIZE = 32


def _stripes(period: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    phase = rng.uniform(0, 2 * np.pi)
    angle = rng.uniform(-0.3, 0.3)
    wave = np.sin(2 * np.pi * (cols + angle * rows) / period + phase)
    return wave + 0.3 * rng.normal(size=wave.shape)


def _toy_pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Label 1 = thin stripes (period 3) on both hips, 0 = thick stripes (period 10)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3 == 0).astype(int)  # imbalanced: a third positive
    left = [_stripes(3 if y else 10, rng) for y in labels]
    right = [_stripes(3 if y else 10, rng) for y in labels]
    return rois_to_tensor(left), rois_to_tensor(right), labels


def test_forward_and_feature_shapes() -> None:
    torch.manual_seed(0)
    model = SiameseNet().eval()
    x = torch.rand(3, 1, 64, 64)
    assert model.branch(x).shape == (3, 128)
    assert model.branch.feature_map(x).shape == (3, 128, 8, 8)
    assert model(x, x).shape == (3, 2)
    feats = extract_deep_features(model, x, x.flip(-1))
    assert feats.shape == (3, 256)
    # Shared weights: swapping the hips swaps the two halves of the feature vector.
    swapped = extract_deep_features(model, x.flip(-1), x)
    np.testing.assert_allclose(swapped[:, :128], feats[:, 128:], rtol=1e-5, atol=1e-6)
    assert len(deep_feature_names()) == 128
    p = predict_proba(model, x, x)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))


def test_grad_cam_shape_sign_and_mapping() -> None:
    torch.manual_seed(0)
    model = SiameseNet().eval()
    left, right = torch.rand(2, 1, 48, 48), torch.rand(2, 1, 48, 48)
    cam_left, cam_right = grad_cam(model, left, right)
    assert cam_left.shape == cam_right.shape == (2, 48, 48)
    assert (cam_left >= 0).all() and (cam_right >= 0).all()
    assert cam_left.max() > 0 or cam_right.max() > 0
    # Map onto a 200 x 300 source image: ROI of 48 px at 2 source px per ROI px, mirrored.
    geometry = RoiGeometry(
        origin_row=20, origin_col=150, step_rows=2, step_cols=2, size=48, mirrored=True
    )
    pasted = geometry.paste(cam_right[0], (200, 300))
    assert pasted.shape == (200, 300)
    assert pasted[:20].max() == 0 and pasted[:, :150].max() == 0
    # Mirrored: ROI column 0 lands at the far (right) edge of the box.
    assert pasted[20 + 2 * 10, 150 + 2 * 47] == pytest.approx(cam_right[0][10, 0])


def test_roi_geometry_cut_and_paste_round_trip() -> None:
    rng = np.random.default_rng(1)
    source = rng.normal(size=(120, 160))
    geometry = RoiGeometry(
        origin_row=10, origin_col=30, step_rows=1, step_cols=1, size=40, mirrored=True
    )
    roi = geometry.cut(source, order=0)
    np.testing.assert_array_equal(roi, source[10:50, 30:70][:, ::-1])
    back = geometry.paste(roi, source.shape)
    np.testing.assert_allclose(back[10:50, 30:70], source[10:50, 30:70])
    polygon = geometry.polygon()
    assert polygon[0] == (69.0, 10.0) and polygon[-1] == polygon[0]


def test_weights_round_trip_bit_identical() -> None:
    torch.manual_seed(0)
    model = SiameseNet(SiameseConfig(width=8, dropout=0.25))
    model.train()
    model(torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32))  # move BN running stats
    data = siamese_to_safetensors(model)
    restored = siamese_from_safetensors(data)
    assert restored.config == SiameseConfig(width=8, dropout=0.25)
    original_state, restored_state = model.state_dict(), restored.state_dict()
    assert original_state.keys() == restored_state.keys()
    for key, value in original_state.items():
        assert torch.equal(value, restored_state[key]), key
    x = torch.rand(2, 1, 32, 32)
    assert np.array_equal(predict_proba(model, x, x), predict_proba(restored, x, x))
    assert siamese_to_safetensors(restored) == data


def test_wrong_weights_refused() -> None:
    data = siamese_to_safetensors(SiameseNet(SiameseConfig(width=8)))
    from safetensors.torch import load, save

    tensors = load(data)
    tensors.pop("head.1.bias")
    with pytest.raises(ValueError, match="siamese_config"):
        siamese_from_safetensors(save(tensors))
    with pytest.raises(ValueError, match="x.safetensors: weights do not fit"):
        siamese_from_safetensors(
            save(tensors, metadata={"siamese_config": '{"width": 8}'}), name="x.safetensors"
        )


def test_oversampling_balances_classes() -> None:
    labels = np.array([0] * 9 + [1] * 3)
    index = oversample_minority(labels, np.random.default_rng(0))
    assert np.bincount(labels[index]).tolist() == [9, 9]
    assert set(index[labels[index] == 1]) == {9, 10, 11}


def test_tiny_training_run_learns_stripe_width() -> None:
    left, right, labels = _toy_pairs(48, seed=0)
    model = train_siamese(
        left,
        right,
        labels,
        SiameseConfig(width=8, dropout=0.1),
        DeepTrainingSettings(epochs=8, batch_size=8, learning_rate=3e-3, seed=0, threads=1),
    )
    test_left, test_right, test_labels = _toy_pairs(30, seed=1)
    predicted = predict_proba(model, test_left, test_right) >= 0.5
    assert (predicted == test_labels).mean() >= 0.9


def test_narrow_first_block_round_trips() -> None:
    config = SiameseConfig(width=8, first_width=4)
    model = SiameseNet(config).eval()
    assert model.branch.block1[0][0].out_channels == 4
    assert model.branch.block2[0][0].in_channels == 4
    assert model.branch(torch.zeros(2, 1, SIZE, SIZE)).shape == (2, config.features_per_side)
    loaded = siamese_from_safetensors(siamese_to_safetensors(model))
    assert loaded.config == config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    with pytest.raises(ValueError):
        SiameseConfig(width=8, first_width=0)


def test_early_stopping_keeps_the_best_epoch() -> None:
    left, right, labels = _toy_pairs(60, seed=0)
    val_left, val_right, val_labels = _toy_pairs(30, seed=1)
    model = train_siamese(
        left,
        right,
        labels,
        SiameseConfig(width=8, dropout=0.1),
        DeepTrainingSettings(
            epochs=12,
            batch_size=8,
            learning_rate=3e-3,
            seed=0,
            threads=1,
            patience=2,
            min_epochs=3,
        ),  # fmt: skip
        validation=(val_left, val_right, val_labels),
    )
    history = model.training_history
    aucs = history["validation_auc"]
    assert len(aucs) == history["epochs_run"] <= 12
    assert history["best_epoch"] == 1 + int(np.argmax(aucs))
    stopped_early = history["epochs_run"] < 12
    assert not stopped_early or history["epochs_run"] - history["best_epoch"] >= 2
    p = predict_proba(model, val_left, val_right)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(val_labels, p) == pytest.approx(max(aucs), abs=1e-6)
