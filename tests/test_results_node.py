"""`triage-node work` as a real process: the scheduler settles, reports and delivers; the
archive is down, then the node is SIGKILLed in the middle of a C-STORE (the archive, a
pynetdicom SCP here, holds its answer), and every result still arrives with the same SOP
Instance UIDs.

Instances are recorded as already scored (the score stage's output) so no model is needed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import SegmentationStorage

from tests.peers import NodeProcess, free_port, start_archive_scp, wait_for, write_config
from tests.test_attention_map import cams
from tests.test_results import add_source, opened, rows, study_row
from triage_node.config import load_settings
from triage_node.report.results import cam_path_for, save_cams
from triage_node.store.models import Delivery, Event, Instance, Job, Result, utcnow
from triage_node.work.study import settle_studies


def test_archive_down_then_sigkill_mid_delivery_every_result_arrives(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "node.toml",
        {
            "node": {
                "ae_title": "TRIAGE",
                "port": free_port(),
                "data_dir": str(tmp_path / "data"),
                "settle_seconds": 1,
            },
            "receive": {"fsync": False},
            "worker": {"poll_seconds": 0.2, "lease_seconds": 3},
            "deliver": {
                "max_attempts": 50,
                "retry_base_seconds": 0.5,
                "retry_max_seconds": 1,
                "connection_timeout": 2,
                "dimse_timeout": 20,
            },
            "destinations": [
                {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": port}
            ],
            "logging": {"format": "json", "level": "DEBUG"},
        },
    )
    settings = load_settings(config)
    study_uid = pydicom.uid.generate_uid()
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1)
        add_source(store, settings, study_uid, 2)

        node = NodeProcess(config, tmp_path / "node.log", command="work").start()
        try:
            # the archive is down: the scheduler reports, delivery retries with backoff
            wait_for(
                lambda: [
                    j
                    for j in rows(store, Job, Job.kind == "deliver")
                    if j.attempts >= 2 and j.state == "queued"
                ],
                "delivery retried twice",
                90,
                node,
            )
            study = study_row(store, study_uid)
            assert (study.state, study.report_version, study.delivery_state) == (
                "reported",
                1,
                "retrying",
            )
            results = rows(store, Result)
            assert [r.kind for r in results] == ["SR", "SC", "SC"]
            expected = sorted(r.sop_instance_uid for r in results)

            # the archive comes back, slow: the node is killed while a C-STORE is pending
            got: list[str] = []
            first_store = threading.Event()

            def on_store(event: Any) -> int:
                got.append(event.request.AffectedSOPInstanceUID)
                if not first_store.is_set():
                    first_store.set()
                    time.sleep(3)  # the node dies while waiting for this response
                return 0x0000

            server, _ = start_archive_scp(on_store, port)
            try:
                wait_for(first_store.is_set, "a C-STORE in progress", 90, node)
                node.kill()
                assert rows(store, Job, Job.kind == "deliver")[0].state == "running"
                assert {d.state for d in rows(store, Delivery)} != {"delivered"}

                node.start()
                wait_for(
                    lambda: study_row(store, study_uid).delivery_state == "delivered",
                    "delivery after restart",
                    90,
                    node,
                )
            finally:
                server.shutdown()
            # the same objects, never new UIDs; a copy stored before the kill may come twice
            assert set(got) == set(expected)
            assert [r.sop_instance_uid for r in rows(store, Result)] == [
                r.sop_instance_uid for r in results
            ]
            assert study_row(store, study_uid).report_version == 1
            kinds = [e.kind for e in rows(store, Event)]
            assert "job_reclaimed" in kinds
            assert all((settings.spool_dir / r.path).exists() for r in results)
        finally:
            node.kill()


def test_our_results_sent_back_to_the_node_are_skipped_and_never_reported(tmp_path: Path) -> None:
    from tests.peers import node_running, storescu

    with node_running(tmp_path, destinations=[], receive={"fsync": False}) as node:
        settings = load_settings(node.config_path)
        study_uid = pydicom.uid.generate_uid()
        with opened(settings) as store:
            _, ds = add_source(store, settings, study_uid, 1)  # as the score job leaves it
            spooled = settings.spool_dir / study_uid / f"{ds.SOPInstanceUID}.dcm"
            save_cams(cam_path_for(spooled), cams(), fsync=False)  # so a map is made too
            wait_for(
                lambda: study_row(store, study_uid).state == "reported", "the report", 90, node
            )
            study = study_row(store, study_uid)
            assert (study.report_version, study.delivery_state) == (1, "no_destination")
            results = rows(store, Result)
            assert [r.kind for r in results] == ["SR", "SC", "MAP"]
            # a misconfigured router sends our SR, heatmap and attention map back to us
            sent = storescu(
                node.port, *(settings.spool_dir / r.path for r in results), extra=("-R", "-xy")
            )  # propose the files' own SOP classes, and JPEG baseline for the heatmap
            assert sent.returncode == 0, sent.stderr
            returned = wait_for(
                lambda: [i for i in rows(store, Instance) if i.own_result],
                "the returned objects",
                90,
                node,
            )
            assert len(returned) == 3 and {i.state for i in returned} == {"skipped"}
            assert SegmentationStorage in {i.sop_class_uid for i in returned}
            # The settle check the node runs every second, asked directly with a clock a
            # minute past the returned objects' settle time: nothing to report, ever.
            quiet = utcnow() + dt.timedelta(seconds=settings.node.settle_seconds + 60)
            assert settle_studies(settings, store, now=quiet) == []
            assert study_row(store, study_uid).report_version == 1
            assert len(rows(store, Job, Job.kind == "report")) == 1
