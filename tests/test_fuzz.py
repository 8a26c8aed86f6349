"""The receiver under fuzzing: a short seeded run of tests/fuzzing.py, and the bugs it found.

`triage-node receive` runs as a subprocess; inputs go over loopback. The long run
is `bench/fuzz` (10,000 inputs); this one is the same properties on 300.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from tests.fuzzing import (
    TAG_BITS_ALLOCATED,
    TAG_PIXEL_DATA,
    TAG_ROWS,
    Element,
    FuzzInput,
    Mutator,
    Seed,
    _index_of,
    _replace,
    encode_element,
    fuzz_node_config,
    load_seeds,
    pdata,
    raw_answer,
    raw_associate,
    rss_mb,
    run_fuzz,
    send_input,
)
from tests.peers import NodeProcess, free_port, write_config

# Every answer a run may see: a DIMSE status (by category) or a clean end of the
# connection. "timeout" (a hang) is never among them.
CLEAN_ENDINGS = {
    "success",
    "warning",
    "abort",
    "reject",
    "release",
    "closed",
    "associate abort",
    "associate reject",
    "associate closed",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = write_config(tmp / "node.toml", fuzz_node_config(tmp / "data", free_port()))
    running = NodeProcess(config, tmp / "node.log", command="receive").start()
    try:
        yield running
    finally:
        running.kill()


def _alive(node: NodeProcess) -> bool:
    return node.proc is not None and node.proc.poll() is None


def test_seeded_fuzz_run_keeps_the_node_serving(node: NodeProcess) -> None:
    assert node.proc is not None
    report = run_fuzz(
        "127.0.0.1",
        node.port,
        node.proc.pid,
        node.config_path,
        n=300,
        seed=7,
        associations=2,
        check_every=100,
        max_rss_mb=512,
        alive=lambda: _alive(node),
    )
    summary = report.summary()
    assert report.inputs == 300, summary
    assert report.crashes == 0 and _alive(node), summary
    assert report.hangs == 0, summary
    assert report.problems == [], summary
    assert report.peak_rss_mb < 512, summary
    # Good instances were stored before, during and after the run.
    assert report.good_checks >= 4 and report.good_checks_passed == report.good_checks, summary
    for category in report.categories:
        assert category in CLEAN_ENDINGS or category.startswith("failure 0x"), summary
    # The run exercised both outcomes and the lower layer.
    assert report.categories["success"] > 0, summary
    assert sum(n for c, n in report.categories.items() if c.startswith("failure")) > 100
    assert report.accepted_verified >= report.categories["success"] - report.by_kind.get(
        "duplicate", {}
    ).get("success", 0), summary
    assert any(kind.startswith("raw_") for kind in report.by_kind), summary


# --- regressions: inputs the fuzzer found acknowledged, or that blew the node up ----------


def _seed(transfer_syntax: str) -> Seed:
    return next(s for s in load_seeds() if s.transfer_syntax == transfer_syntax)


def _input(seed: Seed, change: object = None, index: int = 0) -> tuple[FuzzInput, list[Element]]:
    mutator = Mutator(load_seeds(), 0)
    elements, item = mutator._fresh(index, random.Random(index), seed, "regression")
    return item, elements


def _finish(item: FuzzInput, elements: list[Element]) -> FuzzInput:
    item.payload = b"".join(e.raw for e in elements)
    return item


def test_deflate_bomb_is_refused_without_inflating_it(node: NodeProcess, tmp_path: Path) -> None:
    # ~1 MB on the wire, 1 GiB of Pixel Data once inflated; the node's limit is 64 MB.
    item = Mutator(load_seeds(), 0, bomb_mb=1024)._deflate_bomb(
        1, random.Random(1), _seed(ExplicitVRLittleEndian)
    )
    assert len(item.payload) < 8 << 20
    assert node.proc is not None
    before = rss_mb(node.proc.pid)
    assert send_input("127.0.0.1", node.port, item, tmp_path) == "failure 0xC230"
    assert rss_mb(node.proc.pid) < before + 64


def test_tiny_rle_stream_claiming_a_huge_image_is_refused(
    node: NodeProcess, tmp_path: Path
) -> None:
    for index in range(6):  # 4096 or 16384 square, one or many frames
        item = Mutator(load_seeds(), 0)._rle_bomb(index, random.Random(index), _seed(RLELossless))
        assert send_input("127.0.0.1", node.port, item, tmp_path) == "failure 0xC220"


def test_rle_segments_that_do_not_fit_the_pixel_module_are_refused(
    node: NodeProcess, tmp_path: Path
) -> None:
    # 8 bits allocated for a 2-segment (16-bit) stream: pylibjpeg-rle panics decoding it.
    item, elements = _input(_seed(RLELossless))
    _replace(elements, TAG_BITS_ALLOCATED, struct.pack("<H", 8), False, b"US")
    _replace(elements, 0x00280101, struct.pack("<H", 8), False, b"US")
    _replace(elements, 0x00280102, struct.pack("<H", 7), False, b"US")
    assert send_input("127.0.0.1", node.port, _finish(item, elements), tmp_path) == "failure 0xC220"


def test_codestream_size_must_match_rows_and_columns(node: NodeProcess, tmp_path: Path) -> None:
    item, elements = _input(_seed(JPEGLSLossless))
    _replace(elements, TAG_ROWS, struct.pack("<H", 1), False, b"US")
    _replace(elements, TAG_ROWS + 1, struct.pack("<H", 1), False, b"US")
    assert send_input("127.0.0.1", node.port, _finish(item, elements), tmp_path) == "failure 0xC220"


def test_codestream_precision_must_fit_bits_allocated(node: NodeProcess, tmp_path: Path) -> None:
    # A 16-bit JPEG-LS stream in an 8-bit pixel module decodes to twice the bytes.
    item, elements = _input(_seed(JPEGLSLossless))
    for tag, value in ((TAG_BITS_ALLOCATED, 8), (0x00280101, 8), (0x00280102, 7)):
        _replace(elements, tag, struct.pack("<H", value), False, b"US")
    assert send_input("127.0.0.1", node.port, _finish(item, elements), tmp_path) == "failure 0xC220"


def test_truncated_jpeg_fragment_is_refused(node: NodeProcess, tmp_path: Path) -> None:
    # The fragment is cut and the item list closed properly: only the EOI marker is missing.
    item, elements = _input(_seed(JPEGLosslessSV1))
    i = _index_of(elements, TAG_PIXEL_DATA)
    assert i is not None
    value = elements[i].value
    offset_table_end = 8 + struct.unpack_from("<I", value, 4)[0]
    fragment = value[offset_table_end + 8 : -8][:50000]
    value = (
        value[:offset_table_end]
        + b"\xfe\xff\x00\xe0"
        + struct.pack("<I", len(fragment))
        + fragment
        + b"\xfe\xff\xdd\xe0\0\0\0\0"
    )
    elements[i] = Element(TAG_PIXEL_DATA, elements[i].vr, elements[i].header, value)
    assert send_input("127.0.0.1", node.port, _finish(item, elements), tmp_path) == "failure 0xC220"


@pytest.mark.parametrize(
    "tag, vr, value, status",
    [
        (0x00281050, b"DS", b"819\xec.5", "failure 0xC000"),  # Window Center not a number
        (0x00280103, b"US", b"\x00\x00\x00", "failure 0xC000"),  # a US of three bytes
        (TAG_BITS_ALLOCATED, b"US", struct.pack("<H", 7), "failure 0xC220"),
        (0x00280101, b"US", struct.pack("<H", 17), "failure 0xC220"),  # Bits Stored > Allocated
        (0x00281050, b"LO", b"2047.5", "failure 0xC000"),  # a number sent as text (wrong VR)
    ],
)
def test_values_that_do_not_decode_are_refused(
    node: NodeProcess, tmp_path: Path, tag: int, vr: bytes, value: bytes, status: str
) -> None:
    item, elements = _input(_seed(JPEGLSLossless))
    i = _index_of(elements, tag)
    assert i is not None
    elements[i] = encode_element(tag, vr, value)
    assert send_input("127.0.0.1", node.port, _finish(item, elements), tmp_path) == status


def test_the_unmutated_seeds_are_still_stored(node: NodeProcess, tmp_path: Path) -> None:
    # The checks above must not refuse what the samples are: every seed, fresh UIDs.
    for index, seed in enumerate(load_seeds()):
        item, elements = _input(seed, index=100 + index)
        item = Mutator(load_seeds(), 0)._finish(item, elements, seed)
        assert send_input("127.0.0.1", node.port, item, tmp_path) == "success", seed.name


def test_undecodable_command_set_is_answered_with_an_abort(node: NodeProcess) -> None:
    # A P-DATA-TF whose command set has no Command Field: pynetdicom's network thread
    # used to die on it, dropping the connection without A-ABORT.
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
            assert raw_associate(sock, 30) == "accept"
            sock.sendall(pdata([(1, 0x03, b"")]))
            assert raw_answer(sock, 30) == "abort"
    assert "Exception in thread" not in node.log_text()


def test_pdu_longer_than_our_maximum_is_aborted_unread(node: NodeProcess) -> None:
    # The node's maximum PDU size is 4 MiB; this P-DATA-TF claims 48 MiB and sends them.
    assert node.proc is not None
    before = rss_mb(node.proc.pid)
    size = 48 << 20
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
        assert raw_associate(sock, 30) == "accept"
        try:
            sock.sendall(struct.pack(">BBI", 0x04, 0, size) + struct.pack(">IBB", size - 4, 1, 0))
            for _ in range(48):
                sock.sendall(bytes(1 << 20))
        except OSError:  # the node stopped reading and closed: expected
            pass
        assert raw_answer(sock, 30) in ("abort", "closed")
    assert rss_mb(node.proc.pid) < before + 32


def test_connections_that_never_associate_free_their_slot(node: NodeProcess) -> None:
    # More garbage connections than receive.max_associations (16), each answered and
    # closed. Their slots used to stay taken for acse_timeout (10 s here) each.
    for _ in range(24):
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
            sock.sendall(b"\x01\x00\x00\x00\x00\x02\xff\xff")
            sock.shutdown(socket.SHUT_WR)
            assert raw_answer(sock, 30) in ("abort", "closed")
    deadline = time.monotonic() + 5  # well inside acse_timeout
    while True:
        with socket.create_connection(("127.0.0.1", node.port), timeout=30) as sock:
            answer = raw_associate(sock, 30)
        if answer == "accept" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert answer == "accept"
