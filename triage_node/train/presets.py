"""Named training configurations (``triage-node train --preset``) and the options built from them.

``cpu`` (the default, what the demo build uses): texture on the 256 px / 0.5 mm
ROI, the CNN on it block-averaged to 128 px / 1.0 mm, Siamese block 1 with 16
channels, early stopping on validation AUC (patience 5), acquisition-processing
augmentation of half the training pairs per epoch. ``paper``: the paper's
Siamese (32-64-128 channels, 30 epochs, no early stopping, no augmentation),
both branches on the 256 px / 0.5 mm ROI. See docs/model.md "Training presets".
Used by ``triage-node train`` and the demo bundle build alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from triage_node.score.roi import RoiSettings
from triage_node.score.siamese import SiameseConfig
from triage_node.train.pipeline import TrainingOptions


@dataclass(frozen=True)
class Preset:
    """The settings a preset fixes; each has a ``train`` flag of the same name."""

    epochs: int  # Siamese epochs (the maximum with early stopping)
    roi_spacing: float  # ROI pixel size, mm
    roi_size: int  # ROI edge, pixels
    deep_factor: int  # the CNN sees the ROI block-averaged by this factor
    siamese_width: int  # Siamese base width (32: 32-64-128)
    siamese_first_width: int  # channels of Siamese block 1
    patience: int  # epochs without validation-AUC gain before stopping; 0: no early stop
    augment: float  # probability a training pair gets processing augmentation; 0: none


PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        epochs=30,
        roi_spacing=0.5,
        roi_size=256,
        deep_factor=2,
        siamese_width=32,
        siamese_first_width=16,
        patience=5,
        augment=0.5,
    ),
    "paper": Preset(
        epochs=30,
        roi_spacing=0.5,
        roi_size=256,
        deep_factor=1,
        siamese_width=32,
        siamese_first_width=32,
        patience=0,
        augment=0.0,
    ),
}

#: The names of the settings a preset fixes (and of their override flags).
PRESET_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Preset))


def training_options(
    preset: str = "cpu",
    overrides: dict[str, float | int | None] | None = None,
    **options: Any,
) -> TrainingOptions:
    """:class:`TrainingOptions` from ``preset``, its ``overrides`` (None: keep) and ``options``.

    ``overrides`` are :data:`PRESET_FIELDS` values; ``options`` are any other
    :class:`TrainingOptions` fields. ``KeyError`` for an unknown preset,
    ``ValueError`` (naming the setting) for a value the options refuse.
    """
    given: dict[str, Any] = {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = replace(PRESETS[preset], **given)
    return TrainingOptions(
        epochs=int(chosen.epochs),
        roi=RoiSettings(float(chosen.roi_spacing), int(chosen.roi_size), int(chosen.deep_factor)),
        siamese=SiameseConfig(
            width=int(chosen.siamese_width), first_width=int(chosen.siamese_first_width)
        ),
        patience=int(chosen.patience) or None,
        augment=float(chosen.augment),
        **options,
    )
