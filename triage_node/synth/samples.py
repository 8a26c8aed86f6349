"""Regenerate the committed sample set (``samples/``): a handful of small, varied instances."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import RLELossless

from triage_node.synth.cohort import LABEL_COLUMNS
from triage_node.synth.contact import display_8bit
from triage_node.synth.instance import render_instance

SAMPLES: list[tuple[str, dict[str, object]]] = [
    ("osteoporotic_jpegls", {"vendor": "orion", "osteoporotic": True}),
    ("normal_mono1", {"vendor": "nordlys", "osteoporotic": False}),
    ("osteoporotic_cr_rle_mono1", {"vendor": "tamarind", "osteoporotic": True}),
    ("normal_jpeg_lossless", {"vendor": "kestrel", "osteoporotic": False}),
    ("prosthesis_right_jpeg2000", {"vendor": "halvard", "prosthesis": (True, False)}),
    ("unilateral_left_implicit", {"vendor": "vireo", "laterality": "L"}),
    ("bilateral_prosthesis", {"vendor": "orion", "prosthesis": (True, True)}),
    ("chest_not_hip", {"vendor": "orion", "kind": "chest"}),
    ("blank", {"vendor": "nordlys", "kind": "blank", "transfer_syntax": RLELossless}),
]
SAMPLE_SEED = 20240601


def write_samples(out_dir: str | Path) -> list[Path]:
    """Write the sample instances, their masks, ``labels.csv`` and ``preview.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, written = [], []
    for i, (name, options) in enumerate(SAMPLES):
        image = render_instance(SAMPLE_SEED + i, size="small", **options)  # type: ignore[arg-type]
        stem = f"{i + 1:02d}_{name}"
        path = out / f"{stem}.dcm"
        image.dataset.save_as(path, enforce_file_format=True)
        written.append(path)
        for side, mask in image.masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{stem}_femur_{side}.png")
        rows.append({"file": path.name, **image.row})
        if i == 0:
            Image.fromarray(display_8bit(image.dataset)).save(out / "preview.png", optimize=True)
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return written
