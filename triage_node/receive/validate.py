"""Checks on a received dataset before it is accepted: decodable, complete, consistent.

A dataset that fails raises :class:`InstanceRefused` with the status to send and a
reason that names UIDs and tags only (never patient data).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.multival import MultiValue
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)
from pynetdicom.dsutils import split_dataset

from triage_node.receive import status

# Larger than any radiograph detector; beyond this Rows/Columns are treated as corrupt.
MAX_DIMENSION = 16384
_DEFER_BYTES = 1 << 20
_INFLATE_CHUNK = 1 << 20
_HEADER_BYTES = 1 << 16
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class InstanceRefused(Exception):
    """The received instance is not accepted; ``status`` is the C-STORE status to send."""

    def __init__(
        self,
        status_code: int,
        reason: str,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> None:
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
    # The scanner: Manufacturer (0008,0070), Manufacturer's Model Name (0008,1090). Device
    # facts, not patient data: stored, logged and used as metric labels (drift watch).
    manufacturer: str | None
    model_name: str | None
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


def read_instance(
    path: Path,
    context_sop_class: str,
    transfer_syntax: str,
    affected_sop_instance: str | None = None,
    max_bytes: int | None = None,
) -> tuple[Dataset, InstanceHeader]:
    """Decode the Part-10 file at ``path`` and check it; return the dataset and its header.

    ``context_sop_class`` is the abstract syntax of the presentation context the
    instance arrived on: a dataset of another SOP class is refused with 0xA900.
    ``max_bytes`` bounds a deflated dataset's inflated size (checked before it is
    inflated in memory): a few MB on the wire may claim gigabytes.
    """
    try:
        if max_bytes is not None and str(transfer_syntax) == DeflatedExplicitVRLittleEndian:
            _check_inflated_size(path, max_bytes, affected_sop_instance)
        return _read_and_check(path, context_sop_class, transfer_syntax, affected_sop_instance)
    except InstanceRefused:
        raise
    except Exception as exc:  # any decoding error of a peer's bytes is the peer's problem
        raise InstanceRefused(
            status.CANNOT_UNDERSTAND,
            f"dataset cannot be decoded ({type(exc).__name__})",
            affected_sop_instance,
        ) from exc


def _check_inflated_size(path: Path, max_bytes: int, sop_uid: str | None) -> None:
    """Refuse a deflated dataset that inflates beyond ``max_bytes``, one chunk at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with path.open("rb") as f:
        f.seek(split_dataset(path)[1])
        pending = b""
        while pending or (pending := f.read(_INFLATE_CHUNK)):
            total += len(inflater.decompress(pending, _INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
            if total > max_bytes:
                raise InstanceRefused(
                    status.INSTANCE_TOO_LARGE,
                    f"deflated dataset inflates beyond receive.max_instance_mb "
                    f"({max_bytes >> 20} MB)",
                    sop_uid if _valid_uid(sop_uid) else None,
                )


def _vr_as_in_dictionary(tag: BaseTag, vr: str) -> bool:
    """True if ``vr`` is one the data dictionary allows for ``tag`` (or the tag is unknown)."""
    try:
        allowed = dictionary_VR(tag)
    except KeyError:
        return True
    return vr in allowed.replace(" or ", " ").split()


def _check_values(ds: Dataset, sop_uid: str, study_uid: str) -> None:
    """Convert every element value but Pixel Data's, items of sequences included.

    An element whose bytes do not convert (a US of three bytes, a DS that is not a
    number, text that is not in its character set) would fail whoever reads it
    later; it is refused now, naming the tag (never the value: it may be patient data).
    Elements of group 0028 (image pixel module, LUTs, rescale, window), which
    decoding uses, must also have their dictionary VR.
    """
    for tag in list(ds.keys()):
        if tag == _PIXEL_DATA:
            continue
        try:
            elem = ds[tag]
            if tag.group == 0x0028 and not _vr_as_in_dictionary(tag, elem.VR):
                raise ValueError(f"VR {elem.VR} where the dictionary has another")
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            if elem.VR in ("DS", "IS") and any(isinstance(v, str) and v.strip() for v in values):
                raise ValueError("not a number")
        except Exception as exc:
            raise InstanceRefused(
                status.CANNOT_UNDERSTAND,
                f"element {tag} cannot be decoded ({type(exc).__name__})",
                sop_uid,
                study_uid,
            ) from exc
        if elem.VR == "SQ":
            for item in elem.value:
                _check_values(item, sop_uid, study_uid)


def _read_and_check(
    path: Path, context_sop_class: str, transfer_syntax: str, affected_sop_instance: str | None
) -> tuple[Dataset, InstanceHeader]:
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
            sop_uid,
            study_uid,
        )
    if affected_sop_instance and sop_uid != str(affected_sop_instance).strip():
        raise InstanceRefused(
            status.MISSING_ATTRIBUTE,
            f"SOP Instance UID {sop_uid} differs from the request's "
            f"Affected SOP Instance UID {affected_sop_instance}",
            sop_uid,
            study_uid,
        )

    _check_values(ds, sop_uid, study_uid)
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
        manufacturer=_text(ds, "Manufacturer"),
        model_name=_text(ds, "ManufacturerModelName"),
        rows=int(ds.Rows) if "Rows" in ds and ds.Rows is not None else None,
        columns=int(ds.Columns) if "Columns" in ds and ds.Columns is not None else None,
        number_of_frames=frames,
        photometric_interpretation=_text(ds, "PhotometricInterpretation"),
        has_pixel_data=has_pixels,
    )
    return ds, header


def _check_pixel_data(
    ds: Dataset, transfer_syntax: str, file_size: int, sop_uid: str, study_uid: str
) -> None:
    def refuse(reason: str) -> InstanceRefused:
        return InstanceRefused(status.INCONSISTENT_PIXEL_DATA, reason, sop_uid, study_uid)

    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        value = ds.get(kw)
        if not isinstance(value, int) or value < 1:
            raise refuse(f"Pixel Data present but {kw} is missing or not positive")
    if ds.Rows > MAX_DIMENSION or ds.Columns > MAX_DIMENSION:
        raise refuse(f"Rows/Columns {ds.Rows}x{ds.Columns} exceed {MAX_DIMENSION}")
    bits = ds.BitsAllocated
    if bits > 64 or (bits != 1 and bits % 8):
        raise refuse(f"Bits Allocated {bits} is neither 1 nor a multiple of 8 up to 64")
    stored = ds.get("BitsStored")
    if not isinstance(stored, int) or not 1 <= stored <= bits:
        raise refuse(f"Bits Stored {stored} is not between 1 and Bits Allocated ({bits})")
    if ds.get("PixelRepresentation") not in (0, 1):
        raise refuse("Pixel Representation is missing or neither 0 nor 1")
    if ds.SamplesPerPixel not in (1, 3):
        raise refuse(f"Samples per Pixel {ds.SamplesPerPixel} is neither 1 nor 3")
    # Not read yet, Pixel Data is a RawDataElement (pydicom's overloads say DataElement)
    # whose value is None when deferred: then only its declared length is known.
    item: DataElement | RawDataElement | None = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    deferred = item if isinstance(item, RawDataElement) and item.value is None else None
    # Large encapsulated Pixel Data is deferred with its undefined length (0xFFFFFFFF):
    # there is no declared length to check; the fragments below are parsed instead.
    undefined = deferred is not None and deferred.length == _UNDEFINED_LENGTH
    if undefined and not UID(transfer_syntax).is_compressed:
        raise refuse("native Pixel Data with undefined length")
    length = deferred.length if deferred is not None else len(ds.PixelData or b"")
    if deferred is not None and not undefined and deferred.value_tell + deferred.length > file_size:
        raise refuse(
            f"Pixel Data truncated: {deferred.length} bytes declared, "
            f"{max(0, file_size - deferred.value_tell)} received"
        )
    if not length:
        raise refuse("Pixel Data is empty")
    if UID(transfer_syntax).is_compressed:
        pixel_data = ds.PixelData  # encapsulated: undefined length, already read
        # Keep the fragments that hold the first frame's header, and the last one.
        head: list[bytes] = []
        last, count = b"", 0
        try:
            for fragment in generate_fragments(pixel_data):
                count += 1
                if count > 1 and sum(map(len, head)) < _HEADER_BYTES:
                    head.append(fragment)
                last = fragment
        except (ValueError, EOFError) as exc:
            raise refuse(f"encapsulated Pixel Data does not parse ({exc})") from exc
        if count < 2 or not head[0]:  # the Basic Offset Table item, then a fragment
            raise refuse("encapsulated Pixel Data has no fragments")
        _check_codestream(head, last, ds, UID(transfer_syntax), refuse)
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


# Start of Frame markers (JPEG processes and JPEG-LS's SOF55): they carry the frame size.
_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
)
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_frame_size(stream: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, precision, components) from a JPEG or JPEG-LS Start of Frame."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 9 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _SOF_MARKERS:
            precision, rows, columns, components = struct.unpack_from(">BHHB", stream, pos + 4)
            return rows, columns, precision, components
        elif marker in _STANDALONE_MARKERS:
            pos += 2
        else:
            pos += 2 + struct.unpack_from(">H", stream, pos + 2)[0]
    return None


def _j2k_frame_size(stream: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, precision, components) from a JPEG 2000 SIZ segment."""
    pos = stream.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC, SIZ (raw or JP2 wrapped)
    if pos < 0 or pos + 43 > len(stream):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", stream, pos + 8)
    components, depth = struct.unpack_from(">HB", stream, pos + 40)
    return ysiz - yosiz, xsiz - xosiz, (depth & 0x7F) + 1, components


def _check_codestream(
    head: list[bytes],
    last: bytes,
    ds: Dataset,
    transfer_syntax: UID,
    refuse: Callable[[str], InstanceRefused],
) -> None:
    """The first frame's codestream header must agree with the image pixel module.

    ``head`` are the first fragments (the first frame's header is in them), ``last``
    the last fragment (where the last frame ends).

    Cheap (headers only, nothing is decoded) and it catches a tiny stream that
    claims a huge image, or a codestream of another kind than the transfer syntax.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    stream = head[0]
    if transfer_syntax == RLELossless:  # one fragment a frame
        if len(stream) < 64:
            raise refuse("RLE fragment shorter than its 64-byte header")
        count, *offsets = struct.unpack_from("<16I", stream)
        expected = int(ds.SamplesPerPixel) * -(-int(ds.BitsAllocated) // 8)
        if count != expected:
            raise refuse(f"RLE header has {count} segments, the pixel module needs {expected}")
        ends = [*offsets[:count], len(stream)]
        # A run of at most 128 bytes costs at least 2 bytes of the segment.
        least = 2 * -(-rows * columns // 128)
        # And at most 2 bytes a byte (literal runs of one byte), plus padding.
        most = 2 * rows * columns + 1
        if ends[0] != 64 or any(not least <= ends[i + 1] - ends[i] <= most for i in range(count)):
            raise refuse(f"RLE segment lengths do not fit {rows} x {columns} pixels")
        return
    stream = b"".join(head)[:_HEADER_BYTES]  # a frame may span fragments
    if transfer_syntax in JPEG2000TransferSyntaxes:
        size = _j2k_frame_size(stream)
    elif transfer_syntax in JPEGTransferSyntaxes or transfer_syntax in JPEGLSTransferSyntaxes:
        size = _jpeg_frame_size(stream)
    else:
        return
    if size is None:
        raise refuse(f"no frame header found in the {transfer_syntax.name} codestream")
    if size[1] != columns or size[0] not in (rows, 0):  # 0: rows given by a DNL marker
        raise refuse(
            f"codestream declares {size[0]} x {size[1]} pixels, "
            f"Rows x Columns say {rows} x {columns}"
        )
    # Decoders return samples of 8, 16 or 32 bits, as the precision needs.
    container = 8 if size[2] <= 8 else 16 if size[2] <= 16 else 32
    if container != int(ds.BitsAllocated) or size[3] != int(ds.SamplesPerPixel):
        raise refuse(
            f"codestream declares {size[3]} components of {size[2]} bits, the pixel "
            f"module {ds.SamplesPerPixel} of {ds.BitsAllocated} bits allocated"
        )
    # Every JPEG, JPEG-LS and JPEG 2000 codestream ends with EOI/EOC (FFD9), before
    # the fragment's padding: without it the stream was cut short.
    if not last.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise refuse(f"{transfer_syntax.name} codestream truncated (no end marker)")
