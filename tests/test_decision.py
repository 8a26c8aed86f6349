"""One decision rule: the image (and study) decision never contradicts a side's.

The image value is the highest probability of the assessed sides and the image
is positive (DXA recommended) iff at least one assessed side is; the bilateral
head's value decides nothing (docs/model.md, "The decision rule"). Proved on
crafted assessments, then checked through the real ``score --json`` on a fresh
synthetic cohort (``bench/decision_check`` runs the same check on n >= 200).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.peers import run_cli
from triage_node.assessment import ImageAssessment, SideAssessment, is_positive
from triage_node.synth import generate_cohort

N_IMAGES = 24  # the acceptance run (n >= 200) is bench/decision_check
THRESHOLDS = (0.0, 0.2, 0.37, 0.5, 1.0)
SIDE_VALUES: tuple[float | str, ...] = (0.0, 0.19, 0.2, 0.33, 0.37, 0.38, 0.62, 1.0, "prosthesis")


def contradictions(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """What is wrong with each ``score --json`` object whose image decision disagrees with its
    sides: the image value must be the highest assessed side and the image positive iff a
    side is; with no assessed side both are null. Objects with ``error`` are skipped."""
    problems = []
    for result in results:
        if "error" in result:
            continue
        name = result["file"]
        assessed = [s for s in result["sides"] if s["probability"] is not None]
        if not assessed:
            if result["probability"] is not None or result["positive"] is not None:
                problems.append(f"{name}: no side assessed, but the image has a value")
            continue
        highest = max(s["probability"] for s in assessed)
        any_side = any(s["positive"] for s in assessed)
        if result["probability"] != highest:
            problems.append(f"{name}: image p={result['probability']} != highest side {highest}")
        if result["positive"] != any_side:
            problems.append(f"{name}: image positive={result['positive']}, sides say {any_side}")
        for s in assessed:
            if s["positive"] != is_positive(s["probability"], result["threshold"]):
                problems.append(f"{name}: {s['side']} decision is not the rule's")
    return problems


def crafted(
    left: float | str | None, right: float | str | None, threshold: float, combined: float | None
) -> ImageAssessment:
    """An assessment as a model gives it; a string is a not-assessable reason, None no side."""
    sides = []
    for side, value in (("left", left), ("right", right)):
        if isinstance(value, str):
            sides.append(SideAssessment(side, None, not_assessable_reason=value))  # type: ignore[arg-type]
        elif value is not None:
            sides.append(SideAssessment(side, value, positive=is_positive(value, threshold)))  # type: ignore[arg-type]
    return ImageAssessment(
        sides=tuple(sides),
        model_name="DTC",
        model_version="test",
        threshold=threshold,
        synthetic_model=True,
        combined_probability=combined,
    )


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_the_image_decision_is_the_sides_decision_on_every_crafted_case(threshold: float) -> None:
    values: tuple[float | str | None, ...] = (*SIDE_VALUES, None)
    for left, right, combined in itertools.product(values, values, (None, 0.0, 0.2, 0.8, 1.0)):
        result = crafted(left, right, threshold, combined)
        probabilities = [v for v in (left, right) if isinstance(v, float)]
        if not probabilities:
            assert result.probability is None and result.positive is None, (left, right)
            assert not result.assessable
            continue
        case = (left, right, threshold, combined)
        # the value: the highest assessed side, whatever the bilateral head said
        assert result.probability == max(probabilities), case
        # the decision: positive iff a side is, and it is the rule applied to the value
        assert result.positive == any(s.positive for s in result.sides if s.positive is not None)
        assert result.positive == any(is_positive(p, threshold) for p in probabilities), case
        assert result.positive == is_positive(max(probabilities), threshold), case
        # what score --json and the store carry says the same after a round trip
        data = json.loads(json.dumps(result.to_json()))
        assert (data["probability"], data["positive"]) == (result.probability, result.positive)
        again = ImageAssessment.from_json(data)
        assert (again.probability, again.positive) == (result.probability, result.positive)
        assert contradictions([{"file": "crafted", **data}]) == []


def test_sample_03s_case_is_positive_although_the_bilateral_value_is_low() -> None:
    # docs/model.md: left 0.38 (DXA recommended), right 0.33, bilateral 0.20, operating point 0.37
    result = crafted(0.38, 0.33, 0.37, 0.20)
    assert result.probability == 0.38 and result.positive is True
    one_side = crafted("femur not found", 0.36, 0.37, 0.36)
    assert one_side.probability == 0.36 and one_side.positive is False


def test_the_checker_finds_a_contradiction() -> None:
    good = {"file": "a", **crafted(0.62, 0.52, 0.37, 0.8).to_json()}
    assert contradictions([good]) == []
    bilateral_decides = {**good, "probability": 0.8}
    assert contradictions([bilateral_decides]) == ["a: image p=0.8 != highest side 0.62"]
    study_negative = {**good, "positive": False}
    assert contradictions([study_negative]) == ["a: image positive=False, sides say True"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, N_IMAGES, seed=12, size="small", jobs=2, progress=False)
    return out


def test_score_json_never_contradicts_a_side_on_a_fresh_cohort(cohort: Path) -> None:
    files = sorted(str(p) for p in cohort.glob("synth_*.dcm"))
    proc = run_cli("score", "--bundle", "demo", "--json", *files, timeout=600)
    results = json.loads(proc.stdout)
    assert [r["file"] for r in results] == files
    assert contradictions(results) == []
    decisions = [r["positive"] for r in results if r["probability"] is not None]
    assert len(decisions) >= N_IMAGES - 4, "most synthetic hips are assessable"
    assert True in decisions and False in decisions, "the cohort has both decisions"


def test_score_text_says_dxa_recommended_or_low_likelihood(cohort: Path) -> None:
    files = sorted(str(p) for p in cohort.glob("synth_*.dcm"))[:6]
    text = run_cli("score", "--bundle", "demo", *files, timeout=600).stdout
    assert "POSITIVE" not in text and "negative" not in text
    image_lines = [line.strip() for line in text.splitlines() if line.strip().startswith("image:")]
    assert len(image_lines) == len(files)
    for line in image_lines:
        assert (
            line.endswith(
                (
                    "DXA recommended (highest assessed side)",
                    "low likelihood (highest assessed side)",
                )
            )
            or "not assessable" in line
        )
