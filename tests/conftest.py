"""Shared fixtures: databases (SQLite and a real PostgreSQL), no process left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import STARTED, PostgresServer, stop_left_running


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind_by_the_session() -> Iterator[None]:
    """At the end of the run, what a module or session fixture left running is killed,
    reaped and reported (an error on the last test)."""
    yield
    left = stop_left_running()
    if left:
        pytest.fail("processes left running at the end of the session:\n" + "\n".join(left))


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Every process a test (or its function-scoped fixtures) started with
    ``tests.peers.start_process`` has been stopped by the time the test is over: one still
    running is killed and reaped, and the test errors naming it.

    Set up after the module and session fixtures (pytest sets up wider scopes first), so
    their processes, which outlive the test, are not counted."""
    first = len(STARTED)
    yield
    left = stop_left_running(first)
    if left:
        pytest.fail("the test left processes running:\n" + "\n".join(left))


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
