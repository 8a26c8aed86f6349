"""The model bundle's file format: writing, verifying and reading bundles (no pickles).

A bundle is a directory of weight files and the ``manifest.json`` that lists
their sha256 (:mod:`triage_node.score.manifest`). This module knows files and
hashes only; building a model from a bundle is :mod:`triage_node.score.loader`'s
job, so reading a manifest (``status``) needs neither torch nor pyradiomics.

Loading reads each listed file's bytes once, checks their sha256 against the
manifest and parses *those same bytes* (JSON, safetensors, or NPZ with
``allow_pickle=False``), so a file cannot change between check and use and no
code path ever unpickles. Files in the directory that the manifest does not
list are never opened.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from triage_node import durable
from triage_node.assessment import ModelUnavailable
from triage_node.config import Settings
from triage_node.score.manifest import MANIFEST_NAME, BundleManifest

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Where the shipped demo bundle lives (built from the synthetic cohort).
DEMO_BUNDLE_DIR = Path(__file__).resolve().parent / "demo_bundle"


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest and the verified bytes of every listed file."""

    path: Path
    manifest: BundleManifest
    _contents: Mapping[str, bytes]

    def has(self, file_name: str) -> bool:
        """Whether the manifest lists ``file_name``."""
        return file_name in self._contents

    def raw(self, file_name: str) -> bytes:
        """The verified bytes of a listed file; ``ModelUnavailable`` if not listed."""
        try:
            return self._contents[file_name]
        except KeyError:
            raise ModelUnavailable(
                f"bundle {self.path}: {file_name} is not listed in {MANIFEST_NAME}"
            ) from None

    def read_json(self, file_name: str) -> Any:
        """Parse a listed ``.json`` file."""
        try:
            return json.loads(self.raw(file_name).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelUnavailable(
                f"bundle file {self.path / file_name}: bad JSON: {exc}"
            ) from None

    def read_arrays(self, file_name: str) -> dict[str, np.ndarray]:
        """Load a listed ``.npz`` file without pickle (object arrays are refused)."""
        try:
            with np.load(io.BytesIO(self.raw(file_name)), allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except ValueError as exc:
            raise ModelUnavailable(f"bundle file {self.path / file_name}: {exc}") from None

    def read_tensors(self, file_name: str) -> dict[str, torch.Tensor]:
        """Load a listed ``.safetensors`` file into CPU tensors."""
        # lazy: safetensors.torch imports torch; `status` reads bundles through this module
        from safetensors.torch import load

        try:
            return load(self.raw(file_name))
        except SafetensorError as exc:
            raise ModelUnavailable(f"bundle file {self.path / file_name}: {exc}") from None


def write_bundle(directory: Path, manifest: BundleManifest, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` and a manifest listing their sha256 into ``directory`` (created).

    ``manifest.files`` is replaced by the hashes of ``files``. Every file is
    written with :mod:`triage_node.durable` (atomic and fsynced) and the
    manifest last, after removing an old one, so a crashed write leaves a
    bundle that does not load. Returns the directory.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    hashes = {name: sha256_hex(data) for name, data in files.items()}
    final = BundleManifest.from_json({**manifest.to_json(), "files": hashes})
    for name, data in files.items():
        durable.write_bytes(directory / name, data)
    durable.write_text(directory / MANIFEST_NAME, final.dumps())
    return directory


def read_manifest(path: Path) -> BundleManifest:
    """Read and validate ``path/manifest.json`` (hashes not checked)."""
    manifest_path = path / MANIFEST_NAME
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelUnavailable(
            f"bundle {path}: missing {MANIFEST_NAME} ({manifest_path})"
        ) from None
    except OSError as exc:
        raise ModelUnavailable(f"bundle {path}: cannot read {manifest_path}: {exc}") from None
    try:
        return BundleManifest.from_json(json.loads(text))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise ModelUnavailable(f"bundle manifest {manifest_path}: {exc}") from None


def load_bundle(path: Path | str) -> Bundle:
    """Read a bundle directory and verify the sha256 of every listed file.

    Raises :class:`ModelUnavailable` naming the file when the directory or
    manifest is missing, a listed file is missing, or a hash does not match.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelUnavailable(f"bundle {path}: not a directory")
    manifest = read_manifest(path)
    contents: dict[str, bytes] = {}
    for file_name, expected in sorted(manifest.files.items()):
        file_path = path / file_name
        try:
            data = file_path.read_bytes()
        except FileNotFoundError:
            raise ModelUnavailable(
                f"bundle file {file_path}: missing (listed in manifest)"
            ) from None
        except OSError as exc:
            raise ModelUnavailable(f"bundle file {file_path}: cannot read: {exc}") from None
        actual = sha256_hex(data)
        if actual != expected:
            raise ModelUnavailable(
                f"bundle file {file_path}: sha256 {actual} does not match the manifest "
                f"({expected}); the bundle was changed or is corrupt"
            )
        contents[file_name] = data
    unlisted = sorted(
        p.name
        for p in path.iterdir()
        if p.name != MANIFEST_NAME and p.name not in manifest.files and not p.name.startswith(".")
    )
    if unlisted:
        log.warning("bundle %s: ignoring files not listed in the manifest: %s", path, unlisted)
    return Bundle(path=path, manifest=manifest, _contents=contents)


def bundle_path(settings: Settings) -> Path:
    """The configured bundle directory; ``""`` or ``"demo"`` means the shipped demo bundle."""
    configured = settings.model.bundle
    if configured in ("", "demo"):
        return DEMO_BUNDLE_DIR
    return Path(configured).expanduser()


def open_configured(settings: Settings) -> Bundle:
    """The configured bundle, verified by :func:`load_bundle` (``ModelUnavailable`` if not)."""
    path = bundle_path(settings)
    if path == DEMO_BUNDLE_DIR and not (path / MANIFEST_NAME).exists():
        raise ModelUnavailable(f"demo bundle not built yet: {path}")
    return load_bundle(path)


def describe_bundle(settings: Settings) -> dict[str, Any]:
    """Name, version, synthetic flag, variant, threshold and path of the configured bundle.

    Verifies the hashes but builds no model. Raises :class:`ModelUnavailable`.
    """
    bundle = open_configured(settings)
    m = bundle.manifest
    threshold = settings.model.threshold
    return {
        "path": str(bundle.path),
        "name": m.name,
        "version": m.version,
        "created": m.created,
        "variant": m.variant,
        "synthetic": m.synthetic,
        "intended_use": m.intended_use,
        "threshold": threshold if threshold is not None else m.operating_point.threshold,
        "selected_features": len(m.selected_features),
    }
