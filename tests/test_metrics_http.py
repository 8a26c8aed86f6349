"""`/metrics`, `/healthz` through real HTTP after real DICOM traffic through the node.

The node runs in this process (receiver, workers, scheduler, ops endpoint) with
the shipped demo model, so the samples are received from dcmtk's dcmsend,
scored, reported and delivered to dcmtk's storescp; Prometheus' text format is
then parsed and the counters and histograms compared with a scrape taken before.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dicom_files import write_radiograph
from tests.peers import (
    REPO,
    base_config,
    echoscu,
    free_port,
    need_tool,
    storescu,
    wait_for,
    write_config,
)
from tests.test_report import COLUMNS, ROWS
from tests.test_results import storescp
from triage_node.assessment import ModelUnavailable
from triage_node.config import Settings, load_settings
from triage_node.node.node import Node
from triage_node.store import open_store


def use_model(monkeypatch: pytest.MonkeyPatch, model: Any) -> None:
    """Have the score job load ``model`` (an instance, or an exception to raise)."""
    from triage_node.work import score as score_module

    def load(_settings: Settings) -> Any:
        if isinstance(model, Exception):
            raise model
        return model

    monkeypatch.setattr(score_module, "load_model", load)


def node_config(tmp_path: Path, **sections: Any) -> Path:
    """A test node config (see tests.peers.base_config) with its ops endpoint on a free port."""
    sections.setdefault("metrics", {"port": free_port()})
    return write_config(
        tmp_path / "node.toml", base_config(tmp_path / "data", free_port(), **sections)
    )


@contextmanager
def node_in_process(config: Path) -> Iterator[Node]:
    """Start every role of the node in this process; stop it after."""
    settings = load_settings(config)
    node = Node(settings, open_store(settings), {"receive", "work"})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def http_get(url: str) -> tuple[int, str]:
    """Status code and body of a GET (4xx/5xx too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def endpoint(node: Node, path: str) -> tuple[int, Any]:
    code, body = http_get(f"http://127.0.0.1:{node.ops_server.port}{path}")
    return code, (json.loads(body) if path != "/metrics" else body)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


SCORED = ["01_osteoporotic_jpegls.dcm", "04_normal_jpeg_lossless.dcm"]
NOT_ASSESSABLE = ["07_bilateral_prosthesis.dcm"]
SKIPPED = ["08_chest_not_hip.dcm"]


def test_counters_and_histograms_move_with_real_traffic(tmp_path: Path) -> None:
    archive_port = free_port()
    files = [REPO / "samples" / name for name in SCORED + NOT_ASSESSABLE + SKIPPED]
    config = node_config(
        tmp_path,
        destinations=[
            {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive_port}
        ],
        retention={"enabled": False},
    )
    studies = len(SCORED) + len(NOT_ASSESSABLE)  # one study per sample
    # an SR per study, a heatmap and an attention map per scored image
    objects = studies + 2 * len(SCORED)
    with storescp(tmp_path / "archive", archive_port), node_in_process(config) as node:
        code, text = endpoint(node, "/metrics")
        assert code == 200
        before = samples(text)
        assert value(before, "triage_store_up") == 1

        port = node.settings.node.port
        # dcmsend: one association, each file in its own transfer syntax
        subprocess.run(
            [
                need_tool("dcmsend"),
                "-aet",
                "STORESCU",
                "-aec",
                "TRIAGE",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert echoscu(port, calling="INTRUDER").returncode != 0  # not in [[peers]]

        def delivered() -> bool:
            after = samples(endpoint(node, "/metrics")[1])
            return (
                value(after, "triage_results_total", destination="archive", outcome="delivered")
                - value(before, "triage_results_total", destination="archive", outcome="delivered")
                >= objects
            )

        wait_for(delivered, "every SR, heatmap and map delivered", 300)
        code, text = endpoint(node, "/metrics")
        after = samples(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("triage_associations_total", result="accepted", reason="") == 1
    assert delta("triage_associations_total", result="rejected", reason="calling_ae_unknown") == 1
    assert delta("triage_instances_total", outcome="received") == len(files)
    assert delta("triage_instances_total", outcome="skipped") == len(SKIPPED)
    assert delta("triage_instances_total", outcome="scored") == len(SCORED)
    assert delta("triage_instances_total", outcome="not_assessable") == len(NOT_ASSESSABLE)
    assert delta("triage_instances_total", outcome="failed") == 0
    assert delta("triage_results_total", destination="archive", outcome="delivered") == objects
    assert delta("triage_results_total", destination="archive", outcome="failed") == 0
    # histograms: one observation per C-STORE, per score job, per report and deliver job
    assert delta("triage_stage_seconds_count", stage="receive") == len(files)
    assert delta("triage_stage_seconds_count", stage="score") == studies
    assert delta("triage_stage_seconds_count", stage="report") == studies
    assert delta("triage_stage_seconds_count", stage="deliver") == studies
    assert delta("triage_stage_seconds_sum", stage="score") > 0
    assert delta("triage_end_to_end_seconds_count", destination="archive") == studies
    # end to end includes the settle time (1 s in the test config)
    assert delta("triage_end_to_end_seconds_sum", destination="archive") >= 1.0 * studies
    assert delta("triage_end_to_end_seconds_bucket", destination="archive", le="1.0") == 0
    # gauges from the database: everything done, nothing waiting
    assert value(after, "triage_queue_jobs", kind="score", state="done") == studies
    assert value(after, "triage_queue_jobs", kind="deliver", state="done") == studies
    assert value(after, "triage_queue_oldest_waiting_seconds", kind="score") == 0
    assert value(after, "triage_free_disk_bytes") > 0
    model = [k for k in after if k[0] == "triage_model_info"]
    assert len(model) == 1 and ("available", "true") in model[0][1]
    assert ("synthetic", "true") in model[0][1]  # the demo bundle says what it is
    # no UID (unbounded) in any label
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    for _name, labels in after:
        assert all(v not in uids and not v.startswith(("1.2.", "2.25.")) for _k, v in labels)


def test_waiting_jobs_show_queue_depth_and_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_model(monkeypatch, ModelUnavailable("no bundle (test)"))
    config = node_config(tmp_path, retention={"enabled": False})
    with node_in_process(config) as node:
        port = node.settings.node.port
        write_radiograph(tmp_path / "in" / "hip.dcm", rows=ROWS, columns=COLUMNS)
        assert storescu(port, tmp_path / "in" / "hip.dcm").returncode == 0

        def waiting_scrape() -> dict[Any, float] | None:
            # The job waits for a model: queued between attempts, briefly running while a
            # worker tries; poll until a scrape sees it queued and at least a second old.
            scrape = samples(endpoint(node, "/metrics")[1])
            queued = value(scrape, "triage_queue_jobs", kind="score", state="queued")
            age = value(scrape, "triage_queue_oldest_waiting_seconds", kind="score")
            return scrape if queued == 1 and age >= 1.0 else None

        scrape = wait_for(waiting_scrape, "the score job to show as queued and waiting")
        assert value(scrape, "triage_queue_jobs", kind="score", state="queued") == 1
        assert value(scrape, "triage_queue_oldest_waiting_seconds", kind="score") >= 1.0
        code, live = endpoint(node, "/healthz")
        assert code == 200 and live["alive"] is True
        code, ready = endpoint(node, "/readyz")
        assert code == 503 and ready["checks"]["model"]["ok"] is False
        assert "no bundle (test)" in ready["checks"]["model"]["detail"]
        assert http_get(f"http://127.0.0.1:{node.ops_server.port}/nothing")[0] == 404


def test_deploy_examples_load_and_alert_on_metrics_the_node_exports() -> None:
    import re

    import yaml

    from tests.peers import REPO
    from triage_node.telemetry import metrics

    settings = load_settings(REPO / "deploy" / "config.example.toml")
    assert settings.metrics.host == "127.0.0.1" and settings.retention.enabled
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "triage-node.rules.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "TriageNodeQueueStuck",
        "TriageNodeDeliveryFailing",
        "TriageNodeNotAccepting",
        "TriageNodeScannerDrift",
    }
    from triage_node.node.collector import StoreCollector
    from triage_node.store import Store
    from triage_node.store.migrate import upgrade

    with tempfile.TemporaryDirectory() as scratch:  # the scrape-time gauges, from a store
        settings.node.data_dir = Path(scratch)
        store = Store(f"sqlite:///{scratch}/triage.db")
        upgrade(store)
        gauges = {m.name for m in StoreCollector(settings, store).collect()}
        store.dispose()
    assert {"triage_store_writable", "triage_free_disk_watermark_bytes"} <= gauges
    exported = {m.name for m in metrics.REGISTRY.collect()} | gauges
    for expr in alerts.values():
        for name in re.findall(r"\btriage_[a-z_]+", expr):
            base = name.removesuffix("_total")
            assert base in exported, name
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    target = scrape["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == f"127.0.0.1:{settings.metrics.port}"
