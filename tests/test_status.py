"""`status` tells the truth about the node of its config: ready, starting, not ready, not
running, or a different node on its metrics port; and the node loads its model at start.

Real nodes (``python -m triage_node serve``) on loopback, the real ``status`` command;
only :func:`test_starting_is_an_answer_of_its_own` runs the node in this process, with the
model's load held back until the test has asked, so the ``starting`` window is not a race.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.peers import (
    REPO,
    NodeProcess,
    base_config,
    free_port,
    node_running,
    run_cli,
    storescu,
    wait_for,
    write_config,
)
from tests.test_metrics_http import endpoint, http_get, node_config
from triage_node.config import Settings, load_settings
from triage_node.node.node import Node
from triage_node.score.bundle import DEMO_BUNDLE_DIR
from triage_node.store import open_store
from triage_node.work import score as score_module

SAMPLE = REPO / "samples" / "02_normal_mono1.dcm"


def status(config: Path) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON document of ``status --json --config CONFIG``."""
    proc = run_cli("status", "--json", config=config, check=False)
    assert proc.returncode != 2, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def metrics_port(node: NodeProcess) -> int:
    return int(tomllib.loads(node.config_path.read_text())["metrics"]["port"])


def log_records(node: NodeProcess) -> list[dict[str, Any]]:
    """The node's JSON log lines (anything else it printed, e.g. a traceback, is kept as text)."""
    records = []
    for line in node.log_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "TEXT", "message": line})
    return records


def assert_no_error_logged(node: NodeProcess) -> None:
    text = node.log_text()
    assert "Traceback" not in text, text[-4000:]
    errors = [r for r in log_records(node) if r.get("level") in ("ERROR", "CRITICAL")]
    assert not errors, errors


def hang_up(port: int, path: str, reset: bool) -> None:
    """Send a GET and close without reading the answer (``reset``: with a TCP RST)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def test_status_against_a_foreign_node_on_the_metrics_port_says_not_ours(
    tmp_path: Path,
) -> None:
    with node_running(tmp_path, name="a") as node_a:
        taken = metrics_port(node_a)
        wait_for(lambda: http_get(f"http://127.0.0.1:{taken}/readyz")[0] == 200, "A ready")
        # B's config names A's metrics port: B's endpoint cannot listen, B runs on.
        with node_running(tmp_path, name="b", metrics={"port": taken}) as node_b:
            wait_for(
                lambda: "node ready" in node_b.log_text(), "B started", 120, node_b, interval=0.5
            )
            assert "metrics endpoint not started" in node_b.log_text()

            code, doc = status(node_b.config_path)
            assert code == 4, doc
            assert doc["answer"] == "not_ours"
            assert doc["endpoint"]["node"]["ours"] is False
            assert doc["endpoint"]["node"]["ready"] is False
            a_settings = load_settings(node_a.config_path)
            other = doc["endpoint"]["other_node"]
            assert other["data_dir"] == str(a_settings.data_dir.resolve())
            assert other["database"] == a_settings.database_url  # no password to redact
            assert other["id"] != doc["node"]["id"]
            assert doc["database"]["url"] != other["database"]  # B's own, not A's
            text = run_cli("status", config=node_b.config_path, check=False)
            assert text.returncode == 4
            assert "different node" in text.stdout and "node ready" not in text.stdout
            assert str(node_b.data_dir) in text.stdout  # which node this config describes

            # A's own config reaches A: ready, exit 0.
            code, doc = status(node_a.config_path)
            assert (code, doc["answer"]) == (0, "ready"), doc
            assert doc["endpoint"]["node"]["node"]["id"] == doc["node"]["id"]
        node_a.kill()
        code, doc = status(node_b.config_path)
        assert (code, doc["answer"]) == (3, "not_running"), doc


def test_status_right_after_start_answers_and_the_node_logs_no_error(tmp_path: Path) -> None:
    cfg = base_config(tmp_path / "data", free_port())
    config = write_config(tmp_path / "node.toml", cfg)
    node = NodeProcess(config, tmp_path / "node.log")
    node.start(wait=False)  # ask at once, while the node loads its model
    try:
        answers: list[str] = []

        def ready() -> bool:
            code, doc = status(config)
            answers.append(doc["answer"])
            assert doc["answer"] in ("not_running", "starting", "ready"), doc
            assert code == {"not_running": 3, "starting": 1, "ready": 0}[doc["answer"]]
            return code == 0

        wait_for(ready, "status to say ready", 300, node, interval=0)
        assert answers[-1] == "ready"

        # Clients that hang up before their answer: a routine event, not an error.
        port = int(cfg["metrics"]["port"])
        for path in ("/readyz", "/healthz", "/metrics") * 3:
            hang_up(port, path, reset=False)
            hang_up(port, path, reset=True)
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200  # still serving
        code, doc = status(config)
        assert code == 0 and doc["endpoint"]["node"]["phase"] == "running"

        messages = [r["message"] for r in log_records(node)]
        assert messages.index("model loaded") < messages.index("node ready")
        assert_no_error_logged(node)
    finally:
        node.kill()


def test_starting_is_an_answer_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_load = score_module.load_model

    def held_load(settings: Settings) -> Any:
        release.wait(120)
        return real_load(settings)

    monkeypatch.setattr(score_module, "load_model", held_load)
    config = node_config(tmp_path)
    settings = load_settings(config)
    node = Node(settings, open_store(settings), {"receive", "work"})
    starter = threading.Thread(target=node.start, name="node-start")
    starter.start()
    try:
        wait_for(lambda: node.ops_server is not None, "the ops endpoint to listen")
        code, doc = endpoint(node, "/readyz")
        assert code == 503 and doc["ready"] is False and doc["phase"] == "starting"
        assert doc["checks"]["model"]["ok"] is False
        assert "loading the model" in doc["checks"]["model"]["detail"]
        assert doc["node"]["data_dir"] == str(settings.data_dir.resolve())
        code, live = endpoint(node, "/healthz")
        assert code == 503 and live["phase"] == "starting"

        code, doc = status(config)
        assert (code, doc["answer"]) == (1, "starting"), doc
        text = run_cli("status", config=config, check=False).stdout
        assert text.startswith("answer     STARTING") and "node ready" not in text

        release.set()
        starter.join(300)
        assert not starter.is_alive()
        code, doc = endpoint(node, "/readyz")
        assert code == 200 and doc["ready"] is True and doc["phase"] == "running"
        code, doc = status(config)
        assert (code, doc["answer"]) == (0, "ready"), doc
    finally:
        release.set()
        starter.join(300)
        node.stop()


def test_missing_bundle_is_a_warning_at_start_and_ready_once_installed(tmp_path: Path) -> None:
    bundle = tmp_path / "site-bundle"
    with node_running(tmp_path, model={"bundle": str(bundle)}) as node:
        wait_for(lambda: "node started" in node.log_text(), "the start to finish", 120, node)
        warnings = [
            r for r in log_records(node) if r["level"] == "WARNING" and str(bundle) in r["message"]
        ]
        assert any("no model at start" in r["message"] for r in warnings), warnings
        messages = [r["message"] for r in log_records(node)]
        assert "node ready" not in messages
        assert any(m.startswith("node started, NOT READY: model:") for m in messages)
        assert_no_error_logged(node)

        code, doc = status(node.config_path)
        assert (code, doc["answer"]) == (1, "not_ready"), doc
        assert str(bundle) in doc["endpoint"]["node"]["checks"]["model"]["detail"]
        assert str(bundle) in doc["message"]

        # The node still receives; the score job waits for a model.
        sent = storescu(node.port, SAMPLE)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def waiting() -> bool:
            rows = json.loads(run_cli("worklist", "--json", config=node.config_path).stdout)
            return bool(rows) and "model unavailable" in (rows[0].get("last_error") or "")

        wait_for(waiting, "the score job to wait for a model", 120, node)

        # A bundle installed while the node runs makes it ready and the image is scored.
        shutil.copytree(DEMO_BUNDLE_DIR, tmp_path / "staging")
        (tmp_path / "staging").rename(bundle)  # whole, as an admin's install would be
        wait_for(lambda: status(node.config_path)[0] == 0, "ready once the bundle is there", 180)

        def scored() -> bool:
            rows = json.loads(run_cli("worklist", "--json", config=node.config_path).stdout)
            return rows[0]["state"] in ("scored", "not_assessable")

        wait_for(scored, "the waiting image to be scored", 180, node)


def test_no_answer_exits_3_whether_not_running_or_endpoint_off(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", base_config(tmp_path / "data", free_port()))
    code, doc = status(config)
    assert (code, doc["answer"]) == (3, "not_running"), doc
    assert doc["endpoint"]["node"]["reachable"] is False
    off = write_config(
        tmp_path / "off.toml",
        base_config(tmp_path / "data", free_port(), metrics={"enabled": False}),
    )
    code, doc = status(off)
    assert (code, doc["answer"]) == (3, "no_endpoint"), doc
    assert "metrics.enabled = false" in doc["message"]
