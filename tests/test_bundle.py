"""Model bundles: hashes verified, tampered or incomplete bundles refused, nothing unpickled."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from triage_node.assessment import ModelUnavailable
from triage_node.config import ModelSection, Settings
from triage_node.score import bundle as bundle_module
from triage_node.score.bundle import describe_bundle, load_bundle, write_bundle
from triage_node.score.loader import load_model
from triage_node.score.manifest import NOT_FOR_CLINICAL_USE, BundleManifest, OperatingPoint


def _manifest(**over: object) -> BundleManifest:
    fields: dict[str, object] = dict(
        name="DTC",
        version="0.1.0-test",
        created="2024-01-02T03:04:05Z",
        variant="DTC",
        synthetic=True,
        intended_use=NOT_FOR_CLINICAL_USE,
        training_data={"images": 10, "positives": 4, "source": "unit test"},
        feature_names=["a", "b", "c"],
        selected_features=["a", "c"],
        operating_point=OperatingPoint(0.3, 0.9, 0.92, 0.61),
        files={},
        metrics={"validation_auc": 0.8},
    )
    fields.update(over)
    return BundleManifest(**fields)  # type: ignore[arg-type]


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _write(tmp_path: Path) -> Path:
    tensors = {"conv.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4)}
    files = {
        "head.json": json.dumps({"coef": [1.0, -2.0], "intercept": 0.5}).encode(),
        "scaler.npz": _npz(mean=np.array([1.0, 2.0]), scale=np.array([3.0, 4.0])),
        "siamese.safetensors": save(tensors),
    }
    return write_bundle(tmp_path / "bundle", _manifest(), files)


class _PickleBomb:
    """Unpickling this writes a sentinel file: proof that something unpickled it."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        import pathlib

        return (pathlib.Path.write_text, (pathlib.Path(str(self.sentinel)), "exploded"))  # type: ignore[return-value]


def test_round_trip_reads_every_format(tmp_path: Path) -> None:
    path = _write(tmp_path)
    b = load_bundle(path)
    assert b.manifest.selected_features == ["a", "c"]
    assert b.read_json("head.json")["intercept"] == 0.5
    np.testing.assert_array_equal(b.read_arrays("scaler.npz")["scale"], [3.0, 4.0])
    assert torch.equal(
        b.read_tensors("siamese.safetensors")["conv.weight"],
        torch.arange(12, dtype=torch.float32).reshape(3, 4),
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"head.json", "scaler.npz", "siamese.safetensors"}
    assert manifest["created"] == "2024-01-02T03:04:05Z"
    assert NOT_FOR_CLINICAL_USE in manifest["intended_use"]


@pytest.mark.parametrize("victim", ["head.json", "scaler.npz", "siamese.safetensors"])
def test_one_changed_byte_is_refused_naming_the_file(tmp_path: Path, victim: str) -> None:
    path = _write(tmp_path)
    data = bytearray((path / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / victim).write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match=rf"{victim}.*sha256.*does not match"):
        load_bundle(path)


def test_missing_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (path / "scaler.npz").unlink()
    with pytest.raises(ModelUnavailable, match=r"scaler\.npz: missing"):
        load_bundle(path)


def test_missing_or_bad_manifest_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path)
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").unlink()
    with pytest.raises(ModelUnavailable, match=r"missing manifest\.json"):
        load_bundle(path)
    (path / "manifest.json").write_text(text.replace('"synthetic": true', '"synthetic": 1'))
    with pytest.raises(ModelUnavailable, match=r"manifest\.json.*synthetic"):
        load_bundle(path)


def test_synthetic_bundle_must_say_not_for_clinical_use() -> None:
    with pytest.raises(ValueError, match="NOT FOR CLINICAL USE"):
        _manifest(intended_use="research")


def test_manifest_may_not_list_a_pickle(tmp_path: Path) -> None:
    path = _write(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "head.pkl").write_bytes(pickle.dumps({"coef": [1.0]}))
    manifest["files"]["head.pkl"] = bundle_module.sha256_hex((path / "head.pkl").read_bytes())
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelUnavailable, match=r"head\.pkl.*never hold pickles"):
        load_bundle(path)


def test_nothing_is_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    sentinel = tmp_path / "exploded.txt"
    bomb = pickle.dumps(_PickleBomb(sentinel))
    # An unlisted pickle next to the weights, and a pickle disguised as an .npz entry.
    (path / "model.pkl").write_bytes(bomb)
    (path / "weights.pt").write_bytes(bomb)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the bundle loader unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    b = load_bundle(path)
    b.read_arrays("scaler.npz")
    b.read_tensors("siamese.safetensors")
    b.read_json("head.json")
    assert not sentinel.exists()
    monkeypatch.undo()
    pickle.loads(bomb)  # the bomb is live: unpickling it does leave the sentinel
    assert sentinel.read_text() == "exploded"


def test_object_array_in_npz_is_refused(tmp_path: Path) -> None:
    files = {"scaler.npz": _npz(mean=np.array([{"x": 1}], dtype=object))}
    path = write_bundle(tmp_path / "b", _manifest(), files)
    with pytest.raises(ModelUnavailable, match=r"scaler\.npz"):
        load_bundle(path).read_arrays("scaler.npz")


def test_describe_and_load_configured_bundle(tmp_path: Path) -> None:
    path = _write(tmp_path)
    info = describe_bundle(Settings(model=ModelSection(bundle=str(path))))
    assert info["name"] == "DTC" and info["synthetic"] is True
    assert info["threshold"] == pytest.approx(0.3)
    info = describe_bundle(Settings(model=ModelSection(bundle=str(path), threshold=0.5)))
    assert info["threshold"] == pytest.approx(0.5)
    with pytest.raises(ModelUnavailable, match="does-not-exist"):
        describe_bundle(Settings(model=ModelSection(bundle=str(tmp_path / "does-not-exist"))))


def test_demo_bundle_not_built_yet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundle_module, "DEMO_BUNDLE_DIR", tmp_path / "demo_bundle")
    for configured in ("", "demo"):
        with pytest.raises(ModelUnavailable, match="demo bundle not built yet: .*demo_bundle"):
            load_model(Settings(model=ModelSection(bundle=configured)))
