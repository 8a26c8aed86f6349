"""The demo build's resumable cohorts: same files as ``triage-node synth``, finished images kept."""

from __future__ import annotations

import filecmp
from pathlib import Path

from triage_node.synth import generate_cohort
from triage_node.train.demo import CohortSpec, estimate_minutes, join_labels, resumable_cohort


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


def test_estimate_has_every_stage() -> None:
    specs = [CohortSpec("dev-small", 1600, 1, "small"), CohortSpec("test", 400, 2, "small")]
    minutes = estimate_minutes(specs, jobs=2, threads=2, finder_images=400, finder_epochs=40)
    assert set(minutes) >= {"cohorts", "features", "femur finder", "siamese", "evaluate"}
    assert 20 < sum(minutes.values()) < 75
