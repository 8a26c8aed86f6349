"""axe-core, the accessibility checker the console test runs in the page: fetched from npm, pinned.

``tests/web/axe.lock`` names the package, its exact version and the sha512 integrity
the npm registry publishes for its tarball. ``python3 -m tests.web.axe`` (run by
``.ci/run``) downloads that tarball with ``npm pack``, checks it against the lock
(as tests/viewer/ohif.py does for OHIF) and keeps the one file the test injects,
``axe.min.js``, in a cache directory outside the repository.

The cache directory is ``$TRIAGE_NODE_AXE_DIR`` if set, else
``~/.cache/triage-node-tests/axe-core-<version>``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tests.viewer.ohif import integrity_of

LOCK = Path(__file__).resolve().parent / "axe.lock"
FETCH_COMMAND = "python3 -m tests.web.axe"
SCRIPT = "axe.min.js"


def lock() -> dict[str, str]:
    data: dict[str, Any] = json.loads(LOCK.read_text())
    return {k: str(data[k]) for k in ("package", "version", "integrity")}


def cache_dir() -> Path:
    override = os.environ.get("TRIAGE_NODE_AXE_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "triage-node-tests" / f"axe-core-{lock()['version']}"


def installed() -> Path | None:
    """The verified ``axe.min.js`` if it is there, else None."""
    where = cache_dir()
    marker = where / ".triage-node-integrity"
    script = where / SCRIPT
    if script.is_file() and marker.is_file():
        if marker.read_text().strip() == lock()["integrity"]:
            return script
    return None


def fetch() -> Path:
    pinned = lock()
    spec = f"{pinned['package']}@{pinned['version']}"
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"npm is not installed; it is needed to download {spec}")
    where = cache_dir()
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
        with tarfile.open(tarball) as tar:
            tar.extractall(Path(scratch) / "unpacked", filter="data")
        package = Path(scratch) / "unpacked" / "package"
        manifest = json.loads((package / "package.json").read_text())
        if (manifest.get("name"), manifest.get("version")) != (
            pinned["package"],
            pinned["version"],
        ):
            raise SystemExit(
                f"{tarball.name} holds {manifest.get('name')}@{manifest.get('version')}"
            )
        where.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / SCRIPT, where / SCRIPT)
    (where / ".triage-node-integrity").write_text(pinned["integrity"] + "\n")
    return where / SCRIPT


def main() -> int:
    script = installed()
    if script is None:
        script = fetch()
        print(f"axe-core {lock()['version']} verified, {script}")
    else:
        print(f"axe-core {lock()['version']} already in {script}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
