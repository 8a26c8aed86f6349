"""``triage-node score``: score DICOM files one-off with the configured (or given) model bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``triage-node score`` (cheap: no heavy imports)."""
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM files")
    parser.add_argument(
        "--bundle",
        default=None,
        help="bundle directory or 'demo' (default: [model] bundle of the config)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <name>.json (and the SR and heatmap objects) here",
    )


def _printable(assessment: Any) -> dict[str, Any]:
    data = assessment.to_json()
    data["extra"] = {k: v for k, v in data.get("extra", {}).items() if k != "cam"}
    return data


def _describe(name: str, assessment: Any) -> str:
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
            decision = "POSITIVE" if side.positive else "negative"
            lines.append(f"  {side.side:>5}: p={side.probability:.3f} {decision}")
    if assessment.assessable:
        p = assessment.probability
        decision = "POSITIVE" if p >= assessment.threshold else "negative"
        lines.append(f"  image: p={p:.3f} {decision}")
    else:
        lines.append(f"  image: not assessable ({assessment.not_assessable_reason})")
    lines += [f"  warning: {w}" for w in assessment.warnings]
    return "\n".join(lines)


def _write_objects(out: Path, stem: str, ds: Any, assessment: Any) -> list[str]:
    """Write the SR and heatmap SC when the report builders are installed; return notes."""
    notes = []
    try:
        from triage_node.report.heatmap import build_heatmap
        from triage_node.report.sr import build_study_report
    except ImportError:
        return ["report builders not installed; wrote JSON only"]
    sr = build_study_report([ds], [assessment], report_version=1)
    sr.save_as(out / f"{stem}_sr.dcm", enforce_file_format=True)
    notes.append(f"wrote {out / f'{stem}_sr.dcm'}")
    cams = assessment.extra.get("cam") or None
    heatmap = build_heatmap(ds, assessment, cams, report_version=1)
    heatmap.save_as(out / f"{stem}_heatmap.dcm", enforce_file_format=True)
    notes.append(f"wrote {out / f'{stem}_heatmap.dcm'}")
    return notes


def run(args: argparse.Namespace) -> int:
    """Score each file; 0 when all scored (assessable or not), 1 when any failed."""
    import pydicom

    from triage_node.assessment import ModelUnavailable, NotScorable
    from triage_node.config import load_settings
    from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle
    from triage_node.score.loader import load_model

    settings = load_settings(args.config)
    try:
        if args.bundle:
            from triage_node.score.model import BundleScoringModel

            path = DEMO_BUNDLE_DIR if args.bundle == "demo" else Path(args.bundle)
            threshold = settings.model.threshold
            model: Any = BundleScoringModel(
                load_bundle(path), threshold=None if threshold == "" else float(threshold)
            )
        else:
            model = load_model(settings)
    except ModelUnavailable as exc:
        print(f"score: {exc}")
        return 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for file in args.files:
        try:
            ds = pydicom.dcmread(file)
            assessment = model.assess(ds)
        except (OSError, pydicom.errors.InvalidDicomError, NotScorable) as exc:
            print(f"{file}: cannot score: {exc}")
            failed += 1
            continue
        data = _printable(assessment)
        if args.json:
            print(json.dumps({"file": str(file), **data}))
        else:
            print(_describe(str(file), assessment))
        if args.out:
            (args.out / f"{file.stem}.json").write_text(json.dumps(data, indent=2) + "\n")
            try:
                notes = _write_objects(args.out, file.stem, ds, assessment)
            except (ValueError, TypeError) as exc:
                notes = [f"report objects not written: {exc}"]
                failed += 1
            if not args.json:
                print("\n".join(f"  {n}" for n in notes))
    return 1 if failed else 0
