"""Logging: JSON lines with extras, plain text on a terminal, and the PHI scrub backstop."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from triage_node.config import Settings
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
