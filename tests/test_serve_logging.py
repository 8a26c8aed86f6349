"""Logging: JSON lines with extras, plain text on a terminal, and the PHI scrub backstop."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import REPO, NodeProcess, node_running, storescu, wait_for
from tests.test_report import assessment, source
from triage_node.config import Settings
from triage_node.report.sr import build_study_report
from triage_node.telemetry.logs import setup_logging


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _settings(**logging_section: str) -> Settings:
    return Settings.model_validate({"logging": logging_section})


def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    setup_logging(_settings(level="INFO", format="auto"), stream=out)
    log = logging.getLogger("triage_node.test")
    log.info("job %s done", 7, extra={"job_id": 7, "sop_instance_uid": "1.2.3"})
    log.debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["level"] == "INFO" and doc["logger"] == "triage_node.test"
    assert doc["message"] == "job 7 done" and doc["job_id"] == 7
    assert doc["sop_instance_uid"] == "1.2.3" and doc["time"].endswith("+00:00")


def test_text_on_a_terminal_and_json_when_asked() -> None:
    tty = _Tty()
    setup_logging(_settings(level="DEBUG", format="auto"), stream=tty)
    logging.getLogger("triage_node.test").debug("hello", extra={"job_id": 3})
    line = tty.getvalue().strip()
    assert "DEBUG" in line and "hello" in line and "job_id=3" in line
    assert not line.startswith("{")
    tty2 = _Tty()
    setup_logging(_settings(format="json"), stream=tty2)
    logging.getLogger("triage_node.test").warning("w")
    assert json.loads(tty2.getvalue())["level"] == "WARNING"
    # The second setup replaced the first handler instead of adding one.
    assert sum(getattr(h, "_triage_node", False) for h in logging.getLogger().handlers) == 1
    assert tty.getvalue().count("\n") == 1


def test_phi_looking_extras_are_scrubbed() -> None:
    out = io.StringIO()
    setup_logging(_settings(format="json"), stream=out)
    logging.getLogger("triage_node.test").error(
        "bad instance",
        extra={
            "patient_name": "Secret^Patient",
            "PatientID": "PID-42",
            "details": {"PatientBirthDate": "19400101", "rows": 3},
            "sop_instance_uid": "1.2.3",
        },
    )
    text = out.getvalue()
    assert "Secret" not in text and "PID-42" not in text and "19400101" not in text
    doc = json.loads(text)
    assert doc["patient_name"] == "[redacted]" and doc["PatientID"] == "[redacted]"
    assert doc["details"] == {"PatientBirthDate": "[redacted]", "rows": 3}
    assert doc["sop_instance_uid"] == "1.2.3"


def test_radiomics_steps_stay_out_of_the_node_log_at_info() -> None:
    """pyradiomics logs several INFO lines for every ROI it extracts: at the node's
    INFO level they would be most of the log. Its warnings still come through."""
    import numpy as np

    from triage_node.score.texture import extract_selected_texture

    out = io.StringIO()
    setup_logging(_settings(level="INFO", format="json"), stream=out)
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 40), np.uint8)
    mask[8:32, 8:32] = 1
    values = extract_selected_texture(
        rng.normal(size=(40, 40)), mask, ["original_firstorder_Mean", "original_glcm_Contrast"]
    )
    assert len(values) == 2
    logging.getLogger("radiomics.featureextractor").warning("kept")
    loggers = [json.loads(line)["logger"] for line in out.getvalue().splitlines()]
    assert loggers == ["radiomics.featureextractor"], out.getvalue()[-2000:]


def _lines(node: NodeProcess) -> list[dict[str, object]]:
    docs = []
    for line in node.log_text().splitlines():
        if line.startswith("{"):
            docs.append(json.loads(line))
    return docs


def test_highdicom_and_pydicom_info_stay_out_of_the_node_log_at_info(tmp_path: Path) -> None:
    """A quickstart node at INFO: a hip image scored and reported (SR and heatmap built
    with highdicom) leaves no INFO line of highdicom or pydicom in the node's log."""
    sample = REPO / "samples" / "02_normal_mono1.dcm"
    with node_running(tmp_path, logging={"format": "json", "level": "INFO"}) as node:
        proc = storescu(node.port, sample)
        assert proc.returncode == 0, proc.stderr

        def reported() -> bool:
            return any(
                d.get("message") == "job done" and d.get("job_kind") == "report"
                for d in _lines(node)
            )

        wait_for(reported, "the report job", 600, node)
        libraries = [
            d
            for d in _lines(node)
            if str(d["logger"]).split(".")[0] in ("highdicom", "pydicom")
            and d["level"] in ("DEBUG", "INFO")
        ]
        assert libraries == [], libraries[:5]


def test_highdicom_info_is_kept_at_debug() -> None:
    """At DEBUG the node's log has what highdicom says while it builds a report."""
    out = io.StringIO()
    setup_logging(_settings(level="DEBUG", format="json"), stream=out)
    build_study_report([source()], [assessment()], report_version=1)
    loggers = {json.loads(line)["logger"] for line in out.getvalue().splitlines()}
    assert any(name.startswith("highdicom") for name in loggers), loggers
