"""Faults: the node degrades visibly and recovers without losing or duplicating anything.

Each test runs the node as a real process (``work`` for delivery, ``receive`` for the
receiver) against real peers (dcmtk's storescp/storescu/echoscu, a pynetdicom SCP), makes
one thing go wrong and checks what a site relies on while it lasts and after:

* a destination that rejects associations, then accepts: results are retried with
  backoff, the retries show in ``/metrics``, every object arrives exactly once;
* a destination that accepts but never answers a C-STORE: the node gives up after
  ``deliver.dimse_timeout``, retries the unanswered objects only, nothing is lost;
* the SQLite database write-locked by another process during a burst of stores: no
  C-STORE is acknowledged without its committed row, ``/metrics`` shows the store as
  not writable, the receiver keeps serving once the lock is gone;
* free disk below ``receive.min_free_disk_mb`` during a burst: 0xA700, ``/readyz`` not
  ready, the disk gauges show it; once space is freed the same instances are stored.

Delivery tests record instances as already scored (``tests.test_results.add_source``)
so no model is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from prometheus_client.parser import text_string_to_metric_families

from tests import peers
from tests.dicom_files import write_radiograph
from tests.peers import (
    NodeProcess,
    base_config,
    dcmtk_storescp,
    echoscu,
    free_port,
    need_tool,
    node_running,
    start_archive_scp,
    start_process,
    stop_process,
    storescu,
    write_config,
)
from tests.test_report import COLUMNS, ROWS
from tests.test_results import add_source, opened, received_uids, rows, study_row
from triage_node.config import load_settings
from triage_node.store import open_store
from triage_node.store.models import Delivery, Event, Instance, Job, Result

_MB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------------


def wait_for(
    check: Callable[[], Any], what: str, node: NodeProcess, timeout: float = 120, poll: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something true; fail with the node's log tail."""
    return peers.wait_for(check, what, timeout, node, interval=poll)


def ops_url(node: NodeProcess, path: str) -> str:
    port = tomllib.loads(node.config_path.read_text())["metrics"]["port"]
    return f"http://127.0.0.1:{port}{path}"


def http_get(url: str) -> tuple[int, str] | None:
    """Status and body of a GET (4xx/5xx too); None while nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def scrape(node: NodeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's ``/metrics`` by (name, sorted labels); {} if not up yet."""
    got = http_get(ops_url(node, "/metrics"))
    if got is None or got[0] != 200:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(got[1])
        for s in family.samples
    }


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def readyz(node: NodeProcess) -> tuple[int, dict[str, Any]] | None:
    got = http_get(ops_url(node, "/readyz"))
    return None if got is None else (got[0], json.loads(got[1]))


def delivery_node(tmp_path: Path, archive_port: int, **deliver: Any) -> NodeProcess:
    """A ``work`` node (not started) whose one destination ``archive`` is on ``archive_port``."""
    config = write_config(
        tmp_path / "node.toml",
        base_config(
            tmp_path / "data",
            free_port(),
            receive={"fsync": False},
            retention={"enabled": False},
            deliver={
                "max_attempts": 50,
                "retry_base_seconds": 0.5,
                "retry_max_seconds": 1,
                "connection_timeout": 2,
                "acse_timeout": 5,
                "network_timeout": 10,
                **deliver,
            },
            destinations=[
                {
                    "name": "archive",
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": archive_port,
                }
            ],
        ),
    )
    return NodeProcess(config, tmp_path / "node.log", command="work")


class StoreRun:
    """dcmtk storescu in the background, its verbose output in a file.

    ``statuses()`` pairs each file sent with the response storescu printed for it:
    "Success", a failure text, or nothing yet.
    """

    def __init__(self, port: int, files: list[Path], log_path: Path, *options: str) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = start_process(
                [
                    need_tool("storescu"),
                    "-v",
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "TRIAGE",
                    *options,
                    "127.0.0.1",
                    str(port),
                    *map(str, files),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def statuses(self) -> dict[Path, str]:
        found: dict[Path, str] = {}
        current: Path | None = None
        for line in self.output().splitlines():
            sending = re.search(r"Sending file: (.+)$", line)
            if sending:
                current = Path(sending.group(1).strip())
                continue
            answer = re.search(r"Received Store Response \((.+)\)", line)
            if answer and current is not None:
                found[current] = answer.group(1)
                current = None
        return found

    def wait(self, timeout: float = 120) -> dict[Path, str]:
        """Wait for storescu to finish (killed if it has not after ``timeout`` seconds)."""
        try:
            self.proc.wait(timeout)
        finally:
            stop_process(self.proc, sig=signal.SIGKILL)
        return self.statuses()


def radiographs(directory: Path, n: int, first_seed: int = 0) -> list[Path]:
    """``n`` small hip radiographs of one new study, written to ``directory``."""
    study = pydicom.uid.generate_uid()
    paths = [directory / f"hip{i}.dcm" for i in range(n)]
    for i, path in enumerate(paths):
        write_radiograph(path, rows=ROWS, columns=COLUMNS, study_uid=study, seed=first_seed + i)
    return paths


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def stored_uids(node: NodeProcess) -> list[str]:
    """SOP Instance UIDs with a committed row, one entry per row (a duplicate would show)."""
    settings = load_settings(node.config_path)
    store = open_store(settings, migrate=False)  # no migration: it would wait for a lock
    try:
        found = rows(store, Instance)
        for inst in found:  # the spool file of every row is there
            assert (settings.spool_dir / inst.path).is_file(), inst.path
        return [inst.sop_instance_uid for inst in found]
    finally:
        store.dispose()


# --- delivery -----------------------------------------------------------------------------


def test_destination_rejecting_associations_gets_every_result_once_when_it_accepts(
    tmp_path: Path,
) -> None:
    port = free_port()
    node = delivery_node(tmp_path, port)
    settings = load_settings(node.config_path)
    study_uid = pydicom.uid.generate_uid()
    with opened(settings) as store:
        add_source(store, settings, study_uid, 1)
        add_source(store, settings, study_uid, 2)
        try:
            # The archive is up but refuses every association (A-ASSOCIATE-RJ).
            with dcmtk_storescp("--refuse", port=port):
                node.start()

                def retried_twice() -> Any:
                    jobs = rows(store, Job, Job.kind == "deliver")
                    return jobs if jobs and jobs[0].attempts >= 2 else None

                job = wait_for(retried_twice, "two rejected delivery attempts", node)[0]
                # A-ASSOCIATE-RJ; on a loaded machine the refusal may reach pynetdicom as
                # a closed connection instead: either way no association, and a retry.
                assert (
                    "association rejected by the peer" in job.last_error
                    or "no association" in job.last_error
                ), job.last_error
                assert study_row(store, study_uid).delivery_state == "retrying"
                assert {d.state for d in rows(store, Delivery)} == {"retrying"}
                results = rows(store, Result)
                assert [r.kind for r in results] == ["SR", "SC", "SC"]

                # While it lasts: retries counted per object, the job waits in the queue.
                during = wait_for(
                    lambda: (
                        (m := scrape(node))
                        and metric(
                            m, "triage_results_total", destination="archive", outcome="retried"
                        )
                        >= 2 * len(results)
                        and m
                    ),
                    "retries in /metrics",
                    node,
                )
                assert (
                    metric(
                        during, "triage_results_total", destination="archive", outcome="delivered"
                    )
                    == 0
                )
                assert (
                    metric(during, "triage_queue_jobs", kind="deliver", state="queued")
                    + metric(during, "triage_queue_jobs", kind="deliver", state="running")
                    == 1
                )

            # The archive accepts again on the same port, one file per object received.
            (tmp_path / "archive").mkdir()
            with dcmtk_storescp("+uf", port=port, out_dir=tmp_path / "archive"):
                wait_for(
                    lambda: study_row(store, study_uid).delivery_state == "delivered",
                    "delivery once the archive accepts",
                    node,
                )
                after = wait_for(
                    lambda: (
                        (m := scrape(node))
                        and metric(m, "triage_queue_jobs", kind="deliver", state="done") == 1
                        and m
                    ),
                    "the finished job in /metrics",
                    node,
                )
        finally:
            node.kill()
        expected = sorted(r.sop_instance_uid for r in results)
        assert received_uids(tmp_path / "archive") == expected  # each exactly once
        assert [r.sop_instance_uid for r in rows(store, Result)] == [
            r.sop_instance_uid for r in results
        ]  # the same objects, not new ones
        assert {(d.state, d.status) for d in rows(store, Delivery)} == {("delivered", 0)}
        assert metric(
            after, "triage_results_total", destination="archive", outcome="delivered"
        ) == len(results)
        assert metric(after, "triage_results_total", destination="archive", outcome="failed") == 0
        assert metric(after, "triage_queue_jobs", kind="deliver", state="queued") == 0
        kinds = [e.kind for e in rows(store, Event, Event.study_instance_uid == study_uid)]
        assert kinds.count("delivery_retry") >= 2 and kinds[-1] == "study_delivered"


def test_destination_that_stops_answering_mid_transfer_is_aborted_and_retried(
    tmp_path: Path,
) -> None:
    answering = threading.Event()  # set: the archive answers C-STOREs again
    held = threading.Event()  # the archive is sitting on a C-STORE
    requests: list[str] = []  # every C-STORE request the archive saw
    acknowledged: list[str] = []  # those it answered
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with lock:
            requests.append(uid)
            # The first object is answered, then the archive stalls until told otherwise.
            hold = len(requests) > 1 and not answering.is_set()
        if hold:
            held.set()
            answering.wait(60)
            # A late answer must never reach the node: end the association instead.
            event.assoc.abort(block=False)
            return 0xA700
        with lock:
            acknowledged.append(uid)
        return 0x0000

    server, port = start_archive_scp(on_store)
    node = delivery_node(tmp_path, port, dimse_timeout=1)
    settings = load_settings(node.config_path)
    study_uid = pydicom.uid.generate_uid()
    try:
        with opened(settings) as store:
            add_source(store, settings, study_uid, 1)
            add_source(store, settings, study_uid, 2)
            node.start()
            wait_for(held.is_set, "a C-STORE the archive does not answer", node)

            def gave_up() -> Any:
                jobs = rows(store, Job, Job.kind == "deliver")
                return jobs if jobs and jobs[0].last_error else None

            job = wait_for(gave_up, "the node giving up on the C-STORE", node)[0]
            assert "no C-STORE response" in job.last_error
            results = rows(store, Result)
            sr, first_sc, second_sc = (r.sop_instance_uid for r in results)
            assert requests[:2] == [sr, first_sc]
            # the SR was answered before the stall and is recorded as delivered
            states = {d.result_id: d.state for d in rows(store, Delivery)}
            assert [states[r.id] for r in results] == ["delivered", "retrying", "retrying"]
            assert study_row(store, study_uid).delivery_state == "retrying"
            during = wait_for(
                lambda: (
                    (m := scrape(node))
                    and metric(m, "triage_results_total", destination="archive", outcome="retried")
                    >= 2
                    and m
                ),
                "the retry in /metrics",
                node,
            )
            assert (
                metric(during, "triage_results_total", destination="archive", outcome="delivered")
                == 1
            )

            answering.set()
            wait_for(
                lambda: study_row(store, study_uid).delivery_state == "delivered",
                "delivery once the archive answers",
                node,
            )
            # every object answered exactly once; the SR was never sent again
            assert sorted(acknowledged) == sorted([sr, first_sc, second_sc])
            assert requests.count(sr) == 1 and requests.count(first_sc) >= 2
            assert {(d.state, d.status) for d in rows(store, Delivery)} == {("delivered", 0)}
            assert [r.sop_instance_uid for r in rows(store, Result)] == [sr, first_sc, second_sc]
            after = wait_for(
                lambda: (
                    (m := scrape(node))
                    and metric(
                        m, "triage_results_total", destination="archive", outcome="delivered"
                    )
                    == 3
                    and m
                ),
                "all three delivered in /metrics",
                node,
            )
            assert metric(after, "triage_queue_jobs", kind="deliver", state="queued") == 0
    finally:
        answering.set()
        node.kill()
        server.shutdown()


# --- receiving ----------------------------------------------------------------------------


# A separate process that takes SQLite's write lock when told to and keeps it until told.
LOCK_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
print("ready", flush=True)
sys.stdin.readline()
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


def spooled_without_row(node: NodeProcess) -> list[str]:
    """SOP Instance UIDs with a spool file but no committed row (in flight, unacknowledged)."""
    settings = load_settings(node.config_path)
    files = {
        p.stem for p in settings.spool_dir.glob("*/*.dcm") if not p.parent.name.startswith(".")
    }  # not .incoming: still arriving
    return sorted(files - set(stored_uids(node)))


def test_database_locked_by_another_process_during_a_burst_loses_no_acknowledged_instance(
    tmp_path: Path,
) -> None:
    files = radiographs(tmp_path / "burst", 80)
    uid_of = {f: sop_uid(f) for f in files}
    with node_running(tmp_path, command="receive", retention={"enabled": False}) as node:
        db = load_settings(node.config_path).node.data_dir / "triage.db"
        before = wait_for(lambda: scrape(node), "/metrics", node)
        assert metric(before, "triage_store_writable") == 1

        holder = start_process(
            [sys.executable, "-c", LOCK_HOLDER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "ready"
            burst = StoreRun(node.port, files, tmp_path / "storescu.log")
            # mid-burst: the first instance is acknowledged, then the lock is taken
            wait_for(burst.statuses, "the first store response", node, poll=0.01)
            holder.stdin.write("lock\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "locked"

            # The next instance is written to the spool, but its row cannot be committed:
            # it must not be acknowledged.
            in_flight = wait_for(
                lambda: spooled_without_row(node), "an instance waiting for the database", node
            )
            acknowledged = {uid_of[f] for f, s in burst.statuses().items() if s == "Success"}
            assert acknowledged and not acknowledged & set(in_flight)
            assert acknowledged <= set(stored_uids(node))
            # The alarm: the database still answers reads, but takes no write.
            locked = wait_for(
                lambda: (m := scrape(node)) and metric(m, "triage_store_writable") == 0 and m,
                "triage_store_writable 0",
                node,
            )
            assert metric(locked, "triage_store_up") == 1

            # The receiver stops waiting (SQLite's busy timeout) and refuses the instance
            # while the lock is still held, leaving neither a row nor a spool file.
            refused = wait_for(
                lambda: [f for f, s in burst.statuses().items() if s != "Success"],
                "a refusal while the database is locked",
                node,
                timeout=45,
            )
            assert [burst.statuses()[f] for f in refused] == ["Refused: OutOfResources"]
            assert uid_of[refused[0]] == in_flight[0]
            assert spooled_without_row(node) == []
            assert "store unavailable" in node.log_text()

            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
        finally:
            stop_process(holder, sig=signal.SIGKILL)

        statuses = burst.wait()  # dcmtk's storescu stops at the first refusal
        acknowledged = {uid_of[f] for f, s in statuses.items() if s == "Success"}
        stored = stored_uids(node)
        assert acknowledged <= set(stored)  # nothing acknowledged without its row
        assert uid_of[refused[0]] not in stored
        after = scrape(node)
        assert (
            metric(after, "triage_instances_total", outcome="refused")
            - metric(before, "triage_instances_total", outcome="refused")
            == 1
        )
        assert metric(after, "triage_store_writable") == 1

        # The receiver keeps serving; the sender retries what was not acknowledged.
        assert echoscu(node.port).returncode == 0
        rest = [f for f in files if uid_of[f] not in acknowledged]
        again = storescu(node.port, *rest)
        assert again.returncode == 0, again.stdout + again.stderr
        stored = stored_uids(node)
        assert sorted(stored) == sorted(uid_of.values())  # every instance, each once
        assert spooled_without_row(node) == []


def test_disk_below_watermark_refuses_with_out_of_resources_until_space_is_freed(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "node-data"
    data_dir.mkdir()
    # The watermark sits in the middle of a filler file the test allocates: above it
    # before the filler, below it with the filler (other processes' writes move free
    # space by far less than half the filler while this runs).
    filler_bytes = 2048 * _MB
    free = shutil.disk_usage(data_dir).free
    assert free > 2 * filler_bytes, "not enough free disk for this test"
    watermark_mb = (free - filler_bytes // 2) // _MB
    first = radiographs(tmp_path / "first", 3)
    refused_files = radiographs(tmp_path / "second", 3, first_seed=10)
    with node_running(
        tmp_path,
        command="receive",
        data_dir=data_dir,
        receive={"min_free_disk_mb": watermark_mb, "fsync": False},
        retention={"enabled": False},
    ) as node:
        ready = wait_for(lambda: readyz(node), "/readyz", node)
        assert ready[0] == 200 and ready[1]["checks"]["disk"]["ok"] is True
        assert storescu(node.port, *first).returncode == 0
        assert sorted(stored_uids(node)) == sorted(sop_uid(f) for f in first)
        before = scrape(node)

        filler = tmp_path / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, filler_bytes)
        finally:
            os.close(fd)
        try:
            assert shutil.disk_usage(data_dir).free < watermark_mb * _MB
            # -nh: storescu would stop at the first refusal; a router sends on
            burst = StoreRun(node.port, refused_files, tmp_path / "storescu.log", "-nh")
            statuses = burst.wait()
            assert sorted(statuses) == sorted(refused_files), burst.output()
            assert set(statuses.values()) == {"Refused: OutOfResources"}
            code, doc = readyz(node) or (0, {})
            assert code == 503 and doc["ready"] is False
            assert doc["checks"]["disk"]["ok"] is False
            assert "0xA700" in doc["checks"]["disk"]["detail"]
            full = scrape(node)
            assert metric(full, "triage_free_disk_bytes") < metric(
                full, "triage_free_disk_watermark_bytes"
            )
            assert metric(full, "triage_instances_total", outcome="refused") - metric(
                before, "triage_instances_total", outcome="refused"
            ) == len(refused_files)
            assert sorted(stored_uids(node)) == sorted(sop_uid(f) for f in first)
            assert "free disk below receive.min_free_disk_mb" in node.log_text()
        finally:
            filler.unlink()

        ready = wait_for(
            lambda: (r := readyz(node)) and r[0] == 200 and r, "/readyz ready again", node
        )
        assert ready[1]["checks"]["disk"]["ok"] is True
        again = storescu(node.port, *refused_files)
        assert again.returncode == 0, again.stdout + again.stderr
        stored = stored_uids(node)
        assert len(stored) == len(set(stored))
        assert sorted(stored) == sorted(sop_uid(f) for f in first + refused_files)
        recovered = scrape(node)
        assert metric(recovered, "triage_free_disk_bytes") >= metric(
            recovered, "triage_free_disk_watermark_bytes"
        )
