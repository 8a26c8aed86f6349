"""``triage-node score``: score DICOM files one-off with the configured (or given) model bundle.

Text or, with ``--json``, one JSON array with an object per file (in the order
given); a file that cannot be scored has ``error`` in its object, and the
error goes to stderr as well. Exit 0 when every file was scored (assessable or
not), 1 when any was not or its report objects could not be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from triage_node.assessment import ImageAssessment, ModelUnavailable, NotScorable, is_positive
from triage_node.commands.common import (
    EXIT_FAILURE,
    EXIT_OK,
    add_bundle_argument,
    error,
    existing_file,
    resolve_bundle,
)
from triage_node.config import load_settings
from triage_node.report.heatmap import build_heatmap
from triage_node.report.sr import build_study_report
from triage_node.score.loader import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``score FILE... [--bundle B] [--json] [--out DIR]``."""
    parser.add_argument("files", nargs="+", type=existing_file, metavar="FILE", help="DICOM files")
    add_bundle_argument(parser, default="[model] bundle of the config")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON array, an object per file"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write <name>.json (and the SR and heatmap objects) here",
    )


def _printable(assessment: ImageAssessment) -> dict[str, Any]:
    data = assessment.to_json()
    data["extra"] = {k: v for k, v in data.get("extra", {}).items() if k != "cam"}
    return data


def decision_words(positive: bool) -> str:
    """A decision as the reader sees it: "DXA recommended" or "low likelihood"."""
    return "DXA recommended" if positive else "low likelihood"


def _describe(name: str, assessment: ImageAssessment) -> str:
    """Per side, then the image: its value is the highest assessed side, and it is
    positive iff a side is (``ImageAssessment.probability`` / ``.positive``)."""
    lines = [
        f"{name}: model {assessment.model_name} {assessment.model_version}, "
        f"threshold {assessment.threshold:.3f}"
    ]
    if assessment.synthetic_model:
        lines.append("  (synthetic-data model: NOT FOR CLINICAL USE)")
    for side in assessment.sides:
        if side.probability is None:
            lines.append(f"  {side.side:>5}: not assessable ({side.not_assessable_reason})")
        else:
            positive = side.positive
            if positive is None:  # a model that leaves the side's flag to the rule
                positive = is_positive(side.probability, assessment.threshold)
            lines.append(f"  {side.side:>5}: p={side.probability:.3f} {decision_words(positive)}")
    p, positive = assessment.probability, assessment.positive
    if p is not None and positive is not None:
        lines.append(f"  image: p={p:.3f} {decision_words(positive)} (highest assessed side)")
    else:
        lines.append(f"  image: not assessable ({assessment.not_assessable_reason})")
    lines += [f"  warning: {w}" for w in assessment.warnings]
    return "\n".join(lines)


def _write_objects(
    out: Path, stem: str, ds: pydicom.Dataset, assessment: ImageAssessment
) -> list[Path]:
    """Write the SR and the heatmap secondary capture of one scored file; their paths."""
    sr_path, heatmap_path = out / f"{stem}_sr.dcm", out / f"{stem}_heatmap.dcm"
    sr = build_study_report([ds], [assessment], report_version=1)
    sr.save_as(sr_path, enforce_file_format=True)
    cams = assessment.extra.get("cam") or None
    heatmap = build_heatmap(ds, assessment, cams, report_version=1)
    heatmap.save_as(heatmap_path, enforce_file_format=True)
    return [sr_path, heatmap_path]


class _Unreadable(Exception):
    """A file that is not a DICOM file, or cannot be read; the message says which."""


def _read(file: Path) -> pydicom.Dataset:
    """The dataset in ``file``, or :class:`_Unreadable` in our words (not pydicom's hints)."""
    try:
        return pydicom.dcmread(file)
    except InvalidDicomError:
        raise _Unreadable("not a DICOM file (no DICM preamble)") from None
    except OSError as exc:
        raise _Unreadable(f"cannot read the file: {exc.strerror or exc}") from None


def main(args: argparse.Namespace) -> int:
    """Score each file; print text or one JSON array."""
    settings = load_settings(args.config)
    if args.bundle is not None:
        settings.model.bundle = str(resolve_bundle(args.bundle, settings))
    try:
        model = load_model(settings)
    except ModelUnavailable as exc:
        return error(args.command, str(exc))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    results: list[dict[str, Any]] = []
    for file in args.files:
        try:
            ds = _read(file)
            assessment = model.assess(ds)
        except (_Unreadable, NotScorable) as exc:
            failed += 1
            message = f"cannot score: {exc}"
            error(args.command, f"{file}: {message}")
            results.append({"file": str(file), "error": message})
            continue
        data = _printable(assessment)
        result = {"file": str(file), **data}
        results.append(result)
        if not args.json:
            print(_describe(str(file), assessment))
        if args.out:
            (args.out / f"{file.stem}.json").write_text(json.dumps(data, indent=2) + "\n")
            try:
                written = _write_objects(args.out, file.stem, ds, assessment)
            except (OSError, ValueError, TypeError) as exc:
                failed += 1
                message = f"report objects not written: {exc}"
                error(args.command, f"{file}: {message}")
                result["error"] = message
                continue
            if not args.json:
                print("\n".join(f"  wrote {path}" for path in written))
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return EXIT_FAILURE if failed else EXIT_OK
