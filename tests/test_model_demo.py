"""The demo build's resumable cohorts: same files as ``triage-node synth``, finished images kept."""

from __future__ import annotations

import filecmp
from pathlib import Path

from triage_node.synth import generate_cohort
from triage_node.train.demo import (
    DEV_SITES_SEED,
    SITE_PROFILES,
    CohortSpec,
    estimate_minutes,
    join_labels,
    resumable_cohort,
)


def test_resumable_cohort_matches_synth_and_resumes(tmp_path: Path) -> None:
    spec = CohortSpec("c", 2, 5, "small")
    out, rendered = resumable_cohort(tmp_path, spec, 1, progress=False)
    assert rendered == 2
    (tmp_path / ".rows" / "c" / "00001.json").unlink()  # as if interrupted on image 1
    (out / "labels.csv").unlink()
    assert resumable_cohort(tmp_path, spec, 1, progress=False) == (out, 1)
    assert resumable_cohort(tmp_path, spec, 1, progress=False) == (out, 0)
    generate_cohort(tmp_path / "ref", 2, seed=5, size="small", jobs=1, progress=False)
    for name in ("labels.csv", "oracle.json", "synth_00000.dcm", "synth_00001_femur_R.png"):
        assert filecmp.cmp(out / name, tmp_path / "ref" / name, shallow=False), name
    joined = join_labels(tmp_path, [out, tmp_path / "ref"], tmp_path / "dev")
    files = [line.split(",")[0] for line in joined.read_text().splitlines()[1:]]
    assert files == ["c/synth_00000.dcm", "c/synth_00001.dcm"] + [
        "ref/synth_00000.dcm",
        "ref/synth_00001.dcm",
    ]


def test_resumable_profile_cohort_matches_synth_profile(tmp_path: Path) -> None:
    # the multi-site cohorts: labels.csv gains the site columns, oracle.json the profiles
    spec = CohortSpec("sites", 3, DEV_SITES_SEED, "small", SITE_PROFILES)
    out, rendered = resumable_cohort(tmp_path, spec, 1, progress=False)
    assert rendered == 3
    generate_cohort(
        tmp_path / "ref", 3, seed=DEV_SITES_SEED, size="small", jobs=1, progress=False,
        profiles=SITE_PROFILES,
    )  # fmt: skip
    for name in ("labels.csv", "oracle.json", "synth_00000.dcm", "synth_00002.dcm"):
        assert filecmp.cmp(out / name, tmp_path / "ref" / name, shallow=False), name
    assert "profile" in (out / "labels.csv").read_text().splitlines()[0].split(",")


def test_estimate_has_every_stage() -> None:
    specs = [
        CohortSpec("dev-small", 1600, 1, "small"),
        CohortSpec("test", 400, 2, "small"),
        CohortSpec("dev-sites", 1400, 3, "small", SITE_PROFILES),
        CohortSpec("test-sites", 1050, 4, "small", SITE_PROFILES),
    ]
    minutes = estimate_minutes(
        specs, jobs=2, threads=2, finder_images=400, finder_epochs=40, stability_subjects=60
    )
    assert set(minutes) >= {
        "cohorts", "texture stability", "femur finder", "siamese", "heads (the bundle, dev-sites)",
        "evaluate", "held-out profiles",
    }  # fmt: skip
    assert 80 < sum(minutes.values()) < 150
    without = estimate_minutes(specs, 2, 2, 400, 40, stability_subjects=60, holdout=False)
    assert without["held-out profiles"] == 0 < minutes["held-out profiles"]


def test_shipped_demo_bundle_verifies_and_says_what_it_is() -> None:
    from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle

    bundle = load_bundle(DEMO_BUNDLE_DIR)  # every file's sha256 checked
    size = sum(f.stat().st_size for f in DEMO_BUNDLE_DIR.iterdir())
    assert size <= 20 * 2**20
    manifest = bundle.manifest
    assert manifest.synthetic and "NOT FOR CLINICAL USE" in manifest.intended_use
    # networks from the generator's own images; everything the heads learn from images
    # of every acquisition profile (docs/model.md, "The shipped build")
    info = bundle.read_json("model.json")
    assert info["networks_training_profiles"] == ["default"]
    assert set(info["training_profiles"]) == set(SITE_PROFILES) and len(SITE_PROFILES) == 7
    assert info["texture"]["normalisation"] == "rank"
    assert info["texture_stability"]["icc_kind"] == "ICC(2,1)"
    assert len(info["texture_stability"]["profiles"]) == 5
    assert manifest.training_data["images_used"] >= 1300
    assert bundle.has("head_DTC_onehip.json")
    # it carries its validation reference, at its own operating point
    from triage_node.score.reference import read_reference

    reference = read_reference(bundle)
    assert reference is not None and reference.threshold == manifest.operating_point.threshold
    assert reference.images == manifest.training_data["validation"]["n"]
    # inference computes few texture groups: well under a third of the full set's cost
    from triage_node.score.model import BundleScoringModel
    from triage_node.score.texture import all_texture_groups, texture_cost, texture_groups

    groups = texture_groups(BundleScoringModel(bundle).texture_names)
    assert 1 <= len(groups) <= 3
    assert texture_cost(groups) <= 0.3 * texture_cost(all_texture_groups())


def test_demo_model_gives_reasons_not_probabilities_for_what_is_not_a_hip() -> None:
    import pydicom

    from tests.peers import REPO
    from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle
    from triage_node.score.model import BundleScoringModel
    from triage_node.synth import make_instance

    model = BundleScoringModel(load_bundle(DEMO_BUNDLE_DIR))
    samples = REPO / "samples"
    inputs = {
        name: pydicom.dcmread(samples / f"{name}.dcm")
        for name in ("08_chest_not_hip", "09_blank", "07_bilateral_prosthesis")
    }
    inputs["chest-like"] = make_instance(31, kind="chest")
    for name, ds in inputs.items():
        result = model.assess(ds)
        assert not result.assessable and result.probability is None, name
        assert all(s.probability is None and s.not_assessable_reason for s in result.sides), name
    assert model.assess(pydicom.dcmread(samples / "01_osteoporotic_jpegls.dcm")).assessable
