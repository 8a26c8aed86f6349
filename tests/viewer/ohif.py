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

import shutil
import sys
import tempfile
from pathlib import Path

from tests.npm_pin import cache_dir as npm_cache_dir
from tests.npm_pin import is_current, mark, read_lock, unpack_pinned

LOCK = Path(__file__).resolve().parent / "ohif.lock"
FETCH_COMMAND = "python3 -m tests.viewer.ohif"


def lock() -> dict[str, str]:
    """The pinned package: ``package``, ``version`` and ``integrity`` (sha512-BASE64)."""
    return read_lock(LOCK)


def cache_dir() -> Path:
    """Where the unpacked build lives (``index.html`` at its top)."""
    return npm_cache_dir(lock(), "TRIAGE_NODE_OHIF_DIR", "ohif-app")


def installed() -> Path | None:
    """The unpacked build if it is there and was made from the locked tarball."""
    where = cache_dir()
    if (where / "index.html").is_file() and is_current(where, lock()):
        return where
    return None


def fetch() -> Path:
    """Download the locked tarball with ``npm pack``, verify it, unpack ``dist/``."""
    pinned = lock()
    where = cache_dir()
    with tempfile.TemporaryDirectory() as scratch:
        package = unpack_pinned(pinned, LOCK.name, Path(scratch))
        if where.exists():
            shutil.rmtree(where)
        where.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(package / "dist"), where)
    mark(where, pinned)
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
