"""A package pinned in a lock file, fetched from npm with ``npm pack`` and verified.

A lock file (JSON) names the ``package``, its exact ``version`` and the sha512
``integrity`` the npm registry publishes for its tarball. :func:`unpack_pinned`
downloads that tarball into a scratch directory, refuses it unless its sha512 and its
``package.json`` match the lock, and returns the unpacked ``package/`` directory.
The test assets built on it (tests/viewer/ohif.py: the OHIF build; tests/web/axe.py:
axe-core) keep what they need in a cache outside the repository, with a marker
holding the integrity they were made from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

MARKER = ".triage-node-integrity"


def read_lock(path: Path) -> dict[str, str]:
    """The pinned package: ``package``, ``version`` and ``integrity`` (sha512-BASE64)."""
    data: dict[str, Any] = json.loads(path.read_text())
    return {k: str(data[k]) for k in ("package", "version", "integrity")}


def cache_dir(pinned: dict[str, str], env_var: str, name: str) -> Path:
    """``$env_var`` if set, else ``~/.cache/triage-node-tests/<name>-<version>``."""
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    return Path.home() / ".cache" / "triage-node-tests" / f"{name}-{pinned['version']}"


def integrity_of(tarball: Path) -> str:
    """npm's ``dist.integrity`` form of a file: ``sha512-`` + base64 of its SHA-512."""
    digest = hashlib.sha512()
    with open(tarball, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def is_current(where: Path, pinned: dict[str, str]) -> bool:
    """Whether ``where`` was made from the pinned tarball (its marker says so)."""
    marker = where / MARKER
    return marker.is_file() and marker.read_text().strip() == pinned["integrity"]


def mark(where: Path, pinned: dict[str, str]) -> None:
    """Record in ``where`` which tarball it was made from."""
    (where / MARKER).write_text(pinned["integrity"] + "\n")


def unpack_pinned(pinned: dict[str, str], lock_name: str, scratch: Path) -> Path:
    """``npm pack`` the pinned package into ``scratch``, verify it, unpack it.

    Returns the unpacked ``package/`` directory. Exits (SystemExit with the reason)
    when npm is missing or fails, or the tarball is not the one in the lock.
    """
    spec = f"{pinned['package']}@{pinned['version']}"
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"npm is not installed; it is needed to download {spec}")
    packed = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(scratch)],
        capture_output=True,
        text=True,
        cwd=scratch,
    )
    if packed.returncode != 0:
        raise SystemExit(f"npm pack {spec} failed:\n{packed.stderr[-2000:]}")
    tarball = scratch / json.loads(packed.stdout)[0]["filename"]
    got = integrity_of(tarball)
    if got != pinned["integrity"]:
        raise SystemExit(
            f"{tarball.name}: integrity {got} is not the one in {lock_name} "
            f"({pinned['integrity']}); refusing to use it"
        )
    unpacked = scratch / "unpacked"
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked, filter="data")
    package = unpacked / "package"
    manifest = json.loads((package / "package.json").read_text())
    if (manifest.get("name"), manifest.get("version")) != (pinned["package"], pinned["version"]):
        raise SystemExit(f"{tarball.name} holds {manifest.get('name')}@{manifest.get('version')}")
    return package
