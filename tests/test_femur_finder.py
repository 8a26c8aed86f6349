"""The femur finder: trained briefly on synthetic hips, it finds femurs and refuses other views."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from triage_node.score.decode import decode_radiograph
from triage_node.score.femur_finder import NOT_IN_IMAGE, FemurFinder, FinderConfig
from triage_node.score.roi import NOT_FOUND
from triage_node.train.finder import FinderTrainingSettings, finder_sample, train_femur_finder

CONFIG = FinderConfig()
SIDE_KEY = {"right": "R", "left": "L"}


def _render(task: tuple[int, str, str | None]) -> tuple[np.ndarray, tuple[float, float], dict, str]:
    from triage_node.synth import render_instance

    seed, kind, laterality = task
    image = render_instance(
        seed, size="small", kind=kind, laterality=laterality, transfer_syntax="1.2.840.10008.1.2.1"
    )
    decoded = decode_radiograph(image.dataset)
    return decoded.pixels, decoded.spacing_mm, image.masks, str(image.dataset.ImageLaterality)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def rendered() -> dict[str, list]:
    tasks = {
        "train": [(1000 + i, "hip", None) for i in range(36)]
        + [(2000 + i, ("chest", "blank")[i % 2], None) for i in range(6)],
        "test": [(3000 + i, "hip", None) for i in range(8)] + [(3100, "hip", "L")],
        "other": [(4000, "chest", None), (4001, "chest", None), (4002, "blank", None)],
    }
    with ProcessPoolExecutor(2) as pool:
        return {name: list(pool.map(_render, items)) for name, items in tasks.items()}


@pytest.fixture(scope="module")
def finder(rendered: dict[str, list]) -> FemurFinder:
    samples = [finder_sample(p, s, list(m.values()), CONFIG) for p, s, m, _ in rendered["train"]]
    trained = train_femur_finder(samples, CONFIG, FinderTrainingSettings(epochs=20, threads=1))
    # Round trip through the bundle format before use.
    return FemurFinder.from_safetensors(trained.to_safetensors())


def test_found_masks_overlap_the_true_masks(finder: FemurFinder, rendered: dict) -> None:
    dices = []
    for pixels, spacing, masks, laterality in rendered["test"]:
        found = finder.find(pixels, spacing, laterality)
        for side, key in SIDE_KEY.items():
            if key not in masks:
                assert found.masks[side] is None and found.reasons[side] == NOT_IN_IMAGE
                continue
            mask = found.masks[side]
            dices.append(0.0 if mask is None else _dice(mask, masks[key]))
            if mask is not None:
                assert mask.shape == pixels.shape and found.reasons[side] is None
    assert len(dices) == 17
    assert float(np.mean(dices)) > 0.7, np.round(dices, 2)
    assert float(np.median(dices)) > 0.75, np.round(dices, 2)


def test_other_views_are_not_found(finder: FemurFinder, rendered: dict) -> None:
    for pixels, spacing, _, laterality in rendered["other"]:
        found = finder.find(pixels, spacing, laterality)
        assert found.masks == {"right": None, "left": None}
        assert set(found.reasons.values()) == {NOT_FOUND}


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="min_confidence"):
        FinderConfig(min_confidence=1.5)
    with pytest.raises(ValueError, match="finder_config"):
        import torch
        from safetensors.torch import save

        FemurFinder.from_safetensors(save({"x": torch.zeros(1)}))
