"""Tests of the synthetic hip radiograph generator (small images, few of them)."""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from triage_node.commands import synth as synth_command
from triage_node.synth import VENDORS, generate_cohort, make_instance, render_instance


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_same_seed_same_bytes_whatever_the_parallelism(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", 4, seed=11, size="small", jobs=2, progress=False)
    generate_cohort(tmp_path / "b", 4, seed=11, size="small", jobs=1, progress=False)
    generate_cohort(tmp_path / "c", 4, seed=12, size="small", jobs=1, progress=False)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a.n == 4 and "labels.csv" in fa and "oracle.json" in fa
    assert sum(name.endswith(".dcm") for name in fa) == 4
    assert fa == fb
    assert fa["synth_00000.dcm"] != fc["synth_00000.dcm"]


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


EXTRA_CASES = {
    "kestrel": "unilateral",
    "halvard": "unilateral",
    "orion": "chest",
    "tamarind": "chest",
    "nordlys": "prosthesis",
}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_each_vendor_decodes_and_passes_dciodvfy(tmp_path: Path, vendor: str) -> None:
    profile = VENDORS[vendor]
    cases = {"hip": make_instance(1, vendor=vendor)}
    extra = EXTRA_CASES.get(vendor)
    if extra == "unilateral":
        cases[extra] = make_instance(2, vendor=vendor, laterality="L")
    elif extra == "chest":
        cases[extra] = make_instance(3, vendor=vendor, kind="chest")
    elif extra == "prosthesis":
        cases[extra] = make_instance(3, vendor=vendor, prosthesis=(True, False))
    for name, ds in cases.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(_to_bytes(ds))
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{vendor}/{name}: {errors}"
        back = pydicom.dcmread(path)
        assert back.file_meta.TransferSyntaxUID == profile.transfer_syntax
        assert back.PhotometricInterpretation == profile.photometric
        assert back.BitsStored == profile.bits_stored and back.Modality == profile.modality
        px = back.pixel_array
        assert px.shape == (back.Rows, back.Columns)
        assert int(px.max()) < (1 << profile.bits_stored)
        assert float(px.std()) > 0.02 * (1 << profile.bits_stored)
        assert "SYNTHETIC" in back.ImageComments and back.BurnedInAnnotation == "NO"


def test_header_does_not_carry_the_label() -> None:
    sick = make_instance(21, vendor="orion", osteoporotic=True)
    well = make_instance(21, vendor="orion", osteoporotic=False)
    skip = {"PixelData", "PatientSize", "PatientWeight"}  # missing at random, not by label
    assert {e.keyword for e in sick} - skip == {e.keyword for e in well} - skip
    for ds in (sick, well):
        text = str(ds).lower()
        assert "osteopor" not in text and "t-score" not in text and "density" not in text


def test_masks_follow_laterality_and_cover_the_femurs() -> None:
    both = render_instance(5, vendor="nordlys")
    assert set(both.masks) == {"L", "R"}
    rows, cols = both.dataset.Rows, both.dataset.Columns
    for side, mask in both.masks.items():
        assert mask.shape == (rows, cols) and mask.dtype == bool
        area_mm2 = mask.sum() * float(both.dataset.ImagerPixelSpacing[0]) ** 2
        assert 4000 < area_mm2 < 20000, side
        # AP view: the patient's right femur is on the viewer's left
        centre = np.nonzero(mask)[1].mean()
        assert (centre < cols / 2) == (side == "R")
    one = render_instance(6, vendor="nordlys", laterality="R")
    assert set(one.masks) == {"R"} and one.dataset.ImageLaterality == "R"
    assert one.dataset.BodyPartExamined == "HIP"


def test_odd_inputs() -> None:
    chest = make_instance(7, kind="chest", vendor="tamarind")
    assert chest.BodyPartExamined == "CHEST"
    blank = render_instance(8, kind="blank", vendor="orion")
    assert not blank.masks
    px = blank.dataset.pixel_array.astype(float)
    assert px.std() < 0.05 * px.mean()
    tha = render_instance(9, prosthesis=(True, True), vendor="orion")
    assert tha.row["prosthesis_left"] == tha.row["prosthesis_right"] == 1
    with pytest.raises(ValueError, match="kind"):
        make_instance(1, kind="knee")


def test_label_follows_t_score_and_forced_labels() -> None:
    for flag in (True, False):
        img = render_instance(10, osteoporotic=flag, vendor="halvard")
        assert img.row["label"] == int(flag)
        assert (img.row["t_score"] <= -2.5) == flag


def test_command_writes_cohort_and_rejects_bad_usage(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    synth_command.add_arguments(parser)
    args = parser.parse_args(
        [
            "--out",
            str(tmp_path),
            "--n",
            "2",
            "--size",
            "small",
            "--jobs",
            "1",
            "--no-progress",
            "--seed",
            "3",
        ]
    )
    assert synth_command.main(args) == 0
    with open(tmp_path / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == ["synth_00000.dcm", "synth_00001.dcm"]
    for r in rows:
        ds = pydicom.dcmread(tmp_path / r["file"])
        assert ds.SOPInstanceUID == r["sop_instance_uid"] and ds.PatientID == r["patient_id"]
    with pytest.raises(SystemExit) as bad:  # argparse: usage line, exit 2
        parser.parse_args(["--out", str(tmp_path), "--vendor", "nope"])
    assert bad.value.code == 2


def test_patient_orientation_matches_the_masks_and_marker() -> None:
    """AP/PA: rows run towards the patient's left (right femur on the viewer's left)."""
    both = render_instance(5, vendor="kestrel")
    assert list(both.dataset.PatientOrientation) == ["L", "F"]
    assert both.dataset.ImageLaterality == "B"
    cols = both.dataset.Columns
    assert np.nonzero(both.masks["R"])[1].mean() < np.nonzero(both.masks["L"])[1].mean()
    assert np.nonzero(both.masks["R"])[1].mean() < cols / 2
    for side in ("L", "R"):
        one = render_instance(6, vendor="orion", laterality=side)
        assert list(one.dataset.PatientOrientation) == ["L", "F"]
        assert one.dataset.ImageLaterality == side and set(one.masks) == {side}
    chest = make_instance(7, kind="chest", vendor="tamarind")
    assert list(chest.PatientOrientation) == ["L", "F"]


@pytest.mark.parametrize("vendor", ["nordlys", "orion", "vireo"])
def test_metal_is_flagged_bone_is_not_and_femurs_fit(vendor: str) -> None:
    """roi.py's metal rule sees the prosthesis, not bone; no femur is cut off."""
    from triage_node.score.decode import decode_radiograph
    from triage_node.score.roi import PROSTHESIS, cut_side_roi

    img = render_instance(31, vendor=vendor, prosthesis=(True, False))
    decoded = decode_radiograph(img.dataset)
    px = decoded.pixels
    lo, hi = float(px.min()), float(px.max())
    for side, name in (("R", "right"), ("L", "left")):
        mask = img.masks[side]
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        result = cut_side_roi(px, decoded.spacing_mm, mask.astype(np.uint8), side=name)
        assert (getattr(result, "reason", None) == PROSTHESIS) == (side == "R"), side
    # the implant is the brightest thing: its median reaches the top of the range
    assert np.median(px[img.masks["R"]][px[img.masks["R"]] >= lo + 0.9 * (hi - lo)]) == hi
    assert float(px[img.masks["L"]].max()) < lo + 0.95 * (hi - lo)  # bone never saturates
