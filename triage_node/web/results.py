"""The study page's result objects read from the spool: the heatmap as a picture, the SR in words.

Only what the node made is read, and only its content: the SR's content tree
(concept names and values) and the heatmap's pixels. Neither reads the copied
patient module of those files, so no patient name, ID or birth date reaches a page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

#: Long side of the picture a page gets (the heatmap itself is at most 1280 px).
MAX_SIDE = 1280


def heatmap_jpeg(path: Path, quality: int = 90) -> bytes:
    """The heatmap secondary capture's pixels as a JPEG (RGB, as the SC shows them)."""
    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array)  # pydicom converts YBR_FULL_422 to RGB
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@dataclass
class ContentItem:
    """One SR content item: its concept name, its value in words, its children."""

    name: str
    value: str
    kind: str
    children: list[ContentItem] = field(default_factory=list)


def _meaning(seq: object) -> str:
    if not seq:
        return ""
    first = seq[0]  # type: ignore[index]
    return str(getattr(first, "CodeMeaning", "") or "")


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        return _meaning(item.get("ConceptCodeSequence"))
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return "(no value)"
        number = measured[0].get("NumericValue", "")
        unit = _meaning(measured[0].get("MeasurementUnitsCodeSequence"))
        return f"{number} {unit}".strip() if unit not in ("no units", "") else str(number)
    if kind in ("DATETIME", "DATE", "TIME"):
        return str(item.get(kind.title().replace("time", "Time"), "") or "")
    if kind == "UIDREF":
        return str(item.get("UID", ""))
    if kind == "IMAGE":
        return "reference to an image"
    if kind in ("SCOORD", "SCOORD3D"):
        return "region outline"
    if kind == "COMPOSITE":
        return "reference to an object"
    return ""


def _items(seq: object) -> list[ContentItem]:
    out = []
    for item in seq or []:  # type: ignore[attr-defined]
        kind = str(item.get("ValueType", ""))
        out.append(
            ContentItem(
                name=_meaning(item.get("ConceptNameCodeSequence")),
                value=_value(item),
                kind=kind,
                children=_items(item.get("ContentSequence")),
            )
        )
    return out


def sr_content(path: Path) -> ContentItem:
    """The SR's content tree (its document title and every item below it), in words."""
    ds = pydicom.dcmread(path)
    return ContentItem(
        name=_meaning(ds.get("ConceptNameCodeSequence")),
        value="",
        kind="CONTAINER",
        children=_items(ds.get("ContentSequence")),
    )
