"""C-STORE status codes the receiver answers with, by name (PS3.4 Annex B.2.3)."""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
# Refused: out of resources -- disk below the watermark, store unavailable, write failed.
OUT_OF_RESOURCES = 0xA700
# Error: data set does not match SOP class (of the presentation context).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
# Error: cannot understand. The low bits are ours and tell the cases apart in peers' logs.
CANNOT_UNDERSTAND = 0xC000
MISSING_ATTRIBUTE = 0xC210
INCONSISTENT_PIXEL_DATA = 0xC220
INSTANCE_TOO_LARGE = 0xC230
INTERNAL_ERROR = 0xC2FF


def status_dataset(status: int, comment: str | None = None) -> Dataset:
    """A C-STORE response status with an Error Comment (LO, at most 64 characters)."""
    ds = Dataset()
    ds.Status = status
    if comment:
        ds.ErrorComment = comment.encode("ascii", "replace").decode("ascii")[:64]
    return ds
