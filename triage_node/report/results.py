"""A study's result objects from stored inputs: assessments from JSON, the SR, heatmaps, maps.

The score job stores each image's :class:`ImageAssessment` as JSON on its
instance row (``to_json``) and the class-activation maps beside the spool file
(:func:`cam_path_for`, an ``.npz`` of one float array per side, no pickle).
:func:`build_study_results` turns those back into objects with the builders of
:mod:`triage_node.report.sr`, :mod:`triage_node.report.heatmap` and
:mod:`triage_node.report.attention_map`. Nothing here reads the clock: the same
inputs give byte-identical objects.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom

from triage_node.assessment import ImageAssessment
from triage_node.durable import atomic_write
from triage_node.report.attention_map import build_attention_map, has_attention
from triage_node.report.heatmap import DEFAULT_TRANSFER_SYNTAX, DisplayCopy, build_heatmap
from triage_node.report.sr import build_study_report
from triage_node.store.models import ResultKind


def assessment_from_json(data: Mapping[str, Any]) -> ImageAssessment:
    """The :class:`ImageAssessment` stored by ``ImageAssessment.to_json`` (round trip)."""
    return ImageAssessment.from_json(data)


def cam_path_for(spool_path: Path) -> Path:
    """Where the class-activation maps of a spooled instance live: ``<sop>.cam.npz`` beside it."""
    return spool_path.with_name(spool_path.name.removesuffix(".dcm") + ".cam.npz")


def save_cams(path: Path, cams: Mapping[str, npt.ArrayLike], *, fsync: bool = True) -> None:
    """Write per-side CAM arrays as an ``.npz`` (no pickle), atomically and durably."""
    arrays: dict[str, npt.NDArray[np.float32]] = {}
    for side, cam in cams.items():
        if side not in ("left", "right"):
            raise ValueError(f"cams: unknown side {side!r} (expected 'left'/'right')")
        arrays[side] = np.asarray(cam, dtype=np.float32)
    with atomic_write(path, fsync=fsync) as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds vs allow_pickle


def load_cams(path: Path) -> dict[str, np.ndarray] | None:
    """The CAM arrays saved by :func:`save_cams`, or None when there is no file."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as npz:
        return {side: np.asarray(npz[side], dtype=np.float64) for side in npz.files}


def display_path_for(spool_path: Path) -> Path:
    """Where the heatmap's display copy of a spooled instance lives: ``<sop>.display.npz``."""
    return spool_path.with_name(spool_path.name.removesuffix(".dcm") + ".display.npz")


def save_display(path: Path, display: DisplayCopy, *, fsync: bool = True) -> None:
    """Write a :class:`DisplayCopy` as an ``.npz`` (no pickle), atomically and durably."""
    arrays: dict[str, np.ndarray] = {
        "gray": np.asarray(display.gray, dtype=np.uint8),
        "source_shape": np.asarray(display.source_shape, dtype=np.int64),
    }
    for side, cam in display.cams.items():
        if side not in ("left", "right"):
            raise ValueError(f"display: unknown CAM side {side!r} (expected 'left'/'right')")
        arrays[f"cam_{side}"] = np.asarray(cam, dtype=np.float32)
    with atomic_write(path, fsync=fsync) as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds vs allow_pickle


def load_display(path: Path) -> DisplayCopy | None:
    """The :class:`DisplayCopy` saved by :func:`save_display`, or None when there is no file.

    Raises ``ValueError`` (or ``OSError``) when the file is there but not such a copy.
    """
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        if not {"gray", "source_shape"} <= names:
            raise ValueError(f"{path.name}: not a heatmap display copy (arrays {sorted(names)})")
        gray = np.asarray(npz["gray"])
        shape = tuple(int(v) for v in npz["source_shape"])
        cams = {
            name.removeprefix("cam_"): np.asarray(npz[name], dtype=np.float32)
            for name in sorted(names)
            if name.startswith("cam_")
        }
    if gray.dtype != np.uint8 or gray.ndim != 2 or len(shape) != 2:
        raise ValueError(f"{path.name}: gray {gray.dtype} {gray.shape}, source shape {shape}")
    return DisplayCopy(gray, cams, (shape[0], shape[1]))


@dataclass(frozen=True)
class SourceImage:
    """One reported radiograph: its dataset, the model's assessment, CAMs, and if it was scored."""

    dataset: pydicom.Dataset
    assessment: ImageAssessment
    cams: Mapping[str, np.ndarray] | None
    scored: bool  # False: not assessable (in the SR, no heatmap)
    instance_id: int | None = None
    # The heatmap's display copy made when scoring (then the dataset needs no pixels
    # for the SC); None: the heatmap is drawn from the dataset's pixels.
    display: DisplayCopy | None = None


@dataclass(frozen=True)
class BuiltResult:
    """One object to store and send: what it is, and the source image it was made from."""

    kind: ResultKind
    dataset: pydicom.Dataset
    source_instance_id: int | None


#: Every kind of result object, in the order a study's objects are built and sent.
ALL_OBJECTS: tuple[ResultKind, ...] = (ResultKind.SR, ResultKind.SC, ResultKind.MAP)


def build_study_results(
    sources: Sequence[SourceImage],
    *,
    report_version: int,
    content_datetime: datetime.datetime | None,
    objects: Collection[ResultKind] = ALL_OBJECTS,
    heatmap_transfer_syntax: str = DEFAULT_TRANSFER_SYNTAX,
) -> list[BuiltResult]:
    """The study's result objects, those of the kinds in ``objects`` only.

    In this order: the SR of the study (scored and not-assessable images); one
    heatmap SC per scored image; one attention map per scored image that has a
    class-activation map of an assessed side (a model that gives none gets no
    map). ``objects`` must include the SR (``[report] objects`` is checked at
    start for the same). ``heatmap_transfer_syntax``: how the heatmap SCs are
    encoded (``[report] heatmap_transfer_syntax``, a key of
    :data:`triage_node.report.heatmap.TRANSFER_SYNTAXES`).

    ``sources`` are in a fixed order (the caller's, e.g. by instance id) so the
    SR content is the same on every build. Raises ``ValueError``/``TypeError``
    from the builders (e.g. assessments from two model versions) before writing.
    """
    if not sources:
        raise ValueError("sources: nothing to report")
    unknown = [k for k in objects if k not in ALL_OBJECTS]
    if unknown or ResultKind.SR not in objects:
        raise ValueError(
            f"objects: expected the SR and any of SC, MAP; got {[str(k) for k in objects]}"
        )
    built = [
        BuiltResult(
            ResultKind.SR,
            build_study_report(
                [s.dataset for s in sources],
                [s.assessment for s in sources],
                report_version=report_version,
                content_datetime=content_datetime,
            ),
            None,
        )
    ]
    study = [s.assessment for s in sources]
    numbered = [(number, s) for number, s in enumerate(sources, start=1) if s.scored]
    if ResultKind.SC in objects:
        built.extend(
            BuiltResult(
                ResultKind.SC,
                build_heatmap(
                    s.dataset,
                    s.assessment,
                    s.cams,
                    report_version=report_version,
                    content_datetime=content_datetime,
                    study=study,
                    image_number=number,
                    transfer_syntax=heatmap_transfer_syntax,
                    display=s.display,
                ),
                s.instance_id,
            )
            for number, s in numbered
        )
    scored = [s for _, s in numbered]
    if ResultKind.MAP in objects:
        built.extend(
            BuiltResult(
                ResultKind.MAP,
                build_attention_map(
                    s.dataset,
                    s.assessment,
                    s.cams,
                    report_version=report_version,
                    content_datetime=content_datetime,
                ),
                s.instance_id,
            )
            for s in scored
            if has_attention(s.assessment, s.cams)
        )
    return built


def write_result_file(ds: pydicom.Dataset, path: Path, *, fsync: bool = True) -> int:
    """Write ``ds`` as a DICOM file at ``path`` atomically and durably; returns its size.

    A crash leaves either no file or the whole file; a re-run overwrites it with
    identical bytes (:func:`triage_node.durable.atomic_write`).
    """
    with atomic_write(path, fsync=fsync) as f:
        ds.save_as(f, enforce_file_format=True)
    return path.stat().st_size
