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

import shutil
import sys
import tempfile
from pathlib import Path

from tests.npm_pin import cache_dir as npm_cache_dir
from tests.npm_pin import is_current, mark, read_lock, unpack_pinned

LOCK = Path(__file__).resolve().parent / "axe.lock"
FETCH_COMMAND = "python3 -m tests.web.axe"
SCRIPT = "axe.min.js"


def lock() -> dict[str, str]:
    return read_lock(LOCK)


def cache_dir() -> Path:
    return npm_cache_dir(lock(), "TRIAGE_NODE_AXE_DIR", "axe-core")


def installed() -> Path | None:
    """The verified ``axe.min.js`` if it is there, else None."""
    where = cache_dir()
    script = where / SCRIPT
    if script.is_file() and is_current(where, lock()):
        return script
    return None


def fetch() -> Path:
    """Download the locked tarball with ``npm pack``, verify it, keep ``axe.min.js``."""
    pinned = lock()
    where = cache_dir()
    with tempfile.TemporaryDirectory() as scratch:
        package = unpack_pinned(pinned, LOCK.name, Path(scratch))
        where.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / SCRIPT, where / SCRIPT)
    mark(where, pinned)
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
