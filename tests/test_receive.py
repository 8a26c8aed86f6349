"""The receiver against real dcmtk peers over loopback: policy, transfer syntaxes, statuses.

The node runs as `triage-node receive` (a subprocess, no workers, so eligible
instances stay `queued`); tests read its database to check what it kept.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config, dimse_messages
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket
from sqlalchemy import select

from tests.dicom_files import PHI_BIRTH_DATE, PHI_ID, PHI_NAME, make_radiograph
from tests.peers import (
    NodeProcess,
    echoscu,
    free_port,
    need_tool,
    node_running,
    storescu,
    wait_for,
)
from triage_node import identity
from triage_node.config import NodeSection, Settings, load_settings
from triage_node.receive import pynetdicom_patches, start_receiver
from triage_node.store import Event, Instance, Job, Store

PEERS = [
    {"ae_title": "STORESCU", "host": "127.0.0.1"},
    {"ae_title": "ECHOSCU", "host": "127.0.0.1"},
    {"ae_title": "PYSCU", "host": "127.0.0.1"},
    {"ae_title": "ELSEWHERE", "host": "127.0.0.2"},
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One receiver for the module (`triage-node receive`, fsync on)."""
    tmp = tmp_path_factory.mktemp("receive")
    with node_running(tmp, command="receive", peers=PEERS) as running:
        yield running


def open_node_store(node: NodeProcess) -> Store:
    return Store(load_settings(node.config_path).database_url)


def _query(node: NodeProcess, query: Any) -> list[Any]:
    store = open_node_store(node)
    try:
        with store.read() as s:
            found = list(s.scalars(query))
            s.expunge_all()  # keep the loaded values after the read transaction ends
            return found
    finally:
        store.dispose()


def rows(node: NodeProcess, sop_uid: str) -> list[Instance]:
    return _query(node, select(Instance).where(Instance.sop_instance_uid == sop_uid))


def events(node: NodeProcess, kind: str) -> list[Event]:
    return _query(node, select(Event).where(Event.kind == kind).order_by(Event.id))


def score_jobs(node: NodeProcess, instance_id: int) -> list[Job]:
    return _query(node, select(Job).where(Job.instance_id == instance_id))


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def send_with_pynetdicom(port: int, item: Dataset | Path, sop_class: str) -> int:
    """C-STORE one dataset (or a file's raw bytes) as PYSCU; returns the status code."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(item)
        return int(rsp.Status)
    finally:
        assoc.release()


# --- 1. association policy -----------------------------------------------------------------


def test_echo_from_peer_accepted_and_strangers_rejected(node: NodeProcess) -> None:
    ok = echoscu(node.port)
    assert ok.returncode == 0, ok.stderr
    assert "Received Echo Response (Success)" in ok.stdout + ok.stderr

    unknown = echoscu(node.port, calling="NOBODY")
    assert unknown.returncode != 0
    assert "Calling AE Title Not Recognized" in unknown.stdout + unknown.stderr

    wrong_called = echoscu(node.port, called="SOMEONEELSE")
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr

    # ELSEWHERE is a peer, but only from 127.0.0.2; we connect from 127.0.0.1.
    wrong_host = echoscu(node.port, calling="ELSEWHERE")
    assert wrong_host.returncode != 0
    assert "Calling AE Title Not Recognized" in wrong_host.stdout + wrong_host.stderr

    # The peer has its answer before the node commits the audit event: poll for the three.
    def rejections() -> list[str] | None:
        rejected = [e.message or "" for e in events(node, "association_rejected")]
        wanted = (
            any("NOBODY" in m for m in rejected),
            any("SOMEONEELSE" in m for m in rejected),
            any("127.0.0.2" in m and "127.0.0.1" in m for m in rejected),
        )
        return rejected if all(wanted) else None

    wait_for(rejections, "an association_rejected event for each of the three refusals", 30)
    accepted = events(node, "association_accepted")
    assert any((e.data or {}).get("calling_ae") == "ECHOSCU" for e in accepted)


# --- 2. transfer syntaxes --------------------------------------------------------------


def _dcmtk(tool: str, *args: str | Path) -> None:
    proc = subprocess.run(
        [need_tool(tool), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{tool} {args}: {proc.stderr}"


def _encoded_set(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray, bool]]:
    """One small DX file per transfer syntax: {ts: (file, original pixels, lossless)}."""
    out: dict[str, tuple[Path, np.ndarray, bool]] = {}

    def base(name: str, bits: int) -> tuple[Path, np.ndarray]:
        ds = make_radiograph("HIP", rows=96, columns=80, seed=len(out))
        arr = ds.pixel_array.astype(np.uint16)
        if bits == 8:
            arr = (arr >> 4).astype(np.uint8)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = arr.tobytes()
        return save(ds, tmp_path / f"{name}-src.dcm"), arr

    def add(ts: str, name: str, bits: int, lossless: bool, tool: str | None, *opts: str) -> None:
        src, arr = base(name, bits)
        dst = tmp_path / f"{name}.dcm"
        if tool is None:
            src.rename(dst)
        else:
            _dcmtk(tool, *opts, src, dst)
        out[ts] = (dst, arr, lossless)

    add(ExplicitVRLittleEndian, "explicit", 16, True, None)
    add(ImplicitVRLittleEndian, "implicit", 16, True, "dcmconv", "+ti")
    add(DeflatedExplicitVRLittleEndian, "deflate", 16, True, "dcmconv", "+td")
    add(RLELossless, "rle", 16, True, "dcmcrle")
    add(JPEGBaseline8Bit, "jpeg-baseline", 8, False, "dcmcjpeg", "+eb")
    add(JPEGExtended12Bit, "jpeg-extended", 16, False, "dcmcjpeg", "+ee")
    add(JPEGLossless, "jpeg-lossless", 16, True, "dcmcjpeg", "+el")
    add(JPEGLosslessSV1, "jpeg-lossless-sv1", 16, True, "dcmcjpeg", "+e1")
    add(JPEGLSLossless, "jpegls", 16, True, "dcmcjpls", "+el")
    add(JPEGLSNearLossless, "jpegls-near", 16, False, "dcmcjpls", "+en")
    for ts, name, lossless in ((JPEG2000Lossless, "j2k-lossless", True), (JPEG2000, "j2k", False)):
        src, arr = base(name, 16)
        ds = pydicom.dcmread(src)
        if lossless:
            ds.compress(ts)
        else:
            ds.compress(ts, j2k_cr=[10])
        out[ts] = (save(ds, tmp_path / f"{name}.dcm"), arr, lossless)
    return out


# storescu's option that proposes each transfer syntax (its -R alone proposes only the
# uncompressed ones for files it believes it can decompress).
STORESCU_PROPOSE = {
    ExplicitVRLittleEndian: "-xe",
    ImplicitVRLittleEndian: "-xi",
    DeflatedExplicitVRLittleEndian: "-xd",
    RLELossless: "-xr",
    JPEGBaseline8Bit: "-xy",
    JPEGExtended12Bit: "-xx",
    JPEGLossless: "",  # no option for process 14: sent with dcmsend instead
    JPEGLosslessSV1: "-xs",
    JPEGLSLossless: "-xt",
    JPEGLSNearLossless: "-xu",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
}


def test_every_transfer_syntax_is_stored_as_received(node: NodeProcess, tmp_path: Path) -> None:
    files = _encoded_set(tmp_path)
    for ts, (path, _, _) in files.items():
        assert (
            str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts
        ), path.name
    for ts, (path, _, _) in files.items():
        # One association a file, proposing the file's own transfer syntax.
        if STORESCU_PROPOSE[ts]:
            proc = storescu(node.port, path, extra=("-R", STORESCU_PROPOSE[ts]))
        else:
            proc = subprocess.run(
                [
                    need_tool("dcmsend"),
                    "-v",
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "TRIAGE",
                    "--decompress-never",
                    "127.0.0.1",
                    str(node.port),
                    str(path),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    spool = load_settings(node.config_path).spool_dir
    for ts, (path, original, lossless) in files.items():
        sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        [row] = rows(node, sop_uid)
        assert row.transfer_syntax_uid == ts, path.name
        assert row.state == "queued" and row.reason is None, (path.name, row.reason)
        assert len(score_jobs(node, row.id)) == 1
        stored = pydicom.dcmread(spool / row.path)
        assert stored.file_meta.TransferSyntaxUID == ts
        assert row.size_bytes == (spool / row.path).stat().st_size
        pixels = stored.pixel_array
        assert pixels.shape == original.shape, path.name
        if lossless:
            np.testing.assert_array_equal(pixels, original, err_msg=path.name)


def test_large_compressed_instances_are_stored(node: NodeProcess, tmp_path: Path) -> None:
    """Compressed Pixel Data over the receiver's read-ahead (1 MiB) is deferred with its
    undefined length; a full-size compressed radiograph must still be accepted whole."""
    src = make_radiograph("HIP", rows=1400, columns=1200, seed=77)
    rng = np.random.default_rng(77)  # texture that does not compress away
    arr = src.pixel_array.astype(np.uint16) + rng.integers(0, 512, (1400, 1200), np.uint16)
    arr = np.minimum(arr, 2**src.BitsStored - 1).astype(np.uint16)
    src.PixelData = arr.tobytes()
    plain = save(src, tmp_path / "large-src.dcm")
    files = []
    for tool, opt, name in (("dcmcrle", None, "rle"), ("dcmcjpeg", "+el", "jpeg-lossless")):
        dst = tmp_path / f"large-{name}.dcm"
        _dcmtk(tool, *([opt] if opt else []), plain, dst)
        ds = pydicom.dcmread(dst)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        files.append(save(ds, dst))
    j2k = pydicom.dcmread(plain)
    j2k.SOPInstanceUID = pydicom.uid.generate_uid()
    j2k.compress(JPEG2000Lossless)
    files.append(save(j2k, tmp_path / "large-j2k.dcm"))
    for path in files:
        assert path.stat().st_size > 1.5 * 2**20, (path.name, path.stat().st_size)
    proc = subprocess.run(
        [
            need_tool("dcmsend"),
            "-v",
            "-aet",
            "STORESCU",
            "-aec",
            "TRIAGE",
            "--decompress-never",
            "127.0.0.1",
            str(node.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spool = load_settings(node.config_path).spool_dir
    for path in files:
        [row] = rows(node, pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert row.state == "queued", (path.name, row.state, row.reason)
        np.testing.assert_array_equal(
            pydicom.dcmread(spool / row.path).pixel_array, arr, err_msg=path.name
        )


# --- 3. duplicates -----------------------------------------------------------------------


def test_duplicate_instance_acknowledged_once_stored(node: NodeProcess, tmp_path: Path) -> None:
    path = save(make_radiograph("HIP", seed=3), tmp_path / "dup.dcm")
    sop_uid = pydicom.dcmread(path).SOPInstanceUID
    for _ in range(2):
        proc = storescu(node.port, path)
        assert proc.returncode == 0
        assert "Received Store Response (Success)" in proc.stdout + proc.stderr
    [row] = rows(node, sop_uid)
    assert len(score_jobs(node, row.id)) == 1
    assert any(e.sop_instance_uid == sop_uid for e in events(node, "duplicate"))


def test_same_instances_from_two_associations_at_once(node: NodeProcess, tmp_path: Path) -> None:
    paths = [save(make_radiograph("PELVIS", seed=10 + i), tmp_path / f"c{i}.dcm") for i in range(6)]
    results: list[subprocess.CompletedProcess[str]] = []

    def send() -> None:
        results.append(storescu(node.port, *paths))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sum((r.stdout + r.stderr).count("(Success)") for r in results) == 12
    spool = load_settings(node.config_path).spool_dir
    for path in paths:
        [row] = rows(node, pydicom.dcmread(path).SOPInstanceUID)
        assert len(score_jobs(node, row.id)) == 1
        assert pydicom.dcmread(spool / row.path).SOPInstanceUID == row.sop_instance_uid
        # Exactly one spool file of the instance is left.
        assert len(list((spool / row.path).parent.glob(f"{row.sop_instance_uid}*"))) == 1


# --- 4. out of resources -------------------------------------------------------------------


def test_disk_watermark_refuses_with_out_of_resources(tmp_path: Path) -> None:
    with node_running(
        tmp_path, command="receive", peers=PEERS, receive={"min_free_disk_mb": 10**9}
    ) as full:
        ds = make_radiograph("HIP", seed=4)
        assert send_with_pynetdicom(full.port, ds, ds.SOPClassUID) == 0xA700
        proc = storescu(full.port, save(ds, tmp_path / "w.dcm"))
        assert "Refused: OutOfResources" in proc.stdout + proc.stderr
        assert rows(full, ds.SOPInstanceUID) == []
        spool = load_settings(full.config_path).spool_dir
        assert [p for p in spool.rglob("*") if p.is_file()] == []
        assert any("min_free_disk_mb" in (e.message or "") for e in events(full, "store_refused"))


# --- 5. broken datasets ----------------------------------------------------------------------


def _garbage_file(path: Path, sop_class: str) -> Path:
    """Valid file meta followed by bytes that are not a dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    with path.open("ab") as f:
        f.write(b"\x08\x00\x18\x00UI\xff\x00" + os.urandom(4000))
    return path


def test_broken_datasets_fail_and_the_next_store_succeeds(
    node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = make_radiograph("HIP", seed=5)
    sop_class = good.SOPClassUID

    # Native Pixel Data shorter than Rows x Columns x 2 bytes.
    short = make_radiograph("HIP", seed=6)
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    assert send_with_pynetdicom(node.port, short, sop_class) >> 8 == 0xC2
    # Required UIDs missing.
    no_study = make_radiograph("HIP", seed=7)
    del no_study.StudyInstanceUID
    assert send_with_pynetdicom(node.port, no_study, sop_class) == 0xC210
    # Dataset of another SOP class than the presentation context (CR inside a DX context).
    mismatch = make_radiograph("HIP", seed=8, modality="CR")
    mismatch_path = save(mismatch, tmp_path / "mismatch.dcm")
    mismatch_path_ds = pydicom.dcmread(mismatch_path)
    mismatch_path_ds.file_meta.MediaStorageSOPClassUID = sop_class
    mismatch_path_ds.save_as(mismatch_path)
    # Raw bytes as in the file (no re-encoding by the sender): garbage, truncated, mismatch.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    garbage = _garbage_file(tmp_path / "garbage.dcm", sop_class)
    assert send_with_pynetdicom(node.port, garbage, sop_class) >> 12 == 0xC
    # Small (Pixel Data read) and large (Pixel Data length checked without reading it).
    for rows_, columns in ((128, 128), (1024, 768)):
        full = save(
            make_radiograph("HIP", seed=9, rows=rows_, columns=columns), tmp_path / "full.dcm"
        )
        truncated = tmp_path / "truncated.dcm"
        truncated.write_bytes(full.read_bytes()[:-5000])
        assert send_with_pynetdicom(node.port, truncated, sop_class) >> 12 == 0xC
        assert rows(node, pydicom.dcmread(full).SOPInstanceUID) == []
    assert send_with_pynetdicom(node.port, mismatch_path, sop_class) == 0xA900
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)

    # dcmtk's storescu with a truncated file: whatever it sends is not acknowledged.
    proc = storescu(node.port, truncated)
    assert "Received Store Response (Success)" not in proc.stdout + proc.stderr
    assert rows(node, pydicom.dcmread(full).SOPInstanceUID) == []

    # The receiver is still serving, and the next good instance is stored.
    proc = storescu(node.port, save(good, tmp_path / "good.dcm"))
    assert "Received Store Response (Success)" in proc.stdout + proc.stderr
    [row] = rows(node, good.SOPInstanceUID)
    assert row.state == "queued"
    for uid in (short.SOPInstanceUID, mismatch.SOPInstanceUID):
        assert rows(node, uid) == []
    refusals = {e.sop_instance_uid: e for e in events(node, "store_refused")}
    assert "Pixel Data" in (refusals[short.SOPInstanceUID].message or "")
    assert (refusals[mismatch.SOPInstanceUID].data or {})["status"] == "0xA900"
    assert len(list((load_settings(node.config_path).spool_dir / ".incoming").iterdir())) == 0


# --- 6. eligibility ------------------------------------------------------------------------


def _own_sr() -> Dataset:
    """An SR-like object carrying our device signature, as a misrouted result would."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.Manufacturer = identity.MANUFACTURER
    ds.ManufacturerModelName = identity.MANUFACTURER_MODEL_NAME
    ds.SeriesDescription = identity.SR_SERIES_DESCRIPTION
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def test_not_eligible_instances_are_stored_as_skipped(node: NodeProcess, tmp_path: Path) -> None:
    chest = make_radiograph("CHEST", seed=11)
    lateral = make_radiograph("HIP", seed=12)
    lateral.ViewPosition = "LL"
    pelvis_cr = make_radiograph("PELVIS", seed=13, modality="CR")
    pelvis_cr.Manufacturer = "Acme Imaging"
    pelvis_cr.ManufacturerModelName = "CR " + "9" * 70  # longer than LO: kept cut to 64
    sr = _own_sr()
    paths = [
        save(ds, tmp_path / f"e{i}.dcm") for i, ds in enumerate((chest, lateral, pelvis_cr, sr))
    ]
    proc = storescu(node.port, *paths, extra=("-R",))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    [chest_row] = rows(node, chest.SOPInstanceUID)
    assert chest_row.state == "skipped"
    assert "body part CHEST" in (chest_row.reason or "")
    [lateral_row] = rows(node, lateral.SOPInstanceUID)
    assert lateral_row.state == "skipped" and "view position LL" in (lateral_row.reason or "")
    [sr_row] = rows(node, sr.SOPInstanceUID)
    assert sr_row.state == "skipped" and sr_row.own_result
    assert sr_row.reason == "own result object (loop prevention)"
    for row in (chest_row, lateral_row, sr_row):
        assert score_jobs(node, row.id) == []
    [cr_row] = rows(node, pelvis_cr.SOPInstanceUID)
    assert cr_row.state == "queued" and cr_row.modality == "CR"
    # The scanner is recorded for the drift watch (an image without one has None).
    assert (cr_row.manufacturer, cr_row.model_name) == ("Acme Imaging", ("CR " + "9" * 70)[:64])
    assert (chest_row.manufacturer, chest_row.model_name) == (None, None)
    assert [j.kind for j in score_jobs(node, cr_row.id)] == ["score"]
    skipped = {e.sop_instance_uid: e.message for e in events(node, "skipped")}
    assert "loop prevention" in (skipped[sr.SOPInstanceUID] or "")


# --- 7. no patient data in logs --------------------------------------------------------------


def test_no_patient_data_in_logs_or_events(node: NodeProcess, tmp_path: Path) -> None:
    broken = make_radiograph("HIP", seed=14)
    del broken.SeriesInstanceUID
    stored = make_radiograph("CHEST", seed=15)
    storescu(
        node.port,
        save(broken, tmp_path / "b.dcm"),
        save(stored, tmp_path / "s.dcm"),
        extra=("--no-halt",),
    )
    assert rows(node, stored.SOPInstanceUID)
    log = node.log_text()
    assert stored.SOPInstanceUID in log  # the log is the node's, and it logs UIDs
    recorded = " ".join(f"{e.message} {e.data}" for e in _query(node, select(Event)))
    recorded += " ".join(f"{i.reason}" for i in _query(node, select(Instance)))
    for phi in (PHI_NAME, PHI_ID, PHI_BIRTH_DATE, PHI_NAME.split("^")[0]):
        assert phi not in log
        assert phi not in recorded


# --- 8. pynetdicom's internals, patched in one place ------------------------------------------

# What apply() changes; monkeypatch puts each back after the test (the process is shared).
_PATCHED = [
    (_config, "STORE_RECV_CHUNKED_DATASET"),
    (_config, "LOG_REQUEST_IDENTIFIERS"),
    (dimse_messages, "NamedTemporaryFile"),
    (DIMSEServiceProvider, "receive_primitive"),
    (AssociationSocket, "recv"),
    (DULServiceProvider, "receive_pdu"),
]


def test_self_check_passes_on_the_installed_pynetdicom_before_and_after_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for owner, name in _PATCHED:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    pynetdicom_patches.self_check()
    pynetdicom_patches.apply(tmp_path)
    wrapped = [getattr(owner, name) for owner, name in _PATCHED[3:]]
    pynetdicom_patches.apply(tmp_path)  # idempotent: nothing is wrapped twice
    assert [getattr(owner, name) for owner, name in _PATCHED[3:]] == wrapped
    assert all(not hasattr(f.__wrapped__, "__wrapped__") for f in wrapped)
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    pynetdicom_patches.self_check()


@pytest.mark.parametrize(
    ("owner", "name", "qualified"),
    [
        (DULServiceProvider, "receive_pdu", "DULServiceProvider.receive_pdu"),
        (_config, "STORE_RECV_CHUNKED_DATASET", "pynetdicom._config.STORE_RECV_CHUNKED_DATASET"),
        (dimse_messages, "NamedTemporaryFile", "pynetdicom.dimse_messages.NamedTemporaryFile"),
    ],
)
def test_self_check_names_what_pynetdicom_no_longer_has(
    owner: object, name: str, qualified: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(pynetdicom_patches.PynetdicomChanged) as failed:
        pynetdicom_patches.self_check()
    message = str(failed.value)
    assert f"{qualified} is missing" in message
    assert f"pynetdicom {pynetdicom.__version__} is installed" in message
    assert f"written for {pynetdicom_patches.TESTED_VERSION}" in message


def test_self_check_names_a_changed_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    def recv(self: AssociationSocket, size: int) -> bytearray:
        return bytearray()

    monkeypatch.setattr(AssociationSocket, "recv", recv)
    with pytest.raises(pynetdicom_patches.PynetdicomChanged, match=r"AssociationSocket\.recv has"):
        pynetdicom_patches.self_check()


def test_receiver_does_not_listen_when_the_self_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(AssociationSocket, "recv")
    port = free_port()
    settings = Settings(node=NodeSection(port=port, data_dir=tmp_path / "data"))
    store = Store(f"sqlite:///{tmp_path / 'node.db'}")
    try:
        with pytest.raises(pynetdicom_patches.PynetdicomChanged, match="recv is missing"):
            start_receiver(settings, store)
    finally:
        store.dispose()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
