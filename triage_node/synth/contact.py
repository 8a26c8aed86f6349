"""Contact sheet of 16 synthetic images (both classes, several vendors), for looking at them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from triage_node.display import display_pixels
from triage_node.synth.instance import render_instance
from triage_node.synth.vendors import VENDORS

THUMB_WIDTH = 480


def display_8bit(ds: Dataset) -> np.ndarray:
    """8-bit display image, as a viewer shows it (:func:`triage_node.display.display_pixels`)."""
    shown = display_pixels(ds, dtype=np.float32, fallback_percentiles=(0.5, 99.5))
    return (shown * 255).astype(np.uint8)


def write_contact_sheet(
    path: str | Path, seed: int = 0, size: str = "small", vendors: Sequence[str] | None = None
) -> Path:
    """Render 16 hips (alternating osteoporotic / not, cycling vendors) into one PNG.

    With ``size="full"`` a native-resolution crop of the first image's right
    femur is written beside it as ``<stem>_femur.png``.
    """
    names = sorted(vendors or VENDORS)
    tiles = []
    font = ImageFont.load_default(size=18)
    for i in range(16):
        img = render_instance(
            seed * 1000 + i, size=size, vendor=names[i % len(names)], osteoporotic=(i % 2 == 0)
        )
        disp = display_8bit(img.dataset)
        if i == 0 and size == "full" and "R" in img.masks:
            rows, cols = np.nonzero(img.masks["R"])
            crop = disp[
                max(rows.min() - 60, 0) : rows.max() + 60, max(cols.min() - 60, 0) : cols.max() + 60
            ]
            out = Path(path)
            Image.fromarray(crop).save(out.with_name(out.stem + "_femur.png"))
        thumb = Image.fromarray(disp)
        thumb = thumb.resize(
            (THUMB_WIDTH, int(THUMB_WIDTH * thumb.height / thumb.width)), Image.Resampling.LANCZOS
        ).crop((0, 0, THUMB_WIDTH, 390))
        r = img.row
        text = (
            f"{r['vendor']} {r['photometric'][-1]}  T={r['t_score']:.1f} "
            f"{'OP' if r['label'] else 'normal'}  dL={r['density_left']:.1f} "
            f"dR={r['density_right']:.1f}"
        )
        draw = ImageDraw.Draw(thumb)
        draw.rectangle((0, 366, THUMB_WIDTH, 390), fill=0)
        draw.text((4, 368), text, fill=255, font=font)
        tiles.append(np.asarray(thumb))
    sheet = np.concatenate([np.concatenate(tiles[r * 4 : r * 4 + 4], axis=1) for r in range(4)])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out)
    return out
