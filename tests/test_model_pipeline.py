"""End to end: train a tiny bundle on a small synth cohort, then score and evaluate with it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage_node.commands.main import main
from triage_node.score.bundle import load_bundle, write_bundle
from triage_node.score.features import patient_row, texture_bases
from triage_node.score.manifest import NOT_FOR_CLINICAL_USE, VARIANTS
from triage_node.score.model import (
    BILATERAL_HEAD,
    ONEHIP_HEAD,
    BundleScoringModel,
    onehip_head_file,
)
from triage_node.score.reference import REFERENCE_FILE, read_reference
from triage_node.score.texture import texture_feature_names, texture_groups
from triage_node.train.pipeline import read_cases
from triage_node.train.stability import Stability

N_IMAGES = 40


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from triage_node.synth import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, N_IMAGES, seed=11, size="small", jobs=2, progress=False)
    return out


@pytest.fixture(scope="module")
def bundle(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("train")
    args = [
        "train", "--data", str(cohort), "--labels", str(cohort / "labels.csv"),
        "--out", str(work / "bundle"), "--cache", str(work / "cache"), "--seed", "3",
        "--epochs", "2", "--finder-epochs", "20", "--finder-negatives", "6",
        "--jobs", "2", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    assert list((work / "cache").glob("*.npz")), "feature cache is written"
    return work / "bundle"


def test_bundle_manifest(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    m = loaded.manifest
    assert m.variant == "DTC" and m.synthetic and NOT_FOR_CLINICAL_USE in m.intended_use
    assert m.training_data["source"] == "triage-node synth"
    assert m.training_data["train"]["n"] + m.training_data["validation"]["n"] <= N_IMAGES
    assert set(m.metrics["validation"]) == set(VARIANTS)
    assert all(loaded.has(f"head_{v}.json") for v in VARIANTS)
    assert len(m.feature_names) == 3 + 2 * 325 + 2 * 128
    groups = {n.split(":")[0] for n in m.selected_features}
    assert "clinical" in groups and groups & {"left", "right"}
    assert 0.0 <= m.operating_point.threshold <= 1.0
    # the operating point is chosen for the value the node decides on; the bilateral one is kept
    info = loaded.read_json("model.json")
    assert info["decision_value"] == "highest assessed side"
    assert set(info["bilateral_thresholds"]) == set(info["thresholds"]) == set(VARIANTS)
    dtc = m.metrics["validation"]["DTC"]
    assert dtc["threshold"] == m.operating_point.threshold == info["thresholds"]["DTC"]
    assert dtc["bilateral"]["threshold"] == info["bilateral_thresholds"]["DTC"]
    # texture chosen by (image type, class) group: inference computes the groups listed
    model = BundleScoringModel(loaded)
    assert [f"{t}/{c}" for t, c in texture_groups(model.texture_names)] == dtc["texture_groups"]
    assert 0 < dtc["texture_cost_fraction"] <= 0.25


def test_bundle_carries_its_validation_reference(bundle: Path) -> None:
    """reference.json: the DTC image values of the validation split at its operating point."""
    loaded = load_bundle(bundle)
    m = loaded.manifest
    assert REFERENCE_FILE in m.files  # listed, so hash-checked like every file
    reference = read_reference(loaded)
    assert reference is not None
    validation = m.training_data["validation"]
    assert reference.images == reference.scored == validation["n"]  # training used them all
    assert reference.sides == 2 * validation["n"]
    assert reference.threshold == m.operating_point.threshold
    op = m.metrics["validation"]["DTC"]
    positives, negatives = validation["positives"], validation["n"] - validation["positives"]
    expected = (
        op["validation_sensitivity"] * positives + (1 - op["validation_specificity"]) * negatives
    )
    assert reference.positives == round(expected)
    assert "validation split" in reference.source


def test_refit_on_the_networks_of_a_bundle(bundle: Path, cohort: Path, tmp_path: Path) -> None:
    """--networks-from: the same finder and Siamese bytes; selection, heads, reference anew."""
    out = tmp_path / "refit"
    args = [
        "train", "--data", str(cohort), "--labels", str(cohort / "labels.csv"),
        "--out", str(out), "--cache", str(bundle.parent / "cache"), "--seed", "3",
        "--networks-from", str(bundle), "--texture-budget", "0.01",
        "--jobs", "2", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    old, new = load_bundle(bundle), load_bundle(out)
    for name in ("femur_finder.safetensors", "siamese.safetensors"):
        assert new.raw(name) == old.raw(name)
    assert new.manifest.training_data["networks_from"] == f"DTC {old.manifest.version}"
    assert new.read_json("model.json")["siamese"] == old.read_json("model.json")["siamese"]
    assert read_reference(new) is not None
    # a budget below any one group's cost: each variant with texture keeps exactly one
    assert all(
        len(new.manifest.metrics["validation"][v]["texture_groups"]) == 1
        for v in ("T", "TC", "DT", "DTC")
    )


def test_refit_with_rank_normalisation_and_stable_texture_only(
    bundle: Path, cohort: Path, tmp_path: Path
) -> None:
    """--texture-normalisation rank --texture-stability FILE: only the stable features are
    candidates; the bundle records both and scores with the normalisation it was trained on."""
    kept = [n for n in texture_feature_names() if n.startswith(("original_glcm", "original_glrlm"))]
    stability = Stability(
        kept=tuple(kept),
        threshold=0.75,
        kind="ICC(2,1)",
        normalisation="rank",
        profiles=("cr_unshuttered", "dx_clipped"),
        subjects=1,
        hips=2,
        seed=0,
        icc=dict.fromkeys(kept, 0.9),
    )
    stable_file = tmp_path / "stability.json"
    stable_file.write_text(json.dumps(stability.to_json()))
    out = tmp_path / "rank"
    args = [
        "train", "--data", str(cohort), "--labels", str(cohort / "labels.csv"),
        "--out", str(out), "--cache", str(bundle.parent / "cache"), "--seed", "3",
        "--networks-from", str(bundle), "--texture-normalisation", "rank",
        "--texture-stability", str(stable_file),
        "--jobs", "2", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    info = load_bundle(out).read_json("model.json")
    assert info["texture"]["normalisation"] == "rank"
    assert info["texture_stability"]["kept"] == kept
    assert info["texture_stability"]["threshold"] == 0.75
    assert "normalisation" not in load_bundle(bundle).read_json("model.json")["texture"]
    for variant in ("T", "DTC"):
        model = BundleScoringModel(load_bundle(out), variant=variant)
        assert model.texture_settings.normalisation == "rank"
        assert model.texture_names and set(model.texture_names) <= set(kept)
    # a stability file measured with another normalisation is refused (exit 2)
    args[args.index("rank")] = "zscore"
    assert main([*args[:6], str(tmp_path / "refused"), *args[7:]]) == 2
    assert not (tmp_path / "refused").exists()


def test_score_command(
    bundle: Path, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(cohort.glob("synth_*.dcm"))[:4]
    out = tmp_path / "scored"
    assert (
        main(["score", "--bundle", str(bundle), "--json", "--out", str(out), *map(str, files)]) == 0
    )
    lines = json.loads(capsys.readouterr().out)  # one JSON document: an object per file
    assert len(lines) == 4
    probabilities = [s["probability"] for r in lines for s in r["sides"] if s["probability"]]
    assert probabilities, "at least one hip of four is found and scored"
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    for r in lines:
        for s in r["sides"]:
            assert (s["probability"] is None) != (s["not_assessable_reason"] is None)
    assert len(list(out.glob("*.json"))) == 4


def test_evaluate_command(
    bundle: Path, cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--data",
                str(cohort),
                "--labels",
                str(cohort / "labels.csv"),
                "--report",
                str(report),
                "--jobs",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "oracle AUC" in printed
    for name in ("report.md", "report.json", "roc.png", "calibration.png"):
        assert (report / name).stat().st_size > 0
    data = json.loads((report / "report.json").read_text())
    assert [r["variant"] for r in data["rows"]] == list(VARIANTS)
    assert all(0.0 <= r["auc"]["auc"] <= 1.0 for r in data["rows"])
    # the table is the node's rule (highest side); the bilateral value is beside it
    assert "highest probability of the assessed sides" in printed
    assert "bilateral head's value" in printed
    for r in data["rows"]:
        b = r["bilateral"]
        assert 0.0 <= b["auc"]["auc"] <= 1.0
        assert b["vs_image_value"]["difference"] == pytest.approx(r["auc"]["auc"] - b["auc"]["auc"])


def _assert_not_assessable(bundle: Path, datasets: list[pydicom.Dataset]) -> None:
    model = BundleScoringModel(load_bundle(bundle))
    for ds in datasets:
        result = model.assess(ds)
        assert not result.assessable and result.probability is None
        assert all(s.probability is None and s.not_assessable_reason for s in result.sides)
        assert result.combined_probability is None and result.extra["cam"] == {}


def test_other_views_are_not_assessable(bundle: Path) -> None:
    from triage_node.synth import make_instance

    _assert_not_assessable(
        bundle, [make_instance(21, kind="chest"), make_instance(22, kind="blank")]
    )


def test_bilateral_prosthesis_is_not_assessable(bundle: Path) -> None:
    from triage_node.synth import make_instance

    _assert_not_assessable(bundle, [make_instance(23, prosthesis=(True, True))])


def test_assess_and_explain_on_a_hip(bundle: Path, cohort: Path) -> None:
    model = BundleScoringModel(load_bundle(bundle))
    for path in sorted(cohort.glob("synth_*.dcm")):
        ds = pydicom.dcmread(path)
        result = model.assess(ds)
        if result.assessable:
            break
    else:
        pytest.fail("no image of the cohort was assessable")
    assert 0.0 <= result.combined_probability <= 1.0  # type: ignore[operator]
    cams = result.extra["cam"]
    scored = {s.side for s in result.sides if s.probability is not None}
    assert set(cams) == scored
    for cam in cams.values():
        assert cam.shape == (ds.Rows, ds.Columns) and 0.0 <= cam.min() and cam.max() <= 1.0
    assert set(model.explain(ds)) == scored


def _one_hip_image(model: BundleScoringModel) -> pydicom.Dataset:
    """A synthetic image with exactly one assessable hip: a unilateral view or a prosthesis."""
    from triage_node.synth import make_instance

    for seed in range(31, 41):
        for ds in (
            make_instance(seed, laterality="L"),
            make_instance(seed, prosthesis=(seed % 2 == 0, seed % 2 == 1)),
        ):
            if len(model.image_features(ds, texture_names=()).rois) == 1:
                return ds
    pytest.fail("no synthetic unilateral or one-prosthesis image had exactly one hip found")


def test_training_writes_a_one_hip_head_per_variant(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    model = BundleScoringModel(loaded)
    assert set(model.onehip_heads) == set(VARIANTS)
    for v in VARIANTS:
        assert onehip_head_file(v) in loaded.manifest.files  # hashed, so verified on load
        names = model.onehip_heads[v].feature_names
        assert not any(n.startswith("left:") for n in names), "one hip: one slot"
        one_hip = loaded.manifest.metrics["validation"][v]["one_hip"]
        assert 0.0 <= one_hip["validation_auc"] <= 1.0 and one_hip["validation_hips"] > 0
    # the texture inference computes covers the one-hip head's too
    assert set(texture_bases(model.onehip_heads["DTC"].feature_names)) <= set(model.texture_names)


def test_one_hip_image_is_scored_by_the_one_hip_head(
    bundle: Path, cohort: Path, tmp_path: Path
) -> None:
    model = BundleScoringModel(load_bundle(bundle))
    ds = _one_hip_image(model)
    result = model.assess(ds)
    (side,) = [s for s in result.sides if s.probability is not None]
    features = model.image_features(ds)
    hip = features.hips[side.side]
    head = model.onehip_heads["DTC"]
    row = patient_row(head.feature_names, features.clinical, {"right": hip, "left": hip})
    assert result.extra["head"] == ONEHIP_HEAD
    assert side.probability == pytest.approx(float(head.probability(row[None])[0]))
    duplicated, _ = model.probabilities(features)
    assert side.probability != pytest.approx(duplicated[side.side])
    assert any("scored by the one-hip head" in w for w in result.warnings)
    # a two-hip image stays with the bilateral head
    for path in sorted(cohort.glob("synth_*.dcm")):
        two = pydicom.dcmread(path)
        if len(model.image_features(two, texture_names=()).rois) == 2:
            assert model.assess(two).extra["head"] == BILATERAL_HEAD
            break
    else:
        pytest.fail("no image of the cohort had both hips found")

    # a bundle without one-hip heads (every bundle before them): the hip is duplicated
    loaded = load_bundle(bundle)
    files = {n: loaded.raw(n) for n in loaded.manifest.files if "_onehip" not in n}
    old = BundleScoringModel(load_bundle(write_bundle(tmp_path / "old", loaded.manifest, files)))
    assert old.onehip_heads == {}
    fallback = old.assess(ds)
    assert fallback.extra["head"] == BILATERAL_HEAD
    value = next(s.probability for s in fallback.sides if s.probability is not None)
    assert value == pytest.approx(duplicated[side.side])
    assert any("the image value is that hip's alone" in w for w in fallback.warnings)


def test_site_csv_by_uid_and_t_score(cohort: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader(open(cohort / "labels.csv")))[:3]
    site = tmp_path / "site.csv"
    with open(site, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sop_instance_uid", "t_score"])
        for r in rows:
            writer.writerow([r["sop_instance_uid"], r["t_score"]])
    cases = read_cases(site, cohort)
    assert not cases.synthetic and cases.source == "site"
    assert [c.path.name for c in cases.cases] == [r["file"] for r in rows]
    assert [c.label for c in cases.cases] == [int(float(r["t_score"]) <= -2.5) for r in rows]
    assert np.all([c.masks["right"] is not None for c in cases.cases if c.path.exists()])
