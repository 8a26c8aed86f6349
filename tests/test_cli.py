"""The command line's contract: usage checked before the config, errors on stderr, exit codes.

Every command runs as ``python -m triage_node`` (the installed ``triage-node``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.peers import run_cli, write_config
from triage_node.commands.main import build_parser
from triage_node.synth import make_instance


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "node.toml", {"node": {"data_dir": str(tmp_path / "data")}})


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory and a labels CSV (no rows): usage-valid, not trainable."""
    data = tmp_path / "cohort"
    data.mkdir()
    labels = data / "labels.csv"
    labels.write_text("file,label\n")
    return data, labels


@pytest.mark.parametrize("command", ["train", "evaluate", "calibrate"])
def test_bad_data_is_a_usage_error_before_the_config_is_read(
    tmp_path: Path, labelled: tuple[Path, Path], command: str
) -> None:
    _, labels = labelled
    missing_config = tmp_path / "nope.toml"
    args = [command, "--data", str(tmp_path / "no-such-dir"), "--labels", str(labels)]
    if command in ("train", "calibrate"):
        args += ["--out", str(tmp_path / "bundle")]
    proc = run_cli(*args, config=missing_config, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert f"usage: triage-node {command}" in proc.stderr
    assert "--data" in proc.stderr and "is not a directory" in proc.stderr
    assert "nope.toml" not in proc.stderr, "the config was read before the usage check"


def test_score_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli("score", str(tmp_path / "gone.dcm"), config=tmp_path / "nope.toml", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "gone.dcm is not a file" in proc.stderr and "nope.toml" not in proc.stderr


def test_resend_takes_study_uids_or_failed_not_both(config: Path) -> None:
    proc = run_cli("resend", "1.2.3", "--failed", config=config, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage: triage-node resend" in proc.stderr and "not allowed with" in proc.stderr


def test_worklist_limit_below_one_is_a_usage_error(config: Path) -> None:
    proc = run_cli("worklist", "--limit", "0", config=config, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--limit" in proc.stderr and "at least 1" in proc.stderr


def test_runtime_failures_go_to_stderr_and_exit_1(
    tmp_path: Path, config: Path, labelled: tuple[Path, Path]
) -> None:
    data, labels = labelled
    image = tmp_path / "hip.dcm"
    make_instance(1).save_as(image, enforce_file_format=True)
    missing = str(tmp_path / "no-bundle")
    runs = {
        "score": ["score", "--bundle", missing, "--json", str(image)],
        "evaluate": ["evaluate", "--bundle", missing, "--data", str(data), "--labels", str(labels)],
        "calibrate": [
            "calibrate",
            "--bundle",
            missing,
            "--data",
            str(data),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "calibrated"),
        ],  # fmt: skip
    }
    for command, args in runs.items():
        proc = run_cli(*args, config=config, check=False)
        assert proc.returncode == 1, (command, proc.stderr)
        assert proc.stdout == "", command
        assert proc.stderr.startswith(f"triage-node {command}: "), proc.stderr
        assert "Traceback" not in proc.stderr


def test_score_json_is_one_document_with_unscorable_files_in_it(
    tmp_path: Path, config: Path
) -> None:
    image = tmp_path / "hip.dcm"
    make_instance(2).save_as(image, enforce_file_format=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a DICOM file\n")
    proc = run_cli(
        "score", "--bundle", "demo", "--json", str(image), str(notes), config=config, check=False
    )
    assert proc.returncode == 1, proc.stderr  # one file could not be scored
    results = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert [r["file"] for r in results] == [str(image), str(notes)]
    scored, failed = results
    assert "error" not in scored and scored["model_name"] and len(scored["sides"]) == 2
    assert (scored["probability"] is None) != (scored["not_assessable_reason"] is None)
    assert failed["error"].startswith("cannot score")
    assert f"triage-node score: {notes}: cannot score" in proc.stderr
    # In our words, not pydicom's advice to its callers ("Use force=True ...").
    assert failed["error"] == "cannot score: not a DICOM file (no DICM preamble)"
    assert "force" not in proc.stderr


def test_no_progress_is_accepted_by_every_command_with_a_progress_bar(tmp_path: Path) -> None:
    data, labels = tmp_path, tmp_path / "labels.csv"
    labels.write_text("file,label\n")
    common = ["--data", str(data), "--labels", str(labels)]
    with_progress = {
        "synth": ["--out", str(tmp_path / "out")],
        "train": [*common, "--out", str(tmp_path / "bundle")],
        "evaluate": common,
        "calibrate": [*common, "--out", str(tmp_path / "calibrated")],
    }
    for command, args in with_progress.items():
        parser = build_parser(command)
        assert parser.parse_args([command, *args]).progress is True
        assert parser.parse_args([command, *args, "--no-progress"]).progress is False


def test_synth_without_progress_writes_a_cohort(tmp_path: Path, config: Path) -> None:
    out = tmp_path / "cohort"
    args = ["--out", str(out), "--n", "1", "--size", "small", "--jobs", "1", "--no-progress"]
    proc = run_cli("synth", *args, config=config)
    assert proc.stdout.startswith(f"synth: wrote 1 images to {out}")
    assert "%|" not in proc.stderr  # no progress bar
    assert (out / "labels.csv").exists() and (out / "synth_00000.dcm").exists()
