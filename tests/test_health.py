"""`/readyz` and `status`: not ready when the spool cannot take a file or the database is
gone, ready again when fixed.

Tests run as root in CI, and permission bits do not stop root: ``chmod 0500`` on
the spool leaves it writable *for the node*, so /readyz rightly stays ready
(the first test shows it). The readiness check writes and fsyncs a real probe
file, and the spool is made unwritable in a way that stops root in a plain
container, without mounts or extra capabilities: the spool directory is moved
aside and a regular file put at its path. Every write into the spool then
fails with ENOTDIR, exactly as the receiver's would.

The database is made unreachable for real: a PostgreSQL cluster of this test's
own is stopped (``pg_ctl stop``) and started again on the same port; on
SQLite, the database file is moved away and back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import PostgresServer, run_cli
from tests.test_metrics_http import endpoint, node_config, node_in_process, wait_for
from triage_node.config import load_settings
from triage_node.node.health import readiness
from triage_node.score.loader import describe_model
from triage_node.store import open_store


def ready(node: object) -> tuple[int, dict]:
    return endpoint(node, "/readyz")  # type: ignore[arg-type]


def test_spool_not_writable_makes_the_node_not_ready_until_fixed(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    with node_in_process(config) as node:
        code, doc = ready(node)
        assert code == 200 and doc["ready"] is True, doc
        assert set(doc["checks"]) == {"database", "spool", "disk", "model"}
        demo = describe_model(load_settings(config))  # no bundle configured: the demo's
        assert doc["checks"]["model"]["detail"] == f"{demo['name']} {demo['version']}"
        spool = node.settings.spool_dir

        if os.geteuid() == 0:
            # mode bits do not stop root: the spool is still writable, and says so
            spool.chmod(0o500)
            try:
                assert ready(node)[0] == 200
            finally:
                spool.chmod(0o750)

        aside = spool.with_name("spool.aside")
        spool.rename(aside)
        spool.write_text("not a directory")
        try:
            code, doc = ready(node)
            assert code == 503 and doc["ready"] is False
            assert doc["checks"]["spool"]["ok"] is False
            assert "cannot write a file" in doc["checks"]["spool"]["detail"]
            assert doc["checks"]["database"]["ok"] is True
            proc = run_cli("status", "--json", config=config, check=False)
            assert proc.returncode == 1  # the node answers, not ready
            status = json.loads(proc.stdout)
            assert status["answer"] == "not_ready"
            assert status["ready"]["checks"]["spool"]["ok"] is False
            assert status["endpoint"]["node"]["checks"]["spool"]["ok"] is False
            assert "NO  spool:" in run_cli("status", config=config, check=False).stdout
        finally:
            spool.unlink()
            aside.rename(spool)
        code, doc = ready(node)
        assert code == 200 and doc["ready"] is True
        assert not list(spool.glob(".ready-probe-*"))  # probes leave nothing behind
        status = json.loads(run_cli("status", "--json", config=config).stdout)  # exit 0
        assert status["ready"]["ready"] is True and status["endpoint"]["node"]["ready"] is True
        assert status["answer"] == "ready"


def test_sqlite_file_moved_away_makes_the_node_not_ready_until_back(tmp_path: Path) -> None:
    with node_in_process(node_config(tmp_path)) as node:
        assert ready(node)[0] == 200
        db = node.settings.data_dir / "triage.db"
        moved = tmp_path / "moved"
        moved.mkdir()
        names = [p.name for p in db.parent.glob("triage.db*")]
        for name in names:
            (db.parent / name).rename(moved / name)
        try:
            code, doc = ready(node)
            assert code == 503 and doc["checks"]["database"]["ok"] is False
            assert "database file missing" in doc["checks"]["database"]["detail"]
        finally:
            for name in names:
                (moved / name).rename(db.parent / name)
        assert ready(node)[0] == 200


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    # A cluster of this test's own: stopping the session's shared one would hurt others.
    root = Path(tempfile.mkdtemp(prefix="triage-pg-health-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root / "cluster")
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def pg_start(server: PostgresServer) -> None:
    subprocess.run(
        [
            *server.prefix,
            server.pg_ctl,
            "-D",
            str(server.datadir),
            "-l",
            str(server.root / "pg.log"),
            "-w",
            "-o",
            f"-p {server.port} -k {server.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )


def pg_stop(server: PostgresServer) -> None:
    subprocess.run(
        [*server.prefix, server.pg_ctl, "-D", str(server.datadir), "-m", "fast", "-w", "stop"],
        check=True,
        capture_output=True,
    )


def test_postgresql_down_makes_the_node_not_ready_until_back(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.new_database()
    config = node_config(tmp_path, node={"database_url": url})
    with node_in_process(config) as node:
        code, doc = ready(node)
        assert code == 200, doc
        pg_stop(own_postgres)
        try:
            code, doc = ready(node)
            assert code == 503 and doc["ready"] is False
            assert doc["checks"]["database"]["ok"] is False
            assert doc["checks"]["spool"]["ok"] is True
            proc = run_cli("status", "--json", config=config, check=False)
            assert proc.returncode == 1
            status = json.loads(proc.stdout)
            assert status["ready"]["checks"]["database"]["ok"] is False
            assert status["endpoint"]["node"]["checks"]["database"]["ok"] is False
        finally:
            pg_start(own_postgres)
        wait_for(lambda: ready(node)[0] == 200, "ready again after PostgreSQL restart", 30)


def test_free_disk_below_watermark_is_not_ready(tmp_path: Path) -> None:
    config = node_config(tmp_path, receive={"min_free_disk_mb": 100})
    settings = load_settings(config)
    store = open_store(settings)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    try:
        doc = readiness(settings, store, free_bytes=lambda _p: 50 * 1024 * 1024)
        assert doc["ready"] is False and doc["checks"]["disk"]["ok"] is False
        assert "watermark 100 MB" in doc["checks"]["disk"]["detail"]
        doc = readiness(settings, store, free_bytes=lambda _p: 500 * 1024 * 1024)
        assert doc["ready"] is True and "model" not in doc["checks"]
    finally:
        store.dispose()
