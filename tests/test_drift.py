"""The drift watch: each scanner's stream from the store, compared with the bundle's reference."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from tests.peers import (
    REPO,
    NodeProcess,
    need_tool,
    node_running,
    run_cli,
    storescu,
    wait_for,
    write_config,
)
from tests.test_faults import metric, scrape
from triage_node.assessment import HISTOGRAM_EDGES, ImageAssessment, Side, SideAssessment
from triage_node.config import DriftSection
from triage_node.score.bundle import DEMO_BUNDLE_DIR, read_manifest, write_bundle
from triage_node.score.reference import REFERENCE_FILE, ValidationReference
from triage_node.store import Instance, Store, Study
from triage_node.store.migrate import upgrade
from triage_node.store.models import InstanceState, utcnow
from triage_node.store.queries import ScannerSummary, scanner_summaries
from triage_node.telemetry import metrics
from triage_node.work.drift import RateCheck, ScannerDrift, judge_scanner

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    upgrade(s)
    yield s
    s.dispose()


def _assessment(left: float | str, right: float | str, threshold: float = 0.5) -> ImageAssessment:
    def side(s: Side, v: float | str) -> SideAssessment:
        if isinstance(v, str):
            return SideAssessment(s, None, v)
        return SideAssessment(s, v, positive=v >= threshold)

    return ImageAssessment(
        sides=(side("right", right), side("left", left)),
        model_name="m",
        model_version="v",
        threshold=threshold,
        synthetic_model=True,
    )


def _add(
    store: Store,
    scanner: tuple[str | None, str | None],
    state: InstanceState,
    assessment: ImageAssessment | None = None,
    *,
    received_at: dt.datetime = NOW,
    own_result: bool = False,
) -> None:
    """One instance row as the receiver and the score job leave it."""
    with store.write() as session:
        study = Study(study_instance_uid=generate_uid())
        session.add(study)
        session.flush()
        session.add(
            Instance(
                sop_instance_uid=generate_uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                study_id=study.id,
                study_instance_uid=study.study_instance_uid,
                series_instance_uid=generate_uid(),
                modality="DX",
                body_part="HIP",
                manufacturer=scanner[0],
                model_name=scanner[1],
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="x.dcm",
                size_bytes=1,
                own_result=own_result,
                received_at=received_at,
                updated_at=utcnow(),
                state=state,
                probability=assessment.probability if assessment else None,
                result={"assessment": assessment.to_json()} if assessment else None,
            )
        )


ACME = ("Acme", "DR 1")
OTHER = ("Other Co", "CR 7")


def test_scanner_summaries_count_each_scanners_stream_in_the_window(store: Store) -> None:
    scored, na = InstanceState.SCORED, InstanceState.NOT_ASSESSABLE
    _add(store, ACME, scored, _assessment(0.72, 0.31))  # positive, value 0.72
    _add(store, ACME, scored, _assessment(0.05, "prosthesis or metal in the hip"))  # 0.05
    _add(store, ACME, na, _assessment("femur not found", "femur not found"))
    _add(store, ACME, InstanceState.QUEUED)
    _add(store, ACME, InstanceState.SKIPPED)
    _add(store, ACME, InstanceState.FAILED)
    _add(store, ACME, scored, _assessment(0.99, 0.99), own_result=True)  # never counted
    _add(store, ACME, scored, _assessment(0.99, 0.99), received_at=NOW - dt.timedelta(days=8))
    _add(store, OTHER, scored, _assessment(0.5, 0.2))  # at the threshold: positive
    _add(store, (None, None), InstanceState.SKIPPED)

    with store.read() as session:
        acme, other, unknown = scanner_summaries(session, NOW - dt.timedelta(days=7))
    assert (acme.manufacturer, acme.model_name) == ACME
    assert (acme.received, acme.skipped, acme.waiting, acme.failed) == (6, 1, 1, 1)
    assert (acme.judged, acme.assessable, acme.not_assessable, acme.positives) == (3, 2, 1, 1)
    assert acme.hips == 6
    assert acme.hip_reasons == {"femur not found": 2, "prosthesis or metal in the hip": 1}
    assert acme.histogram == (1, 0, 0, 0, 0, 0, 0, 1, 0, 0)
    assert acme.positive_rate == 0.5 and acme.not_assessable_rate == pytest.approx(1 / 3)
    assert acme.hip_reason_rate("femur not found") == pytest.approx(2 / 6)
    assert acme.hip_reason_rate("side not in the image") == 0
    assert (other.positives, other.histogram[5]) == (1, 1)
    assert (unknown.manufacturer, unknown.received, unknown.judged) == (None, 1, 0)
    assert unknown.positive_rate is None and unknown.not_assessable_rate is None

    with store.read() as session:  # a window that ends before the stream
        assert scanner_summaries(session, NOW - dt.timedelta(days=9), NOW - dt.timedelta(days=7))[
            0
        ].histogram == (0,) * 9 + (1,)


# --- the comparison with the reference -------------------------------------------------------

#: A reference like a validation split: 1,000 images, 2% not assessable, 30% positive.
REFERENCE = ValidationReference(
    source="test",
    threshold=0.5,
    images=1000,
    scored=980,
    positives=294,
    sides=2000,
    side_reasons={"femur not found": 30, "prosthesis or metal in the hip": 10},
    histogram=(400, 100, 80, 70, 60, 60, 50, 60, 50, 50),
)


def _summary(judged: int, not_assessable: int, positives: int, **reasons: int) -> ScannerSummary:
    return ScannerSummary(
        manufacturer="Acme",
        model_name="DR 1",
        received=judged,
        assessable=judged - not_assessable,
        not_assessable=not_assessable,
        positives=positives,
        hips=2 * judged,
        hip_reasons={k.replace("_", " "): v for k, v in reasons.items()},
    )


def _checks(drift: ScannerDrift) -> dict[str, RateCheck]:
    return {c.name: c for c in drift.checks}


def test_a_scanner_like_the_reference_is_in_range_and_a_jump_is_not() -> None:
    settings = DriftSection(min_images=50)
    steady = judge_scanner(_summary(200, 4, 59, femur_not_found=6), REFERENCE, settings, 0.5)
    assert steady.out_of_range == ()
    assert {c.judged for c in steady.checks} == {True}
    # 15% not assessable, the extra hips "femur not found" (as at the second site of #15).
    jumped = judge_scanner(_summary(200, 30, 59, femur_not_found=60), REFERENCE, settings, 0.5)
    assert [c.name for c in jumped.out_of_range] == [
        "not_assessable",
        "hip_not_assessable: femur not found",
    ]
    check = _checks(jumped)["not_assessable"]
    assert check.observed == 0.15 and check.reference == pytest.approx(0.02)
    assert check.expected_low is not None and check.expected_high is not None
    assert check.expected_low <= 0.02 < check.expected_high < 0.15
    # A positive rate that doubles is out of range too.
    assert [
        c.name for c in judge_scanner(_summary(200, 4, 120), REFERENCE, settings).out_of_range
    ] == ["positive"]


def test_few_images_a_new_reason_and_another_operating_point_raise_no_alarm() -> None:
    settings = DriftSection(min_images=50)
    few = judge_scanner(_summary(20, 10, 2), REFERENCE, settings, 0.5)  # half not assessable
    assert few.out_of_range == () and {c.note for c in few.checks} == {"too few images"}
    # One hip with a reason the reference never saw: within what its 2,000 hips allow.
    new = judge_scanner(_summary(200, 4, 59, side_not_in_the_image=1), REFERENCE, settings, 0.5)
    assert _checks(new)["hip_not_assessable: side not in the image"].judged
    assert new.out_of_range == ()
    other = judge_scanner(_summary(200, 4, 150), REFERENCE, settings, threshold=0.3)
    positive = _checks(other)["positive"]
    assert not positive.judged and "operating point 0.3" in positive.note


def test_the_shipped_drift_rule_passes_its_promtool_unit_test() -> None:
    """``promtool check rules`` and ``promtool test rules`` on deploy/prometheus: the drift
    alert fires after an hour out of range, for the scanner that left it only."""
    promtool = need_tool("promtool")
    rules = REPO / "deploy" / "prometheus"
    for args in (
        ["check", "rules", "triage-node.rules.yml"],
        ["test", "rules", "triage-node.rules.test.yml"],
    ):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=rules)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_image_value_buckets_are_the_reference_bins() -> None:
    assert (0.0, *metrics.VALUE_BUCKETS) == HISTOGRAM_EDGES


# --- a real node: the gauges, the alert rule and `status` ------------------------------------

SAMPLES = REPO / "samples"
STEADY = ("Steady Imaging", "SD-1")
JUMPY = ("Jumpy Imaging", "JX-2")


def _bundle(directory: Path, reference: ValidationReference | None) -> Path:
    """The demo bundle's model with ``reference`` (or none): made for this test, so the
    test does not depend on the shipped bundle's own figures."""
    manifest = read_manifest(DEMO_BUNDLE_DIR)
    files = {
        name: (DEMO_BUNDLE_DIR / name).read_bytes()
        for name in manifest.files
        if name != REFERENCE_FILE
    }
    if reference is not None:
        files[REFERENCE_FILE] = reference.dumps().encode()
    return write_bundle(directory, manifest, files)


def _images(directory: Path, sample: str, scanner: tuple[str, str], n: int) -> list[Path]:
    """``n`` copies of a sample radiograph as new instances made by ``scanner``."""
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(SAMPLES / sample)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()  # dcmtk's storescu proposes uncompressed transfer syntaxes
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Manufacturer, ds.ManufacturerModelName = scanner
        path = directory / f"{scanner[1]}-{Path(sample).stem}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _out_of_range(samples: dict[Any, float]) -> dict[tuple[str, str, str], float]:
    """``triage_drift_out_of_range`` by (model name, rate, reason)."""
    return {
        (labels["model_name"], labels["rate"], labels["reason"]): value
        for (name, key), value in samples.items()
        if name == "triage_drift_out_of_range"
        for labels in [dict(key)]
    }


def _judged(node: NodeProcess, scanner: tuple[str, str], n: int) -> dict[Any, float] | None:
    """The scrape once the model has judged ``n`` images of ``scanner``."""
    samples = scrape(node)
    judged = sum(
        metric(
            samples,
            "triage_drift_images",
            manufacturer=scanner[0],
            model_name=scanner[1],
            outcome=outcome,
        )
        for outcome in ("assessable", "not_assessable")
    )
    return samples if judged >= n else None


def _promtool_alerts(tmp_path: Path, samples: dict[Any, float]) -> str:
    """Run the shipped alert rule (``promtool test rules``) over the node's out-of-range
    gauges held for 90 minutes; the expected alerts are in the test file it writes."""
    series = [
        {
            "series": "triage_drift_out_of_range{"
            + ",".join(f'{k}="{v}"' for k, v in (("instance", "node"), *key) if v)
            + "}",
            "values": f"{int(value)}x90",
        }
        for (name, key), value in samples.items()
        if name == "triage_drift_out_of_range"
    ]
    test = {
        "rule_files": [str(REPO / "deploy" / "prometheus" / "triage-node.rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": "count by (model_name, rate, reason) "
                        '(ALERTS{alertname="TriageNodeScannerDrift", alertstate="firing"})',
                        "eval_time": "70m",
                        "exp_samples": [
                            {"labels": '{model_name="JX-2", rate="not_assessable"}', "value": 1},
                            {
                                "labels": '{model_name="JX-2", rate="hip_not_assessable", '
                                'reason="femur not found"}',
                                "value": 1,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "drift.rules.test.yml"
    path.write_text(yaml.safe_dump(test))
    proc = subprocess.run(
        [need_tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_scanner_whose_not_assessable_rate_jumps_is_out_of_range_and_alerts(
    tmp_path: Path,
) -> None:
    """A node receives two scanners' images: Steady's stay like the reference; Jumpy's
    start so, then turn blank (the model finds no femur). Jumpy's not-assessable rates
    leave their expected range on /metrics, the shipped alert rule fires for Jumpy only,
    and `status` names it; with a bundle without a reference, `status` says so."""
    threshold = read_manifest(DEMO_BUNDLE_DIR).operating_point.threshold
    reference = ValidationReference(
        source="made for this test",
        threshold=threshold,
        images=1000,
        scored=980,
        positives=490,
        sides=2000,
        side_reasons={"femur not found": 20},
        histogram=(98,) * 10,
    )
    bundle = _bundle(tmp_path / "bundle", reference)
    images = tmp_path / "images"
    images.mkdir()
    steady = _images(images, "02_normal_mono1.dcm", STEADY, 4)
    jumpy_before = _images(images, "02_normal_mono1.dcm", JUMPY, 4)
    jumpy_blank = _images(images, "09_blank.dcm", JUMPY, 8)

    with node_running(
        tmp_path,
        model={"bundle": str(bundle)},
        drift={"min_images": 4, "refresh_seconds": 0},
    ) as node:
        proc = storescu(node.port, *steady, *jumpy_before)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        wait_for(lambda: _judged(node, STEADY, 4), "Steady's 4 images judged", 300, node)
        samples = wait_for(lambda: _judged(node, JUMPY, 4), "Jumpy's 4 images", 300, node)
        before = _out_of_range(samples)
        assert before[("JX-2", "not_assessable", "")] == 0
        assert before[("SD-1", "not_assessable", "")] == 0
        assert metric(samples, "triage_drift_reference_available") == 1

        proc = storescu(node.port, *jumpy_blank)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        samples = wait_for(lambda: _judged(node, JUMPY, 12), "Jumpy's 12 images", 300, node)
        after = _out_of_range(samples)
        assert after[("JX-2", "not_assessable", "")] == 1
        assert after[("JX-2", "hip_not_assessable", "femur not found")] == 1
        assert {k: v for k, v in after.items() if k[0] == "SD-1"} == {
            ("SD-1", "positive", ""): 0,
            ("SD-1", "not_assessable", ""): 0,
            ("SD-1", "hip_not_assessable", "femur not found"): 0,
        }
        jumpy_rate = {
            "manufacturer": JUMPY[0],
            "model_name": JUMPY[1],
            "rate": "not_assessable",
            "reason": "",
        }
        assert metric(samples, "triage_drift_rate", **jumpy_rate) == pytest.approx(8 / 12)
        high = metric(samples, "triage_drift_expected_high", **jumpy_rate)
        assert metric(samples, "triage_drift_expected_low", **jumpy_rate) <= 0.02 < high < 8 / 12
        # The scored images' values, by scanner, as a Prometheus histogram.
        assert (
            metric(
                samples, "triage_image_value_count", manufacturer=STEADY[0], model_name=STEADY[1]
            )
            == 4
        )

        _promtool_alerts(tmp_path, samples)

        status = json.loads(run_cli("status", "--json", config=node.config_path).stdout)
        assert [o["scanner"] for o in status["drift"]["out_of_range"]] == ["Jumpy Imaging / JX-2"]
        text = run_cli("status", config=node.config_path).stdout
        assert (
            "OUT OF RANGE" in text and "Jumpy Imaging / JX-2: not_assessable 67% (8 of 12" in text
        )
        assert "Steady Imaging" not in text

        # The same database judged by a bundle without a reference: nothing is judged.
        other = tomllib.loads(node.config_path.read_text())
        other["model"] = {"bundle": str(_bundle(tmp_path / "no-reference", None))}
        config = write_config(tmp_path / "no-reference.toml", other)
        status = json.loads(run_cli("status", "--json", config=config, check=False).stdout)
        assert status["drift"]["unjudged"] == "no reference"
        assert status["drift"]["out_of_range"] == []
        text = run_cli("status", config=config, check=False).stdout
        assert "no reference in the model bundle: scanners are not judged  (2 scanners" in text
