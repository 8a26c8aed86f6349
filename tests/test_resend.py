"""`triage-node resend`: the real command on a node's database, deliveries to dcmtk storescp."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.peers import free_port, run_cli, write_config
from tests.test_results import (
    add_source,
    archive,
    later,
    opened,
    received_uids,
    rows,
    run_jobs,
    storescp,
    study_row,
)
from triage_node.config import Settings, load_settings
from triage_node.store.models import Delivery, Job, Result
from triage_node.work.study import settle_studies


def configure(tmp_path: Path, port: int, max_attempts: int = 1) -> tuple[Path, Settings]:
    path = write_config(
        tmp_path / "node.toml",
        {
            "node": {"data_dir": str(tmp_path / "data"), "settle_seconds": 5},
            "receive": {"fsync": False},
            "deliver": {
                "max_attempts": max_attempts,
                "retry_base_seconds": 0.05,
                "retry_max_seconds": 0.05,
                "connection_timeout": 5,
            },
            "destinations": [archive(port)],
        },
    )
    return path, load_settings(path)


def reported_study(settings: Settings, seeds: tuple[int, ...] = (1,)) -> str:
    """A study with results whose first delivery attempt has run."""
    uid = pydicom.uid.generate_uid()
    with opened(settings) as store:
        for seed in seeds:
            add_source(store, settings, uid, seed)
        settle_studies(settings, store, now=later(settings))
        run_jobs(settings, store)
    return uid


def test_failed_delivery_is_put_back_by_resend_failed(tmp_path: Path) -> None:
    port = free_port()
    config, settings = configure(tmp_path, port)
    uid = reported_study(settings)
    with opened(settings) as store:
        assert rows(store, Job, Job.kind == "deliver")[0].state == "failed"
        assert study_row(store, uid).delivery_state == "failed"

    out = run_cli("resend", "--failed", config=config).stdout
    assert f"study {uid} report v1 -> archive: requeued job" in out
    assert "2 object(s) to send" in out
    with opened(settings) as store:
        job = rows(store, Job, Job.kind == "deliver")[0]
        assert (job.state, job.attempts) == ("queued", 0)
        assert {d.state for d in rows(store, Delivery)} == {"pending"}
        assert study_row(store, uid).delivery_state == "pending"
        with storescp(tmp_path / "archive", port):
            assert run_jobs(settings, store) == 1
        assert received_uids(tmp_path / "archive") == sorted(
            r.sop_instance_uid for r in rows(store, Result)
        )
        assert study_row(store, uid).delivery_state == "delivered"
    assert run_cli("resend", "--failed", config=config).stdout.strip() == "no failed deliveries"


def test_resend_of_a_delivered_study_sends_the_same_objects_again(tmp_path: Path) -> None:
    port = free_port()
    config, settings = configure(tmp_path, port, max_attempts=3)
    with storescp(tmp_path / "first", port):
        uid = reported_study(settings, seeds=(1, 2))
        other = reported_study(settings, seeds=(3,))  # delivered too: must not be re-sent
    with opened(settings) as store:
        assert study_row(store, uid).delivery_state == "delivered"
        study_id = study_row(store, uid).id
        first_uids = sorted(
            r.sop_instance_uid for r in rows(store, Result, Result.study_id == study_id)
        )
        assert set(first_uids) <= set(received_uids(tmp_path / "first"))

    proc = run_cli("resend", uid, config=config)
    assert f"study {uid} report v1 -> archive: requeued job" in proc.stdout
    assert "(was done), 3 object(s) to send" in proc.stdout
    again = run_cli("resend", uid, config=config).stdout
    assert "already queued" in again  # asking twice does not double the work
    with opened(settings) as store:
        with storescp(tmp_path / "second", port):
            assert run_jobs(settings, store) == 1
        # the same SOP Instance UIDs, and nothing of the other study
        assert received_uids(tmp_path / "second") == first_uids
        assert study_row(store, uid).delivery_state == "delivered"
        assert study_row(store, other).delivery_state == "delivered"


def test_unknown_study_exits_2_and_changes_nothing(tmp_path: Path) -> None:
    config, settings = configure(tmp_path, free_port())
    uid = reported_study(settings)
    proc = run_cli("resend", uid, "1.2.3.999", config=config, check=False)
    assert proc.returncode == 2
    assert "unknown study: 1.2.3.999" in proc.stderr and "nothing changed" in proc.stderr
    with opened(settings) as store:
        assert rows(store, Job, Job.kind == "deliver")[0].state == "failed"
    usage = run_cli("resend", config=config, check=False)
    assert usage.returncode == 2 and "--failed" in usage.stderr


def test_resend_of_a_study_without_results_says_so(tmp_path: Path) -> None:
    config, settings = configure(tmp_path, free_port())
    uid = pydicom.uid.generate_uid()
    with opened(settings) as store:
        add_source(store, settings, uid, 1, state="queued", result=None)
    out = run_cli("resend", uid, config=config).stdout
    assert out.strip() == f"study {uid}: no results to send (state open, report version 0)"
    with opened(settings) as store:
        assert rows(store, Job, Job.kind == "deliver") == []
