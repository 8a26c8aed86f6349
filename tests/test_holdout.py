"""``evaluate --hold-out-profile``: train on the other profiles, test on the held-out one.

A small synth cohort mixes ``default``, ``cr_unshuttered`` and ``dx_clipped`` (one per
image). The networks come from a tiny bundle trained on the ``default`` images only
(``train`` records that in model.json); a fold holding out ``cr_unshuttered`` refits the
heads on the other two profiles and scores the ``cr_unshuttered`` images, by the real CLI.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from triage_node.commands.main import main
from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle, write_bundle
from triage_node.score.femur_finder import FINDER_FILE
from triage_node.score.manifest import VARIANTS, BundleManifest
from triage_node.score.model import MODEL_FILE
from triage_node.score.texture import RANK, texture_feature_names
from triage_node.train.stability import ICC_KIND, Stability, feature_iccs, stable_features

N_IMAGES = 48  # seed 23: 14 default (7 positive), 17 cr_unshuttered (11), 17 dx_clipped (11)
PROFILES = ("default", "cr_unshuttered", "dx_clipped")
HELD_OUT = "cr_unshuttered"


def _rows(labels: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(labels, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, columns: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rewritten(source: Path, out: Path, replace_files: dict[str, bytes]) -> Path:
    """A new bundle version of ``source`` with some files replaced (its own manifest)."""
    bundle = load_bundle(source)
    files = {name: bundle.raw(name) for name in bundle.manifest.files}
    files.update(replace_files)
    data = bundle.manifest.to_json()
    data["version"] = f"{data['version']}.{out.name}"
    return write_bundle(out, BundleManifest.from_json(data), files)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from triage_node.synth import generate_cohort

    out = tmp_path_factory.mktemp("mixed")
    generate_cohort(
        out, N_IMAGES, seed=23, size="small", prevalence=0.5, jobs=2, progress=False,
        profiles=PROFILES,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def networks(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Networks trained on the default images only, as ``train`` records them.

    The tiny femur finder such a run trains (a few masked images, one epoch) finds few
    femurs; the bundle then takes the demo bundle's finder, which was trained on default
    synth images too (its cohort had no profiles), so the record stays true.
    """
    work = tmp_path_factory.mktemp("networks")
    columns, rows = _rows(cohort / "labels.csv")
    labels = _write(work / "default.csv", columns, [r for r in rows if r["profile"] == "default"])
    args = [
        "train", "--data", str(cohort), "--labels", str(labels), "--out", str(work / "tiny"),
        "--cache", str(work / "cache"), "--seed", "3", "--epochs", "1", "--finder-epochs", "1",
        "--finder-images", "4", "--finder-negatives", "2", "--texture-budget", "0.01",
        "--jobs", "2", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    info = load_bundle(work / "tiny").read_json(MODEL_FILE)
    assert info["training_profiles"] == info["networks_training_profiles"] == ["default"]
    finder = load_bundle(DEMO_BUNDLE_DIR).raw(FINDER_FILE)
    return _rewritten(work / "tiny", work / "bundle", {FINDER_FILE: finder})


def _stability(path: Path) -> Path:
    """A rank stability file over cr_unshuttered, dx_clipped and compressed, with its raw
    values: under cr_unshuttered all but the last 25 features move, so with it 25 are kept
    and without it all 325."""
    names = texture_feature_names()
    rng = np.random.default_rng(0)
    values = np.repeat(rng.normal(size=(30, 1, len(names))), 3, axis=1)
    values += 0.05 * rng.normal(size=values.shape)
    values[:, 0, :-25] += 3.0 * rng.normal(size=(30, len(names) - 25))
    iccs = feature_iccs(values, names)
    profiles = ("cr_unshuttered", "dx_clipped", "compressed")
    stability = Stability(stable_features(iccs), 0.75, ICC_KIND, RANK, profiles, 15, 30, 1, iccs)
    assert len(stability.kept) == 25
    return stability.write(path, values)


@pytest.fixture(scope="session")
def holdout(cohort: Path, networks: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("holdout")
    report = work / "report"
    args = [
        "evaluate", "--hold-out-profile", HELD_OUT, "--data", str(cohort),
        "--labels", str(cohort / "labels.csv"), "--report", str(report),
        "--networks-from", str(networks), "--bundle", str(networks),
        "--cache", str(networks.parent / "cache"), "--seed", "3", "--texture-budget", "0.01",
        "--texture-normalisation", "rank", "--texture-stability",
        str(_stability(work / "stability.json")),
        "--jobs", "2", "--threads", "1", "--no-progress", "--json",
    ]  # fmt: skip
    assert main(args) == 0
    return report


def test_fold_trains_without_the_held_out_profile(holdout: Path, cohort: Path) -> None:
    fold = holdout / HELD_OUT
    info = load_bundle(fold / "bundle").read_json(MODEL_FILE)
    assert info["training_profiles"] == ["default", "dx_clipped"]
    assert info["networks_training_profiles"] == ["default"]  # the reused networks' own
    # the texture filter was measured again without the held-out profile's renderings
    assert info["texture_stability"]["profiles"] == ["dx_clipped", "compressed"]
    assert len(info["texture_stability"]["kept"]) == len(texture_feature_names())
    _, train_rows = _rows(fold / "train-labels.csv")
    _, test_rows = _rows(fold / "test-labels.csv")
    assert {r["profile"] for r in train_rows} == {"default", "dx_clipped"}
    _, rows = _rows(cohort / "labels.csv")
    held = [r for r in rows if r["profile"] == HELD_OUT]
    assert [r["file"] for r in test_rows] == [r["file"] for r in held]
    assert {r["file"] for r in train_rows}.isdisjoint(r["file"] for r in held)
    for name in ("report.md", "report.json", "roc.png", "predictions.csv"):
        assert (fold / "report" / name).stat().st_size > 0


def test_holdout_table(holdout: Path, cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads((holdout / "holdout.json").read_text())
    _, rows = _rows(cohort / "labels.csv")
    held = [r for r in rows if r["profile"] == HELD_OUT]
    (fold,) = document["folds"]
    assert fold["profile"] == HELD_OUT and fold["status"] == "ok"
    assert fold["held_out"]["listed"] == len(held)
    assert fold["held_out"]["positives"] == sum(int(r["label"]) for r in held)
    assert fold["trained_on"]["n"] == len(rows) - len(held)
    table = [r for r in document["rows"] if r["profile"] == HELD_OUT]
    assert [r["variant"] for r in table] == list(VARIANTS)
    for r in table:
        assert 0 < r["n"] <= len(held)
        auc = r["auc"]
        assert auc["ci_low"] <= auc["auc"] <= auc["ci_high"]
        assert r["sensitivity"]["total"] == r["positives"]
        # the in-profile bundle on the same images (the same finder: the same images
        # scored), and the paired difference
        assert r["in_profile"]["n"] == r["n"]
        assert r["difference"]["difference"] == pytest.approx(
            auc["auc"] - r["in_profile"]["auc"]["auc"]
        )
    assert document["networks_from"]["networks_training_profiles"] == ["default"]
    markdown = (holdout / "holdout.md").read_text()
    assert "DTC - D" in markdown and f"`{HELD_OUT}` | DTC" in markdown
    assert (holdout / "holdout.png").stat().st_size > 0


def test_refuses_networks_that_saw_the_held_out_profile(
    cohort: Path, networks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    info = load_bundle(networks).read_json(MODEL_FILE)
    info["networks_training_profiles"] = ["cr_unshuttered", "default"]
    saw = _rewritten(
        networks, tmp_path / "saw", {MODEL_FILE: (json.dumps(info, indent=2) + "\n").encode()}
    )
    args = [
        "evaluate", "--hold-out-profile", HELD_OUT, "--data", str(cohort),
        "--labels", str(cohort / "labels.csv"), "--report", str(tmp_path / "r"),
        "--networks-from", str(saw), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 2
    message = capsys.readouterr().err
    assert HELD_OUT in message and "would not be a held-out test" in message
    assert not (tmp_path / "r" / HELD_OUT / "bundle").exists()
    # a bundle that predates the record is refused too
    for key in ("networks_training_profiles", "training_profiles"):
        info.pop(key)
    old = _rewritten(
        networks, tmp_path / "old", {MODEL_FILE: (json.dumps(info, indent=2) + "\n").encode()}
    )
    args[args.index("--networks-from") + 1] = str(old)
    assert main(args) == 2
    assert "predates the record" in capsys.readouterr().err


def test_the_shipped_bundle_records_networks_of_the_default_profile_only() -> None:
    # so `--networks-from demo` is a held-out test for every other profile (docs/model.md)
    info = load_bundle(DEMO_BUNDLE_DIR).read_json(MODEL_FILE)
    assert info["networks_training_profiles"] == ["default"]


def test_usage_and_data_errors(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--data", str(cohort), "--labels", str(cohort / "labels.csv")]
    report = ["--report", str(tmp_path / "r"), "--no-progress"]
    assert main([*base, "--hold-out-profile", HELD_OUT, "--no-progress"]) == 2
    assert "--hold-out-profile needs --report" in capsys.readouterr().err
    assert main([*base, "--hold-out-profile", "metal", *report]) == 2
    err = capsys.readouterr().err
    assert "'metal' is not in the development data" in err and "cr_unshuttered" in err
    assert main([*base, "--hold-out-profile", "default", *report]) == 2
    assert "cannot be held out" in capsys.readouterr().err
    assert main([*base, "--seed", "4", "--report", str(tmp_path / "e")]) == 2
    assert "--seed only with --hold-out-profile" in capsys.readouterr().err
    # labels without a profile column: the data cannot be used
    columns, rows = _rows(cohort / "labels.csv")
    plain = _write(tmp_path / "plain.csv", [c for c in columns if c != "profile"], rows)
    args = ["evaluate", "--data", str(cohort), "--labels", str(plain)]
    assert main([*args, "--hold-out-profile", HELD_OUT, *report]) == 1
    assert "no 'profile' column" in capsys.readouterr().err
