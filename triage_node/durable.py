"""Durable files: write atomically (temporary file, fsync, rename, directory fsync).

A reader, or the node after a crash, sees either no file or the whole file,
never a torn one. The rename is durable only once the directory is fsynced, so
:func:`atomic_write` does that too (and the parent's parent when it created the
parent). Every writer of the node that must survive a crash goes through here.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_path(path: Path, *, directory: bool = False) -> None:
    """Flush a file's (or a directory's entries') data to stable storage."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden, unique sibling of ``path`` to write before renaming onto it."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_write(path: Path, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary sibling of ``path`` for binary writing; a clean exit replaces ``path``.

    ``fsync=False`` keeps the atomicity (rename) but skips the flushes, for
    tests and caches. On an exception the temporary file is removed and
    ``path`` is left as it was. Parent directories are created.
    """
    created = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_path(path.parent, directory=True)
        if created:
            fsync_path(path.parent.parent, directory=True)


def write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (and durably unless ``fsync=False``)."""
    with atomic_write(path, fsync=fsync) as f:
        f.write(data)


def write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (and durably unless ``fsync=False``)."""
    write_bytes(path, text.encode("utf-8"), fsync=fsync)
