"""Measure what training costs per image on this machine, stage by stage, and extrapolate.

``python -m triage_node.train.cost --data DIR [--n 20] [--images 1600] [--jobs 2]``

Runs one process (one core, torch 1 thread, SimpleITK 1 thread) over the first
``--n`` hip images of a synth cohort and times, per image:

* decode (``dcmread`` + :func:`~triage_node.score.decode.decode_radiograph`),
* the finder's input (resample to its grid) and the finder's inference,
* the ROI cut of both hips, for each ROI geometry in ``--roi`` (``SPACING:SIZE``),
* the full texture set (325 features x 2 sides, wavelets included) on each geometry,
* the Siamese forward+backward per image and epoch for each branch width in
  ``--widths`` on each geometry (batch 16, as training).

It then prints the extrapolation to ``--images`` images with ``--jobs``
processes (per-image stages divide by ``--jobs``; Siamese training runs with
``--jobs`` torch threads, measured separately with that many threads). The
figures in docs/model.md ("Training cost on 2 CPUs") come from this.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import torch

from triage_node.score.decode import decode_radiograph
from triage_node.score.femur_finder import FemurFinder, FinderConfig, TinyUNet
from triage_node.score.roi import NotAssessable, cut_side_roi
from triage_node.score.siamese import SiameseConfig, SiameseNet, normalise_roi
from triage_node.score.texture import TextureSettings, extract_texture
from triage_node.train.finder import FinderTrainingSettings, finder_sample, train_femur_finder
from triage_node.train.pipeline import load_mask, read_cases


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="synth cohort directory")
    parser.add_argument("--n", type=int, default=20, help="images to time")
    parser.add_argument("--images", type=int, default=1600, help="extrapolate to this many")
    parser.add_argument("--jobs", type=int, default=2, help="processes/threads to project for")
    parser.add_argument("--roi", nargs="+", default=["0.5:256", "1.0:128"])
    parser.add_argument("--widths", nargs="+", default=["32", "16:32"])
    parser.add_argument("--epochs", type=int, default=30, help="epochs to project")
    parser.add_argument("--finder-epochs", type=int, default=40, help="finder epochs to project")
    parser.add_argument("--no-texture", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    cases = read_cases(args.data / "labels.csv", args.data).cases[: args.n]
    config = FinderConfig()
    finder = FemurFinder(TinyUNet(config.channels), config)  # untrained: cost only
    geometries = [(float(s), int(p)) for s, p in (g.split(":") for g in args.roi)]
    times: dict[str, list[float]] = {}
    rois: dict[tuple[float, int], list[np.ndarray]] = {g: [] for g in geometries}

    def clock(name: str, t0: float) -> float:
        now = time.perf_counter()
        times.setdefault(name, []).append(now - t0)
        return now

    samples = []
    for case in cases:
        t = time.perf_counter()
        ds = pydicom.dcmread(case.path)
        decoded = decode_radiograph(ds)
        t = clock("decode", t)
        masks = {s: load_mask(p, decoded.pixels.shape) for s, p in case.masks.items() if p}
        samples.append(
            finder_sample(decoded.pixels, decoded.spacing_mm, list(masks.values()), finder.config)
        )
        t = clock("finder input (train)", t)
        finder.find(decoded.pixels, decoded.spacing_mm, None)
        t = clock("finder inference", t)
        for spacing, size in geometries:
            t = time.perf_counter()
            cut = [
                cut_side_roi(decoded.pixels, decoded.spacing_mm, m, s, size=size,
                             roi_spacing_mm=spacing, saturated=decoded.saturated)
                for s, m in masks.items()
            ]  # fmt: skip
            t = clock(f"ROI cut x2 @ {spacing} mm/{size} px", t)
            ok = [c for c in cut if not isinstance(c, NotAssessable)]
            rois[(spacing, size)] += [normalise_roi(c.image) for c in ok]
            if args.no_texture:
                continue
            settings = TextureSettings(spacing_mm=(spacing, spacing))
            for c in ok:
                extract_texture(c.image, c.mask, settings)
            if ok:
                times.setdefault(f"texture 325 x2 @ {spacing} mm/{size} px", []).append(
                    (time.perf_counter() - t) * 2 / len(ok)
                )

    def deep_step(width: str, geometry: tuple[float, int], threads: int) -> float:
        torch.set_num_threads(threads)
        w = [int(x) for x in width.split(":")]
        config = SiameseConfig(width=w[-1], first_width=w[0])
        model = SiameseNet(config).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        stack = rois[geometry][:16] * (16 // max(1, len(rois[geometry][:16])))
        x = torch.from_numpy(np.stack(stack[:16])[:, None])
        y = torch.randint(0, 2, (len(x),))
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x, x.flip(0)), y)
            loss.backward()
            opt.step()
            runs.append((time.perf_counter() - t0) / len(x))
        return min(runs[1:])

    t0 = time.perf_counter()
    train_femur_finder(samples, config, FinderTrainingSettings(epochs=2, threads=args.jobs))
    finder_step = (time.perf_counter() - t0) / (2 * len(samples))

    deep: dict[str, tuple[float, float]] = {}
    for geometry in geometries:
        if not rois[geometry]:
            continue
        for width in args.widths:
            name = f"siamese fwd+bwd, width {width} @ {geometry[0]} mm/{geometry[1]} px"
            deep[name] = (deep_step(width, geometry, 1), deep_step(width, geometry, args.jobs))

    n_img, jobs = args.images, args.jobs
    print(f"{len(cases)} images timed from {args.data}; projection for {n_img} images, "
          f"{jobs} processes, {args.epochs} Siamese epochs (on 75% = train split)")  # fmt: skip
    print(f"{'stage':55s} {'s/img (1 core)':>15s} {'projected min':>14s}")
    for name, values in times.items():
        per = _median(values)
        print(f"{name:55s} {per:15.3f} {per * n_img / jobs / 60:14.1f}")
    print(f"{'finder training, per image and epoch':55s} {finder_step:15.3f} "
          f"{finder_step * n_img * args.finder_epochs / 60:14.1f}   "
          f"({args.finder_epochs} epochs on all {n_img}; {jobs} threads)")  # fmt: skip
    for name, (one, many) in deep.items():
        per_epoch = many * 0.75 * n_img * (1.2)  # oversampling to balance classes: ~+20%
        note = f"({many:.3f} s/img with {jobs} threads; {per_epoch / 60:.1f} min/epoch)"
        print(f"{name:55s} {one:15.3f} {per_epoch * args.epochs / 60:14.1f}   {note}")
    print(f"(cpu count {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
