"""The OHIF viewer build the viewer test serves: fetched from npm, pinned, verified.

``tests/viewer/ohif.lock`` names the package, its exact version and the sha512
integrity the npm registry publishes for its tarball. ``python3 -m tests.viewer.ohif``
(run by ``.ci/run``) downloads that tarball with ``npm pack``, checks its sha512
against the lock, and unpacks the built viewer (the package's ``dist/``) into a
cache directory outside the repository; nothing of OHIF is committed. The test
finds the build there.

The cache directory is ``$TRIAGE_NODE_OHIF_DIR`` if set, else
``~/.cache/triage-node-tests/ohif-app-<version>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

LOCK = Path(__file__).resolve().parent / "ohif.lock"
FETCH_COMMAND = "python3 -m tests.viewer.ohif"


def lock() -> dict[str, str]:
    """The pinned package: ``package``, ``version`` and ``integrity`` (sha512-BASE64)."""
    data: dict[str, Any] = json.loads(LOCK.read_text())
    return {k: str(data[k]) for k in ("package", "version", "integrity")}


def cache_dir() -> Path:
    """Where the unpacked build lives (``index.html`` at its top)."""
    override = os.environ.get("TRIAGE_NODE_OHIF_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "triage-node-tests" / f"ohif-app-{lock()['version']}"


def _marker(where: Path) -> Path:
    return where / ".triage-node-integrity"


def installed() -> Path | None:
    """The unpacked build if it is there and was made from the locked tarball."""
    where = cache_dir()
    marker = _marker(where)
    if (where / "index.html").is_file() and marker.is_file():
        if marker.read_text().strip() == lock()["integrity"]:
            return where
    return None


def integrity_of(tarball: Path) -> str:
    """npm's ``dist.integrity`` form of a file: ``sha512-`` + base64 of its SHA-512."""
    digest = hashlib.sha512()
    with open(tarball, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch() -> Path:
    """Download the locked tarball with ``npm pack``, verify it, unpack ``dist/``."""
    pinned = lock()
    spec = f"{pinned['package']}@{pinned['version']}"
    where = cache_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"npm is not installed; it is needed to download {spec}")
    with tempfile.TemporaryDirectory() as scratch:
        packed = subprocess.run(
            [npm, "pack", spec, "--json", "--pack-destination", scratch],
            capture_output=True,
            text=True,
            cwd=scratch,
        )
        if packed.returncode != 0:
            raise SystemExit(f"npm pack {spec} failed:\n{packed.stderr[-2000:]}")
        tarball = Path(scratch) / json.loads(packed.stdout)[0]["filename"]
        got = integrity_of(tarball)
        if got != pinned["integrity"]:
            raise SystemExit(
                f"{tarball.name}: integrity {got} is not the one in {LOCK.name} "
                f"({pinned['integrity']}); refusing to use it"
            )
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarball) as tar:
            tar.extractall(unpacked, filter="data")
        manifest = json.loads((unpacked / "package" / "package.json").read_text())
        if (manifest.get("name"), manifest.get("version")) != (
            pinned["package"],
            pinned["version"],
        ):
            raise SystemExit(
                f"{tarball.name} holds {manifest.get('name')}@{manifest.get('version')}"
            )
        if where.exists():
            shutil.rmtree(where)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpacked / "package" / "dist"), where)
    _marker(where).write_text(pinned["integrity"] + "\n")
    return where


def main() -> int:
    where = installed()
    if where is None:
        where = fetch()
        print(f"OHIF {lock()['version']} verified and unpacked in {where}")
    else:
        print(f"OHIF {lock()['version']} already in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
