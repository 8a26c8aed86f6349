"""Fuzzing the receiver: seeded mutations of samples/ sent to a running node over the network.

Inputs are made from the sample files by a mutator that works on their encoded
bytes (so it can send what pydicom would refuse to write): header elements
removed, wrong VRs, lengths that lie, truncated Pixel Data, absurd image
dimensions, compressed streams that claim or expand to huge sizes, random bytes;
and, one layer down, raw PDUs (random bytes, mangled A-ASSOCIATE-RQ, garbage
P-DATA-TF). Input ``i`` of seed ``s`` depends on ``(s, i)`` only, so a run is
reproducible whatever the number of parallel associations.

Datasets are sent by pynetdicom as files (``STORE_SEND_CHUNKED_DATASET``): it
streams the bytes after the file meta as they are, without decoding them.

:func:`run_fuzz` drives a node started elsewhere (``bench/fuzz`` and
``tests/test_fuzz.py`` start ``triage-node receive`` as a subprocess) and returns
a :class:`FuzzReport`: every answer classified, the node's peak RSS, and
periodic checks that a good instance is still acknowledged and stored.
"""

from __future__ import annotations

import contextlib
import io
import random
import socket
import struct
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select

from triage_node.config import load_settings
from triage_node.receive.contexts import TRANSFER_SYNTAXES
from triage_node.store import Instance, Store

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
CALLING_AE = "FUZZSCU"
CALLED_AE = "TRIAGE"

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SOP_CLASSES = (CR, DX_PRESENTATION, DX_PROCESSING, SECONDARY_CAPTURE)

# Success and the warning statuses of PS3.4 B.2.3 (plus the general ones of PS3.7 C).
WARNING_STATUSES = frozenset({0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
ALL_VRS = [
    b"AE",
    b"AS",
    b"AT",
    b"CS",
    b"DA",
    b"DS",
    b"DT",
    b"FL",
    b"FD",
    b"IS",
    b"LO",
    b"LT",
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OW",
    b"PN",
    b"SH",
    b"SL",
    b"SQ",
    b"SS",
    b"ST",
    b"TM",
    b"UC",
    b"UI",
    b"UL",
    b"UN",
    b"UR",
    b"US",
    b"UT",
    b"OV",
    b"SV",
    b"UV",
]
UNDEFINED = 0xFFFFFFFF

TAG_SOP_CLASS = 0x00080016
TAG_SOP_INSTANCE = 0x00080018
TAG_STUDY = 0x0020000D
TAG_SERIES = 0x0020000E
TAG_FRAMES = 0x00280008
TAG_ROWS = 0x00280010
TAG_COLUMNS = 0x00280011
TAG_SAMPLES = 0x00280002
TAG_BITS_ALLOCATED = 0x00280100
TAG_PIXEL_DATA = 0x7FE00010
REQUIRED_UIDS = (TAG_SOP_CLASS, TAG_SOP_INSTANCE, TAG_STUDY, TAG_SERIES)
PIXEL_MODULE = (TAG_ROWS, TAG_COLUMNS, TAG_BITS_ALLOCATED, TAG_SAMPLES)

# Expected status sets: None means "any valid answer" (success must then hold up).
FAILURE = "failure"


# --- reading seeds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """One top-level data element as encoded: its header bytes and value bytes."""

    tag: int
    vr: bytes | None  # None in implicit VR
    header: bytes
    value: bytes

    @property
    def raw(self) -> bytes:
        return self.header + self.value


@dataclass(frozen=True)
class Seed:
    """A sample file split into its top-level elements."""

    name: str
    sop_class: str
    transfer_syntax: str
    elements: tuple[Element, ...]

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == ImplicitVRLittleEndian

    @property
    def encapsulated(self) -> bool:
        return pydicom.uid.UID(self.transfer_syntax).is_compressed


def _read_tag(data: bytes, pos: int) -> int:
    group, elem = struct.unpack_from("<HH", data, pos)
    return (group << 16) | elem


def _element_span(data: bytes, pos: int, implicit: bool) -> tuple[bytes | None, int, int]:
    """(VR, header length, end offset) of the element starting at ``pos``."""
    tag = _read_tag(data, pos)
    if implicit or tag >> 16 == 0xFFFE:
        vr, hlen = None, 8
        (length,) = struct.unpack_from("<I", data, pos + 4)
    else:
        vr = data[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            hlen = 12
            (length,) = struct.unpack_from("<I", data, pos + 8)
        else:
            hlen = 8
            (length,) = struct.unpack_from("<H", data, pos + 6)
    if length == UNDEFINED:
        return vr, hlen, _skip_undefined(data, pos + hlen, implicit)
    return vr, hlen, pos + hlen + length


def _skip_undefined(data: bytes, pos: int, implicit: bool) -> int:
    """End offset of an undefined-length value (items up to the sequence delimiter)."""
    while True:
        tag = _read_tag(data, pos)
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if tag == 0xFFFEE0DD:
            return pos + 8
        if tag != 0xFFFEE000:
            raise ValueError(f"unexpected tag {tag:08X} in an undefined-length value")
        if length != UNDEFINED:
            pos += 8 + length
            continue
        pos += 8
        while _read_tag(data, pos) != 0xFFFEE00D:
            pos = _element_span(data, pos, implicit)[2]
        pos += 8


def split_elements(data: bytes, implicit: bool) -> tuple[Element, ...]:
    """The top-level elements of an encoded little-endian dataset."""
    out: list[Element] = []
    pos = 0
    while pos < len(data):
        vr, hlen, end = _element_span(data, pos, implicit)
        out.append(
            Element(_read_tag(data, pos), vr, data[pos : pos + hlen], data[pos + hlen : end])
        )
        pos = end
    return tuple(out)


def encode_element(tag: int, vr: bytes | None, value: bytes, length: int | None = None) -> Element:
    """An element with ``value``; ``length`` overrides the length field (to make it lie)."""
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if vr is None:
        head += struct.pack("<I", n & 0xFFFFFFFF)
    elif vr in LONG_VRS:
        head += vr + b"\0\0" + struct.pack("<I", n & 0xFFFFFFFF)
    else:
        head += vr + struct.pack("<H", n & 0xFFFF)
    return Element(tag, vr, head, value)


def load_seed(path: Path) -> Seed:
    """Read a Part-10 file into a :class:`Seed` (deflated files are inflated)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ts = str(ds.file_meta.TransferSyntaxUID)
    body = path.read_bytes()[split_dataset(path)[1] :]
    if ts == DeflatedExplicitVRLittleEndian:
        body = zlib.decompress(body, -zlib.MAX_WBITS)
    return Seed(
        path.name, str(ds.SOPClassUID), ts, split_elements(body, ts == ImplicitVRLittleEndian)
    )


def load_seeds(directory: Path = SAMPLES) -> list[Seed]:
    """The sample files, plus a deflated copy of the explicit-VR ones."""
    seeds = [load_seed(p) for p in sorted(directory.glob("*.dcm"))]
    seeds += [
        Seed(s.name + "+deflate", s.sop_class, DeflatedExplicitVRLittleEndian, s.elements)
        for s in seeds
        if s.transfer_syntax == ExplicitVRLittleEndian
    ]
    return seeds


# --- inputs ----------------------------------------------------------------------------


@dataclass
class FuzzInput:
    """One C-STORE to send, or (``raw``) bytes to write on a fresh TCP connection."""

    index: int
    kind: str
    sop_class: str = ""  # the presentation context's abstract syntax
    transfer_syntax: str = ""
    affected_uid: str = ""
    payload: bytes = b""  # the dataset as sent (deflated already when so)
    sop_instance_uid: str | None = None  # the dataset's own, if it has one
    expect: frozenset[int] | str | None = None  # statuses, FAILURE, or None (any)
    raw: Callable[[socket.socket, float], str] | None = None


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


def _uid_value(uid: str) -> bytes:
    b = uid.encode()
    return b + b"\0" if len(b) % 2 else b


def _replace(elements: list[Element], tag: int, value: bytes, implicit: bool, vr: bytes) -> None:
    new = encode_element(tag, None if implicit else vr, value)
    for i, e in enumerate(elements):
        if e.tag == tag:
            elements[i] = new
            return
        if e.tag > tag:
            elements.insert(i, new)
            return
    elements.append(new)


def _index_of(elements: list[Element], tag: int) -> int | None:
    return next((i for i, e in enumerate(elements) if e.tag == tag), None)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


_BOMB_TAILS: dict[int, bytes] = {}
_BOMB_LOCK = threading.Lock()


def _zeros_deflated(n: int) -> bytes:
    """A raw deflate stream (final block included) of ``n`` zero bytes, cached."""
    with _BOMB_LOCK:
        if n not in _BOMB_TAILS:
            c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            chunk = bytes(1 << 20)
            parts = [c.compress(chunk) for _ in range(n >> 20)]
            parts.append(c.compress(bytes(n & ((1 << 20) - 1))))
            parts.append(c.flush())
            _BOMB_TAILS[n] = b"".join(parts)
        return _BOMB_TAILS[n]


class Mutator:
    """Makes input ``i`` of a seeded run from the seeds."""

    def __init__(
        self, seeds: list[Seed], seed: int, bomb_mb: int = 1024, raw_share: float = 0.12
    ) -> None:
        self.seeds = seeds
        self.seed = seed
        self.bomb_bytes = bomb_mb << 20
        self.raw_share = raw_share
        self.dataset_kinds: list[tuple[str, int]] = [
            ("control", 6),
            ("drop_required_uid", 5),
            ("drop_pixel_module", 4),
            ("drop_random", 6),
            ("wrong_vr", 8),
            ("lying_length", 10),
            ("truncate", 8),
            ("truncate_pixel_data", 6),
            ("absurd_dimensions", 8),
            ("absurd_frames", 4),
            ("bits_allocated", 4),
            ("sop_class_mismatch", 3),
            ("affected_uid_mismatch", 2),
            ("transfer_syntax_mismatch", 5),
            ("byte_flips", 10),
            ("random_insert", 4),
            ("random_dataset", 3),
            ("rle_bomb", 3),
            ("deflate_bomb", 1),
            ("deflate_corrupt", 3),
            ("fragment_garbage", 4),
            ("deep_sequence", 1),
            ("duplicate", 2),
        ]
        self.raw_kinds: list[tuple[str, int]] = [
            ("raw_random", 3),
            ("raw_associate_mutated", 4),
            ("raw_pdata_garbage", 5),
            ("raw_pdu_length_lie", 2),
            ("raw_oversize_pdata", 1),
        ]

    def make(self, index: int) -> FuzzInput:
        rng = random.Random(f"{self.seed}:{index}")
        if rng.random() < self.raw_share:
            kind = _weighted(rng, self.raw_kinds)
            return FuzzInput(index, kind, raw=_RAW_MAKERS[kind](self, rng))
        kind = _weighted(rng, self.dataset_kinds)
        seed = rng.choice(self.seeds)
        return getattr(self, "_" + kind)(index, rng, seed)

    # helpers -------------------------------------------------------------------------

    def _fresh(
        self, index: int, rng: random.Random, seed: Seed, kind: str, new_study: bool = True
    ) -> tuple[list[Element], FuzzInput]:
        """The seed's elements with new UIDs (so a success is a new instance)."""
        elements = list(seed.elements)
        sop_uid = _uid(rng)
        _replace(elements, TAG_SOP_INSTANCE, _uid_value(sop_uid), seed.implicit, b"UI")
        if new_study:
            _replace(elements, TAG_STUDY, _uid_value(_uid(rng)), seed.implicit, b"UI")
            _replace(elements, TAG_SERIES, _uid_value(_uid(rng)), seed.implicit, b"UI")
        item = FuzzInput(
            index, kind, seed.sop_class, seed.transfer_syntax, sop_uid, sop_instance_uid=sop_uid
        )
        return elements, item

    def _finish(
        self, item: FuzzInput, elements: list[Element], seed: Seed, tail: bytes = b""
    ) -> FuzzInput:
        body = b"".join(e.raw for e in elements) + tail
        if item.transfer_syntax == DeflatedExplicitVRLittleEndian:
            body = _deflate(body)
        item.payload = body
        return item

    # dataset mutations -------------------------------------------------------------

    def _control(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "control")
        item.expect = frozenset({0x0000})
        return self._finish(item, elements, seed)

    def _duplicate(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        # The same SOP Instance UID twice in a row on one association: both acknowledged.
        elements, item = self._fresh(index, rng, seed, "duplicate")
        item.expect = frozenset({0x0000})
        return self._finish(item, elements, seed)

    def _drop_required_uid(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "drop_required_uid")
        tag = rng.choice(REQUIRED_UIDS)
        elements = [e for e in elements if e.tag != tag]
        item.expect = frozenset({0xC210})
        if tag == TAG_SOP_INSTANCE:
            item.sop_instance_uid = None
        return self._finish(item, elements, seed)

    def _drop_pixel_module(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "drop_pixel_module")
        tag = rng.choice(PIXEL_MODULE)
        elements = [e for e in elements if e.tag != tag]
        item.expect = frozenset({0xC220})
        return self._finish(item, elements, seed)

    def _drop_random(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "drop_random")
        for _ in range(rng.randint(1, 4)):
            elements.pop(rng.randrange(len(elements)))
        return self._finish(item, elements, seed)

    def _wrong_vr(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "wrong_vr")
        if seed.implicit or seed.transfer_syntax == DeflatedExplicitVRLittleEndian:
            # No VRs on the wire: send the implicit bytes as explicit instead.
            item.transfer_syntax = (
                ExplicitVRLittleEndian if seed.implicit else DeflatedExplicitVRLittleEndian
            )
            if not seed.implicit:
                i = rng.randrange(len(elements))
                e = elements[i]
                vr = rng.choice(ALL_VRS)
                elements[i] = Element(e.tag, vr, e.header[:4] + vr + e.header[6:], e.value)
            return self._finish(item, elements, seed)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(elements))
            e = elements[i]
            vr = (
                rng.choice(ALL_VRS)
                if rng.random() < 0.85
                else bytes(rng.getrandbits(8) for _ in range(2))
            )
            if rng.random() < 0.5:  # keep the header shape: only the VR lies
                elements[i] = Element(e.tag, vr, e.header[:4] + vr + e.header[6:], e.value)
            else:  # re-encode with the wrong VR's header layout
                elements[i] = encode_element(e.tag, vr, e.value)
        return self._finish(item, elements, seed)

    def _lying_length(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "lying_length")
        i = rng.randrange(len(elements))
        if rng.random() < 0.3:
            i = _index_of(elements, TAG_PIXEL_DATA) or i
        e = elements[i]
        choices = [
            0,
            1,
            len(e.value) + 1,
            len(e.value) - 1,
            len(e.value) + 2,
            len(e.value) * 2,
            0xFFFF,
            0xFFFFFFFF,
            0x7FFFFFFF,
            0xFFFFFFFE,
            rng.getrandbits(32),
            rng.getrandbits(16),
        ]
        length = max(0, rng.choice(choices))
        elements[i] = encode_element(e.tag, e.vr, e.value, length)
        return self._finish(item, elements, seed)

    def _truncate(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "truncate")
        body = b"".join(e.raw for e in elements)
        pixels = _index_of(elements, TAG_PIXEL_DATA)
        cut = rng.randrange(1, len(body))
        if pixels is not None:
            start = sum(len(e.raw) for e in elements[:pixels])
            if cut > start:  # inside Pixel Data: never acknowledged
                item.expect = FAILURE
        item.payload = (
            _deflate(body[:cut])
            if (item.transfer_syntax == DeflatedExplicitVRLittleEndian)
            else body[:cut]
        )
        return item

    def _truncate_pixel_data(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "truncate_pixel_data")
        i = _index_of(elements, TAG_PIXEL_DATA)
        assert i is not None
        e = elements[i]
        keep = rng.randrange(0, max(1, len(e.value) - 16))
        if seed.encapsulated:
            # Cut inside the fragments; the sequence delimiter may or may not follow.
            value = e.value[:keep] + (b"\xfe\xff\xdd\xe0\0\0\0\0" if rng.random() < 0.5 else b"")
            elements[i] = Element(e.tag, e.vr, e.header, value)
        else:
            lie = rng.random() < 0.5  # the length field still says the full size
            elements[i] = encode_element(e.tag, e.vr, e.value[:keep], len(e.value) if lie else None)
        # RLE has no end marker: a segment cut short but still long enough for its
        # pixels is found only by decoding (the worker's job, verified as a payload).
        item.expect = None if seed.transfer_syntax == RLELossless else FAILURE
        return self._finish(item, elements, seed)

    def _absurd_dimensions(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "absurd_dimensions")
        rows, cols = rng.choice(
            [
                (0, 640),
                (16385, 640),
                (65535, 65535),
                (40000, 40000),
                (1, 1),
                (16384, 16384),
                (533, 0),
                (2, 65535),
            ]
        )
        _replace(elements, TAG_ROWS, struct.pack("<H", rows), seed.implicit, b"US")
        _replace(elements, TAG_COLUMNS, struct.pack("<H", cols), seed.implicit, b"US")
        item.expect = FAILURE
        return self._finish(item, elements, seed)

    def _absurd_frames(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "absurd_frames")
        value = rng.choice(
            [b"0 ", b"-5", b"999999999 ", b"x ", b"1e9 ", b"2 ", b"", b"4294967297", b"1\\2 "]
        )
        _replace(elements, TAG_FRAMES, value, seed.implicit, b"IS")
        return self._finish(item, elements, seed)

    def _bits_allocated(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "bits_allocated")
        tag = rng.choice([TAG_BITS_ALLOCATED, TAG_SAMPLES])
        value = rng.choice([0, 1, 7, 3, 64, 255, 65535])
        _replace(elements, tag, struct.pack("<H", value), seed.implicit, b"US")
        return self._finish(item, elements, seed)

    def _sop_class_mismatch(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "sop_class_mismatch")
        item.sop_class = rng.choice([c for c in SOP_CLASSES if c != seed.sop_class])
        item.expect = frozenset({0xA900})
        return self._finish(item, elements, seed)

    def _affected_uid_mismatch(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "affected_uid_mismatch")
        item.affected_uid = _uid(rng)
        item.expect = FAILURE
        return self._finish(item, elements, seed)

    def _transfer_syntax_mismatch(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "transfer_syntax_mismatch")
        item.transfer_syntax = rng.choice(
            [t for t in TRANSFER_SYNTAXES if t != seed.transfer_syntax]
        )
        body = b"".join(e.raw for e in elements)
        if seed.transfer_syntax == DeflatedExplicitVRLittleEndian:
            body = _deflate(body)
        item.payload = body
        return item

    def _byte_flips(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "byte_flips")
        body = bytearray(b"".join(e.raw for e in elements))
        pixels = _index_of(elements, TAG_PIXEL_DATA)
        header_end = sum(len(e.raw) for e in elements[:pixels]) if pixels else len(body)
        for _ in range(rng.choice([1, 2, 4, 16, 64])):
            # Mostly in the header, where structure lives.
            limit = header_end + 64 if rng.random() < 0.8 else len(body)
            pos = rng.randrange(min(limit, len(body)))
            body[pos] = rng.getrandbits(8)
        item.payload = (
            _deflate(bytes(body))
            if (item.transfer_syntax == DeflatedExplicitVRLittleEndian)
            else bytes(body)
        )
        return item

    def _random_insert(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        elements, item = self._fresh(index, rng, seed, "random_insert")
        body = b"".join(e.raw for e in elements)
        pos = rng.randrange(len(body))
        junk = rng.randbytes(rng.choice([1, 2, 3, 8, 100, 5000]))
        body = body[:pos] + junk + body[pos:]
        item.payload = (
            _deflate(body) if (item.transfer_syntax == DeflatedExplicitVRLittleEndian) else body
        )
        return item

    def _random_dataset(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        item = FuzzInput(
            index, "random_dataset", seed.sop_class, rng.choice(TRANSFER_SYNTAXES), _uid(rng)
        )
        item.payload = rng.randbytes(rng.choice([0, 1, 7, 128, 4096, 65536]))
        item.expect = FAILURE
        return item

    def _rle_bomb(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        """A tiny RLE fragment in an image claiming up to 16384 x 16384 pixels, many frames."""
        rle = next(s for s in self.seeds if s.transfer_syntax == RLELossless)
        elements, item = self._fresh(index, rng, rle, "rle_bomb")
        rows = cols = rng.choice([4096, 16384])
        _replace(elements, TAG_ROWS, struct.pack("<H", rows), False, b"US")
        _replace(elements, TAG_COLUMNS, struct.pack("<H", cols), False, b"US")
        frames = rng.choice([1, 1, 1000, 2**31 - 1])
        if frames != 1:
            _replace(elements, TAG_FRAMES, str(frames).encode() + b" ", False, b"IS")
        # Two segments (16-bit), each a few runs of "repeat the next byte 128 times".
        runs = b"\x81\x00" * rng.choice([1, 64, 4096])
        header = struct.pack("<16I", 2, 64, 64 + len(runs), *([0] * 13))
        fragment = header + runs + runs
        if len(fragment) % 2:
            fragment += b"\0"
        value = (
            b"\xfe\xff\x00\xe0\0\0\0\0"
            + b"\xfe\xff\x00\xe0"
            + struct.pack("<I", len(fragment))
            + fragment
            + b"\xfe\xff\xdd\xe0\0\0\0\0"
        )
        i = _index_of(elements, TAG_PIXEL_DATA)
        assert i is not None
        elements[i] = Element(TAG_PIXEL_DATA, elements[i].vr, elements[i].header, value)
        return self._finish(item, elements, rle)

    def _deflate_bomb(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        """A deflated dataset of ~1 MB whose native Pixel Data inflates to ``bomb_mb``."""
        explicit = next(s for s in self.seeds if s.transfer_syntax == ExplicitVRLittleEndian)
        elements, item = self._fresh(index, rng, explicit, "deflate_bomb")
        item.transfer_syntax = DeflatedExplicitVRLittleEndian
        i = _index_of(elements, TAG_PIXEL_DATA)
        assert i is not None
        head = b"".join(e.raw for e in elements[:i])
        head += encode_element(TAG_PIXEL_DATA, b"OW", b"", self.bomb_bytes).header
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        item.payload = (
            c.compress(head) + c.flush(zlib.Z_FULL_FLUSH) + _zeros_deflated(self.bomb_bytes)
        )
        item.expect = FAILURE
        return item

    def _deflate_corrupt(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        explicit = next(s for s in self.seeds if s.transfer_syntax == ExplicitVRLittleEndian)
        elements, item = self._fresh(index, rng, explicit, "deflate_corrupt")
        item.transfer_syntax = DeflatedExplicitVRLittleEndian
        stream = bytearray(_deflate(b"".join(e.raw for e in elements)))
        for _ in range(rng.choice([1, 4, 32])):
            stream[rng.randrange(len(stream))] = rng.getrandbits(8)
        if rng.random() < 0.3:
            stream = stream[: rng.randrange(len(stream))]
        item.payload = bytes(stream)
        return item

    def _fragment_garbage(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        compressed = [s for s in self.seeds if s.encapsulated]
        seed = rng.choice(compressed)
        elements, item = self._fresh(index, rng, seed, "fragment_garbage")
        i = _index_of(elements, TAG_PIXEL_DATA)
        assert i is not None
        e = elements[i]
        value = bytearray(e.value)
        choice = rng.randrange(4)
        if choice == 0:  # item lengths that lie
            pos = 12 + (rng.randrange(len(value) - 16) if rng.random() < 0.3 else 0)
            struct.pack_into("<I", value, min(pos, len(value) - 4), rng.getrandbits(32))
        elif choice == 1:  # codestream bytes replaced by noise
            for _ in range(rng.choice([8, 256, 4096])):
                value[rng.randrange(16, len(value) - 8)] = rng.getrandbits(8)
        elif choice == 2:  # fragments only (no offset table), or an empty item list
            value = bytearray(b"\xfe\xff\xdd\xe0\0\0\0\0")
        else:  # tags of the item list scrambled
            for _ in range(4):
                value[rng.randrange(min(len(value), 24))] = rng.getrandbits(8)
        elements[i] = Element(e.tag, e.vr, e.header, bytes(value))
        return self._finish(item, elements, seed)

    def _deep_sequence(self, index: int, rng: random.Random, seed: Seed) -> FuzzInput:
        """Nested undefined-length sequences, thousands deep."""
        explicit = next(s for s in self.seeds if s.transfer_syntax == ExplicitVRLittleEndian)
        elements, item = self._fresh(index, rng, explicit, "deep_sequence")
        depth = rng.choice([100, 2000, 20000])
        sq_head = b"\x08\x00\x15\x11SQ\0\0\xff\xff\xff\xff"  # Referenced Series Sequence
        item_head = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        tail = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
        nested = (sq_head + item_head) * depth + tail * depth
        elements.append(Element(0x00081115, b"SQ", b"", nested))
        elements.sort(key=lambda e: e.tag)
        return self._finish(item, elements, explicit)


def _weighted(rng: random.Random, kinds: list[tuple[str, int]]) -> str:
    return rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]


# --- raw PDUs ----------------------------------------------------------------------------


def _pdu_item(kind: int, data: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(data)) + data


def associate_rq(
    calling: str = CALLING_AE,
    called: str = CALLED_AE,
    sop_class: str = DX_PRESENTATION,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU with one presentation context (id 1)."""
    context = _pdu_item(
        0x20,
        b"\x01\0\0\0"
        + _pdu_item(0x30, sop_class.encode())
        + _pdu_item(0x40, transfer_syntax.encode()),
    )
    user = _pdu_item(
        0x50,
        _pdu_item(0x51, struct.pack(">I", 16384))
        + _pdu_item(0x52, b"1.2.826.0.1.3680043.9.3811.1"),
    )
    body = (
        struct.pack(">HH", 1, 0)
        + called.encode().ljust(16)
        + calling.encode().ljust(16)
        + bytes(32)
        + _pdu_item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdata(pdvs: list[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF PDU from (context id, message control header, data) triples."""
    body = b"".join(struct.pack(">IBB", len(d) + 2, ctx, mch) + d for ctx, mch, d in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


RELEASE_RQ = struct.pack(">BBIL", 0x05, 0, 4, 0)
PDU_NAMES = {0x02: "accept", 0x03: "reject", 0x04: "pdata", 0x06: "release", 0x07: "abort"}


def read_pdu(sock: socket.socket, deadline: float) -> tuple[int, bytes] | None:
    """The next PDU (type, body) from ``sock``; None when the peer closed the connection."""

    def read(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    head = read(6)
    if head is None:
        return None
    kind, _, length = struct.unpack(">BBI", head)
    body = read(min(length, 1 << 20))
    return None if body is None else (kind, body)


def raw_answer(sock: socket.socket, timeout: float) -> str:
    """What the node answered on a raw connection: abort, reject, release, closed, timeout."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            pdu = read_pdu(sock, deadline)
            if pdu is None:
                return "closed"
            name = PDU_NAMES.get(pdu[0], f"pdu 0x{pdu[0]:02X}")
            if name == "pdata":  # a DIMSE answer to garbage: keep reading
                continue
            return name
    except TimeoutError:
        return "timeout"
    except OSError:  # reset by the node
        return "closed"


def raw_associate(sock: socket.socket, timeout: float) -> str:
    """Send our A-ASSOCIATE-RQ on ``sock``; the answer (accept, reject, abort, closed)."""
    sock.sendall(associate_rq())
    pdu = read_pdu(sock, time.monotonic() + timeout)
    return "closed" if pdu is None else PDU_NAMES.get(pdu[0], "other")


def _send_then_listen(data: bytes) -> Callable[[socket.socket, float], str]:
    """A raw sender: ``data`` on a fresh connection, then whatever the node answers."""

    def send(sock: socket.socket, timeout: float) -> str:
        with contextlib.suppress(OSError):  # the node may have closed already
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        return raw_answer(sock, timeout)

    return send


def _raw_random(_: Mutator, rng: random.Random) -> Callable[[socket.socket, float], str]:
    data = rng.randbytes(rng.choice([1, 6, 10, 100, 4096]))
    if rng.random() < 0.5:  # a known PDU type with a random body
        data = bytes([rng.randint(1, 7), 0]) + data
    return _send_then_listen(data)


def _raw_associate_mutated(_: Mutator, rng: random.Random) -> Callable[[socket.socket, float], str]:
    pdu = bytearray(associate_rq())
    for _i in range(rng.choice([1, 2, 8])):
        pdu[rng.randrange(len(pdu))] = rng.getrandbits(8)
    if rng.random() < 0.3:
        pdu = pdu[: rng.randrange(1, len(pdu))]
    data = bytes(pdu)
    return _send_then_listen(data)


def _raw_pdata_garbage(_: Mutator, rng: random.Random) -> Callable[[socket.socket, float], str]:
    pdvs = [
        (
            rng.choice([1, 1, 3, 255, 0]),
            rng.choice([0, 1, 2, 3, 0xFF]),
            rng.randbytes(rng.choice([0, 1, 12, 200, 3000])),
        )
        for _ in range(rng.randint(1, 3))
    ]
    pdu = pdata(pdvs)
    if rng.random() < 0.3:  # PDV length fields that lie
        pdu = pdu[:10] + struct.pack(">I", rng.getrandbits(32)) + pdu[14:]

    def send(sock: socket.socket, timeout: float) -> str:
        if (answer := raw_associate(sock, timeout)) != "accept":
            return f"associate {answer}"
        with contextlib.suppress(OSError):  # the node may abort before reading it all
            sock.sendall(pdu)
            sock.sendall(RELEASE_RQ)  # still responsive afterwards? release or abort
        return raw_answer(sock, timeout)

    return send


def _raw_pdu_length_lie(_: Mutator, rng: random.Random) -> Callable[[socket.socket, float], str]:
    claimed = rng.choice([1 << 20, 1 << 31, 0xFFFFFFFF])
    sent = rng.randbytes(rng.choice([0, 10, 1000]))

    def send(sock: socket.socket, timeout: float) -> str:
        if (answer := raw_associate(sock, timeout)) != "accept":
            return f"associate {answer}"
        with contextlib.suppress(OSError):  # the node may abort before reading it all
            sock.sendall(struct.pack(">BBI", 0x04, 0, claimed) + sent)
            sock.shutdown(socket.SHUT_WR)  # and then nothing: the node must give up on us
        return raw_answer(sock, timeout)

    return send


def _raw_oversize_pdata(_: Mutator, rng: random.Random) -> Callable[[socket.socket, float], str]:
    size = rng.choice([8, 24]) << 20  # beyond receive.max_pdu_size (4 MiB by default)
    seed = rng.getrandbits(32)

    def send(sock: socket.socket, timeout: float) -> str:
        if (answer := raw_associate(sock, timeout)) != "accept":
            return f"associate {answer}"
        junk = random.Random(seed).randbytes(1 << 20)
        body = struct.pack(">IBB", size - 4, 1, 0)
        try:
            sock.sendall(struct.pack(">BBI", 0x04, 0, size) + body)
            for _ in range(size >> 20):
                sock.sendall(junk)
        except OSError:  # the node stopped reading and aborted: fine
            pass
        return raw_answer(sock, timeout)

    return send


# Raw inputs sent on an established association that stays open for the answer.
_ANSWERED_KINDS = frozenset({"raw_pdata_garbage", "raw_oversize_pdata"})

_RAW_MAKERS: dict[
    str, Callable[[Mutator, random.Random], Callable[[socket.socket, float], str]]
] = {
    "raw_random": _raw_random,
    "raw_associate_mutated": _raw_associate_mutated,
    "raw_pdata_garbage": _raw_pdata_garbage,
    "raw_pdu_length_lie": _raw_pdu_length_lie,
    "raw_oversize_pdata": _raw_oversize_pdata,
}


# --- the driver ---------------------------------------------------------------------------


def classify_status(code: int) -> str:
    """success, warning, or ``failure 0xNNNN`` for a C-STORE status code."""
    if code == 0x0000:
        return "success"
    if code in WARNING_STATUSES:
        return "warning"
    return f"failure 0x{code:04X}"


def valid_store_status(code: int) -> bool:
    """A status a Storage SCP may send (PS3.4 B.2.3, PS3.7 C)."""
    return (
        code == 0
        or code in WARNING_STATUSES
        or 0xA700 <= code <= 0xA7FF
        or 0xA900 <= code <= 0xA9FF
        or 0xC000 <= code <= 0xCFFF
        or code in (0x0117, 0x0122, 0x0124, 0x0210, 0x0211, 0x0212, 0x0110)
    )


@dataclass
class FuzzReport:
    """What a run saw; :attr:`problems` lists every violated property."""

    inputs: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    crashes: int = 0
    hangs: int = 0
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0
    end_rss_mb: float = 0.0
    peak_threads: int = 0
    good_checks: int = 0
    good_checks_passed: int = 0
    accepted_verified: int = 0
    payload_undecodable: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, kind: str, category: str) -> None:
        self.inputs += 1
        self.categories[category] += 1
        self.by_kind.setdefault(kind, Counter())[category] += 1

    def summary(self) -> str:
        lines = [
            f"inputs sent: {self.inputs} in {self.seconds:.0f} s",
            f"crashes: {self.crashes}",
            f"hangs: {self.hangs}",
            f"node RSS: start {self.start_rss_mb:.0f} MB, peak {self.peak_rss_mb:.0f} MB, "
            f"end {self.end_rss_mb:.0f} MB; peak threads {self.peak_threads}",
            f"good-instance checks passed: {self.good_checks_passed}/{self.good_checks}",
            f"acknowledged instances verified in the store: {self.accepted_verified}",
            "  of which eligible with pixel payload that does not decode (headers "
            f"consistent; the worker marks them failed): {sum(self.payload_undecodable.values())}"
            + (
                f" ({', '.join(f'{k} {n}' for k, n in sorted(self.payload_undecodable.items()))})"
                if self.payload_undecodable
                else ""
            ),
            "statuses by category:",
        ]
        lines += [f"  {cat:28s} {n}" for cat, n in sorted(self.categories.items())]
        lines.append("by input kind:")
        for kind, counts in sorted(self.by_kind.items()):
            parts = ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
            lines.append(f"  {kind:26s} {parts}")
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  {p}" for p in self.problems[:50]]
        return "\n".join(lines)


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, DICM and the file meta group: what pynetdicom reads before the dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.3811.1"
    out = io.BytesIO()
    out.write(bytes(128) + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


def _proc_status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (0 when it is gone)."""
    return _proc_status(pid, "VmRSS") / 1024


class _RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0.0
        self.peak_threads = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.peak_threads = max(self.peak_threads, _proc_status(self.pid, "Threads"))
            self.stop.wait(self.every)


def _requestor(timeout: float) -> AE:
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # One context per (SOP class, transfer syntax): we choose exactly what is sent.
    for sop_class in SOP_CLASSES:
        for ts in TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, [ts])
    return ae


class FuzzDriver:
    """Sends a :class:`Mutator`'s inputs to a node and checks what happens.

    ``pid`` is the node's process (RSS, liveness), ``config_path`` its config (to
    read its store and spool). ``associations`` senders run in parallel, each
    reusing its association for up to ``per_association`` stores.
    """

    def __init__(
        self,
        host: str,
        port: int,
        pid: int,
        config_path: Path,
        mutator: Mutator,
        scratch: Path,
        *,
        associations: int = 2,
        per_association: int = 250,
        timeout: float = 30.0,
        max_rss_mb: float = 512.0,
        check_every: int = 250,
        alive: Callable[[], bool] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.host, self.port, self.pid = host, port, pid
        self.settings = load_settings(config_path)
        self.mutator = mutator
        self.scratch = scratch
        self.associations = associations
        self.per_association = per_association
        self.timeout = timeout
        self.max_rss_mb = max_rss_mb
        self.check_every = check_every
        self.alive = alive or (lambda: Path(f"/proc/{pid}").exists())
        self.progress = progress or (lambda _msg: None)
        self.report = FuzzReport()
        self._lock = threading.Lock()
        self._next = 0
        self._accepted: list[FuzzInput] = []
        self._stop = threading.Event()

    # -- sending -----------------------------------------------------------------------

    def _write_input(self, path: Path, item: FuzzInput) -> None:
        meta = file_meta_bytes(item.sop_class, item.affected_uid, item.transfer_syntax)
        path.write_bytes(meta + item.payload)

    def _store(self, assoc: object, path: Path, item: FuzzInput) -> str:
        from pynetdicom.association import Association

        assert isinstance(assoc, Association)
        self._write_input(path, item)
        rsp = assoc.send_c_store(path)
        if "Status" in rsp:
            code = int(rsp.Status)
            if not valid_store_status(code):
                self._problem(item, f"invalid status 0x{code:04X}")
            return classify_status(code)
        if assoc.is_aborted:
            return "abort"
        return "timeout"

    def _problem(self, item: FuzzInput | None, message: str) -> None:
        where = f"input {item.index} ({item.kind}): " if item else ""
        with self._lock:
            self.report.problems.append(where + message)

    def _check_expectation(self, item: FuzzInput, category: str) -> None:
        if item.expect is None:
            return
        if item.expect == FAILURE:
            if category in ("success", "warning"):
                self._problem(item, f"acknowledged ({category}), a failure was expected")
            return
        assert isinstance(item.expect, frozenset)
        wanted = {classify_status(c) for c in item.expect}
        if category not in wanted:
            self._problem(item, f"answered {category}, expected {' or '.join(sorted(wanted))}")

    def _take(self, n: int) -> int | None:
        with self._lock:
            if self._next >= n or self._stop.is_set():
                return None
            self._next += 1
            return self._next - 1

    def _sender(self, n: int, worker: int) -> None:
        ae = _requestor(self.timeout)
        path = self.scratch / f"input-{worker}.dcm"
        assoc = None
        used = 0
        try:
            while (index := self._take(n)) is not None:
                item = self.mutator.make(index)
                if item.raw is not None:
                    category = self._send_raw(item)
                else:
                    if assoc is None or not assoc.is_established or used >= self.per_association:
                        if assoc is not None and assoc.is_established:
                            assoc.release()
                        assoc = ae.associate(self.host, self.port, ae_title=CALLED_AE)
                        used = 0
                        if not assoc.is_established:
                            category = "abort" if assoc.is_aborted else "reject"
                            self._problem(item, f"association not established ({category})")
                            self._finish_input(item, "association " + category)
                            assoc = None
                            continue
                    used += 1
                    category = self._store(assoc, path, item)
                    if item.kind == "duplicate" and category == "success":
                        category = self._store(assoc, path, item)  # the second copy
                    if category == "timeout":
                        with self._lock:
                            self.report.hangs += 1
                        self._problem(item, f"no answer within {self.timeout} s")
                        assoc.abort()
                    elif category == "abort":
                        self._problem(item, "node aborted the association on a dataset")
                    self._check_expectation(item, category)
                    if category == "success":
                        with self._lock:
                            self._accepted.append(item)
                self._finish_input(item, category)
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()

    def _send_raw(self, item: FuzzInput) -> str:
        assert item.raw is not None
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                category = item.raw(s, self.timeout)
        except OSError as exc:
            category = f"connect or send failed ({exc})"
            self._problem(item, category)
        if category.endswith("timeout"):
            with self._lock:
                self.report.hangs += 1
            self._problem(item, f"raw connection: no answer within {self.timeout} s")
        elif category == "closed" and item.kind in _ANSWERED_KINDS:
            self._problem(item, "association dropped without A-ABORT")
        return category

    def _finish_input(self, item: FuzzInput, category: str) -> None:
        with self._lock:
            self.report.record(item.kind, category)
        if not self.alive():
            with self._lock:
                self.report.crashes += 1
            self._problem(item, "node process died")
            self._stop.set()

    # -- checks ------------------------------------------------------------------------

    def good_instance_check(self, rng: random.Random) -> bool:
        """Store an unmutated sample with new UIDs; Success and a row and file must follow."""
        seed = rng.choice(self.mutator.seeds)
        elements, item = self.mutator._fresh(-1, rng, seed, "good")
        self.mutator._finish(item, elements, seed)
        ae = _requestor(self.timeout)
        path = self.scratch / "good.dcm"
        ok = False
        assoc = ae.associate(self.host, self.port, ae_title=CALLED_AE)
        if assoc.is_established:
            try:
                category = self._store(assoc, path, item)
            finally:
                assoc.release()
            ok = category == "success" and self._stored(item) is None
            if not ok:
                self._problem(
                    None, f"good instance from {seed.name}: {category}, {self._stored(item)}"
                )
        else:
            self._problem(None, "good instance: association not established")
        with self._lock:
            self.report.good_checks += 1
            self.report.good_checks_passed += ok
        return ok

    def _stored(self, item: FuzzInput) -> str | None:
        """None if ``item`` is in the store with a readable spool file; else what is wrong."""
        store = Store(self.settings.database_url)
        try:
            uid = item.sop_instance_uid or item.affected_uid
            with store.read() as session:
                row = session.scalars(
                    select(Instance).where(Instance.sop_instance_uid == uid)
                ).first()
                if row is None:
                    return "acknowledged but no row in the store"
                path, state = self.settings.spool_dir / row.path, row.state
        finally:
            store.dispose()
        if not path.is_file():
            return "acknowledged but no spool file"
        try:
            ds = pydicom.dcmread(path)
            for elem in ds:  # every value converts (the file is a readable dataset)
                _ = elem.value
        except Exception as exc:  # noqa: BLE001 -- any failure is the finding
            return f"acknowledged but the stored file does not read ({type(exc).__name__})"
        stored = ds.file_meta.TransferSyntaxUID
        if str(stored) != item.transfer_syntax:
            return f"stored as {stored}, sent as {item.transfer_syntax}"
        if state == "queued":  # eligible: a worker will decode it
            problem, undecodable = _decodes(ds)
            if undecodable:
                with self._lock:
                    self.report.payload_undecodable[item.kind] += 1
            return problem
        return None

    def verify_accepted(self) -> None:
        """Every acknowledged input must be in the store, readable, and decodable if queued."""
        with self._lock:
            accepted, self._accepted = self._accepted, []
        for item in accepted:
            wrong = self._stored(item)
            if wrong is not None:
                self._problem(item, wrong)
            else:
                with self._lock:
                    self.report.accepted_verified += 1

    # -- the run -------------------------------------------------------------------------

    def run(self, n: int) -> FuzzReport:
        started = time.monotonic()
        self.report.start_rss_mb = rss_mb(self.pid)
        sampler = _RssSampler(self.pid)
        sampler.start()
        check_rng = random.Random(f"{self.mutator.seed}:good")
        self.good_instance_check(check_rng)
        threads = [
            threading.Thread(target=self._sender, args=(n, w), daemon=True)
            for w in range(self.associations)
        ]
        for t in threads:
            t.start()
        next_check = self.check_every
        last_progress = shown = 0
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            done = self.report.inputs
            if done >= next_check and not self._stop.is_set():
                next_check += self.check_every
                self.good_instance_check(check_rng)
                self.verify_accepted()
            if done - last_progress >= 1000:
                last_progress = done
                self.progress(
                    f"{done} inputs, peak RSS {sampler.peak:.0f} MB, "
                    f"{len(self.report.problems)} problems"
                )
                for problem in self.report.problems[shown:]:
                    self.progress(f"  {problem}")
                shown = len(self.report.problems)
            if sampler.peak > self.max_rss_mb and not any("RSS" in p for p in self.report.problems):
                self._problem(None, f"node RSS {sampler.peak:.0f} MB above {self.max_rss_mb} MB")
        for t in threads:
            t.join()
        if self.alive():
            self.good_instance_check(check_rng)
        self.verify_accepted()
        if not self.alive() and self.report.crashes == 0:
            self.report.crashes += 1
            self._problem(None, "node process died")
        sampler.stop.set()
        sampler.join()
        self.report.peak_rss_mb = sampler.peak
        self.report.peak_threads = sampler.peak_threads
        self.report.end_rss_mb = rss_mb(self.pid)
        if self.report.peak_rss_mb > self.max_rss_mb and not any(
            "RSS" in p for p in self.report.problems
        ):
            self._problem(
                None, f"node RSS {self.report.peak_rss_mb:.0f} MB above {self.max_rss_mb} MB"
            )
        self.report.seconds = time.monotonic() - started
        return self.report


# What pydicom says when a codec fails on the compressed bytes themselves.
_CODEC_FAILURE = "exceptions were raised by all available plugins"


def _decodes(ds: pydicom.Dataset) -> tuple[str | None, bool]:
    """(problem, payload_undecodable) for an instance acknowledged as eligible.

    A header the image cannot be decoded with is a problem: the receiver checks
    headers. Entropy-coded bytes that a codec rejects are not: only decoding finds
    them, which the worker does (and marks the instance failed).
    """
    from triage_node.score.decode import decode_radiograph

    try:
        declared = int(ds.Rows) * int(ds.Columns) * int(ds.get("BitsAllocated", 16)) // 8
    except (TypeError, ValueError, AttributeError) as exc:
        return f"acknowledged as eligible, pixel module unreadable ({type(exc).__name__})", False
    if declared > 64 << 20:  # every fuzz input comes from a sample of 640 columns
        return (
            f"acknowledged as eligible with a {declared >> 20} MB frame "
            f"({ds.Rows} x {ds.Columns}) from a {len(ds.PixelData) >> 10} KB stream"
        ), False
    try:
        image = decode_radiograph(ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 -- pylibjpeg-rle panics are BaseExceptions
        text = f"{type(exc).__name__}: {exc}"
        if _CODEC_FAILURE in text or type(exc).__name__ == "PanicException":
            return None, True
        return f"acknowledged as eligible but does not decode ({text[:200]})", False
    if image.pixels.shape != (ds.Rows, ds.Columns):
        return f"decodes to {image.pixels.shape}, header says {ds.Rows} x {ds.Columns}", False
    return None, False


def send_input(host: str, port: int, item: FuzzInput, scratch: Path, timeout: float = 30.0) -> str:
    """Send one dataset input on its own association; its answer's category."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        path = scratch / f"one-{item.index}.dcm"
        path.write_bytes(
            file_meta_bytes(item.sop_class, item.affected_uid, item.transfer_syntax) + item.payload
        )
        assoc = _requestor(timeout).associate(host, port, ae_title=CALLED_AE)
        if not assoc.is_established:
            return "association abort" if assoc.is_aborted else "association reject"
        try:
            rsp = assoc.send_c_store(path)
            if "Status" in rsp:
                return classify_status(int(rsp.Status))
            return "abort" if assoc.is_aborted else "timeout"
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def fuzz_node_config(data_dir: Path, port: int) -> dict[str, object]:
    """The node config a fuzz run uses: tests' base config, short timeouts, our AE a peer."""
    from tests.peers import base_config

    cfg = base_config(
        data_dir,
        port,
        # 64 MB per instance keeps bomb checks cheap; timeouts short so stalled
        # connections end within a run.
        receive={
            "max_instance_mb": 64,
            "acse_timeout": 10,
            "dimse_timeout": 20,
            "network_timeout": 10,
            "max_associations": 16,
        },
        logging={"format": "json", "level": "WARNING"},
    )
    cfg["peers"] = [*cfg["peers"], {"ae_title": CALLING_AE, "host": "127.0.0.1"}]
    return cfg


def run_fuzz(
    node_host: str,
    node_port: int,
    node_pid: int,
    config_path: Path,
    *,
    n: int,
    seed: int,
    associations: int = 2,
    per_association: int = 250,
    timeout: float = 30.0,
    max_rss_mb: float = 512.0,
    check_every: int = 250,
    bomb_mb: int = 1024,
    alive: Callable[[], bool] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Send ``n`` seeded inputs to the node listening at ``node_host:node_port``."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send our bytes as they are
    validation = pydicom.config.settings.reading_validation_mode
    # Checking stored files converts every value: no warnings about mutated ones.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with tempfile.TemporaryDirectory(prefix="fuzz-") as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            driver = FuzzDriver(
                node_host,
                node_port,
                node_pid,
                config_path,
                Mutator(load_seeds(), seed, bomb_mb=bomb_mb),
                Path(scratch),
                associations=associations,
                per_association=per_association,
                timeout=timeout,
                max_rss_mb=max_rss_mb,
                check_every=check_every,
                alive=alive,
                progress=progress,
            )
            return driver.run(n)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        pydicom.config.settings.reading_validation_mode = validation
