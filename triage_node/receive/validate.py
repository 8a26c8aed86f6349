"""Checks on a received dataset before it is accepted: decodable, complete, consistent.

A dataset that fails raises :class:`InstanceRefused` with the status to send and a
reason that names UIDs and tags only (never patient data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from triage_node.receive import status

# Larger than any radiograph detector; beyond this Rows/Columns are treated as corrupt.
MAX_DIMENSION = 16384
_DEFER_BYTES = 1 << 20
_PIXEL_DATA = 0x7FE00010
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class InstanceRefused(Exception):
    """The received instance is not accepted; ``status`` is the C-STORE status to send."""

    def __init__(self, status_code: int, reason: str, sop_instance_uid: str | None = None,
                 study_instance_uid: str | None = None) -> None:
        super().__init__(reason)
        self.status = status_code
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid
        self.study_instance_uid = study_instance_uid


@dataclass(frozen=True)
class InstanceHeader:
    """What the store and the eligibility rules need from a received instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part: str | None
    view_position: str | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    photometric_interpretation: str | None
    has_pixel_data: bool


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()


def _valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and UID(value).is_valid


def read_instance(path: Path, context_sop_class: str, transfer_syntax: str,
                  affected_sop_instance: str | None = None) -> tuple[Dataset, InstanceHeader]:
    """Decode the Part-10 file at ``path`` and check it; return the dataset and its header.

    ``context_sop_class`` is the abstract syntax of the presentation context the
    instance arrived on: a dataset of another SOP class is refused with 0xA900.
    """
    try:
        return _read_and_check(path, context_sop_class, transfer_syntax, affected_sop_instance)
    except InstanceRefused:
        raise
    except Exception as exc:  # any decoding error of a peer's bytes is the peer's problem
        raise InstanceRefused(
            status.CANNOT_UNDERSTAND,
            f"dataset cannot be decoded ({type(exc).__name__})",
            affected_sop_instance,
        ) from exc


def _read_and_check(path: Path, context_sop_class: str, transfer_syntax: str,
                    affected_sop_instance: str | None) -> tuple[Dataset, InstanceHeader]:
    # Values are converted lazily and only those we use are touched: pydicom's
    # validation warnings quote values, and other elements may hold patient data.
    # Large values (native Pixel Data) are not read at all: their length is enough.
    # (Not for deflate: pydicom inflates into memory, so offsets are not file offsets.)
    deflated = str(transfer_syntax) == DeflatedExplicitVRLittleEndian
    ds = dcmread(path, defer_size=None if deflated else _DEFER_BYTES)

    missing = [kw for kw in _REQUIRED_UIDS if not _valid_uid(ds.get(kw))]
    if missing:
        # Only well-formed UIDs go into reasons and events: a malformed one may be any text.
        candidates = (ds.get("SOPInstanceUID"), affected_sop_instance)
        sop_uid = next((str(u) for u in candidates if _valid_uid(u)), None)
        study_uid = ds.get("StudyInstanceUID")
        raise InstanceRefused(
            status.MISSING_ATTRIBUTE,
            "missing or invalid " + ", ".join(missing),
            sop_uid,
            str(study_uid) if _valid_uid(study_uid) else None,
        )
    sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    if str(ds.SOPClassUID) != str(context_sop_class):
        raise InstanceRefused(
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOP Class UID {ds.SOPClassUID} does not match the presentation context "
            f"({context_sop_class})",
            sop_uid, study_uid,
        )
    if affected_sop_instance and sop_uid != str(affected_sop_instance).strip():
        raise InstanceRefused(
            status.MISSING_ATTRIBUTE,
            f"SOP Instance UID {sop_uid} differs from the request's "
            f"Affected SOP Instance UID {affected_sop_instance}",
            sop_uid, study_uid,
        )

    has_pixels = "PixelData" in ds
    if has_pixels:
        _check_pixel_data(ds, transfer_syntax, path.stat().st_size, sop_uid, study_uid)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 0
    header = InstanceHeader(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=sop_uid,
        study_instance_uid=study_uid,
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(transfer_syntax),
        modality=_text(ds, "Modality"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        rows=int(ds.Rows) if "Rows" in ds and ds.Rows is not None else None,
        columns=int(ds.Columns) if "Columns" in ds and ds.Columns is not None else None,
        number_of_frames=frames,
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        has_pixel_data=has_pixels,
    )
    return ds, header


def _check_pixel_data(ds: Dataset, transfer_syntax: str, file_size: int, sop_uid: str,
                      study_uid: str) -> None:
    def refuse(reason: str) -> InstanceRefused:
        return InstanceRefused(status.INCONSISTENT_PIXEL_DATA, reason, sop_uid, study_uid)

    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        value = ds.get(kw)
        if not isinstance(value, int) or value < 1:
            raise refuse(f"Pixel Data present but {kw} is missing or not positive")
    if ds.Rows > MAX_DIMENSION or ds.Columns > MAX_DIMENSION:
        raise refuse(f"Rows/Columns {ds.Rows}x{ds.Columns} exceed {MAX_DIMENSION}")
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    deferred = raw is not None and raw.value is None
    length = raw.length if deferred else len(ds.PixelData or b"")
    if deferred and raw.value_tell + raw.length > file_size:
        raise refuse(f"Pixel Data truncated: {raw.length} bytes declared, "
                     f"{max(0, file_size - raw.value_tell)} received")
    if not length:
        raise refuse("Pixel Data is empty")
    if UID(transfer_syntax).is_compressed:
        pixel_data = ds.PixelData  # encapsulated: undefined length, already read
        try:
            fragments = sum(1 for _ in generate_fragments(pixel_data))
        except (ValueError, EOFError) as exc:
            raise refuse(f"encapsulated Pixel Data does not parse ({exc})") from exc
        if fragments < 2:  # the Basic Offset Table item, then at least one fragment
            raise refuse("encapsulated Pixel Data has no fragments")
        return
    try:
        expected = get_expected_length(ds, unit="bytes")
    except (AttributeError, ValueError, TypeError) as exc:
        raise refuse(f"image pixel module incomplete ({exc})") from exc
    if length not in (expected, expected + (expected % 2)):
        raise refuse(
            f"Pixel Data has {length} bytes, Rows x Columns x Samples x Bits "
            f"x Frames gives {expected}"
        )
