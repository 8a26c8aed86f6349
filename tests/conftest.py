"""Shared fixtures: databases (SQLite and a real PostgreSQL), nodes as subprocesses."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # Not under pytest's basetemp: as root that is /tmp/pytest-of-root (mode 0700), which
    # the postgres user that runs the server (initdb refuses root) cannot traverse.
    root = Path(tempfile.mkdtemp(prefix="triage-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root / "cluster")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'triage.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
