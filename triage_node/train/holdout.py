"""Held-out acquisition profiles: train on the other profiles, test on the one left out.

``triage-node evaluate --hold-out-profile P ...`` (docs/model.md, "Held-out
profiles"). The development labels name each image's acquisition profile
(``triage-node synth --profile``: the ``profile`` column). For each held-out
profile P (a fold):

1. ``DIR/P/train-labels.csv``: the development rows of every other profile
   (``default``, the generator's own images, is never held out and always
   trained on); a bundle is trained on them into ``DIR/P/bundle``
   (:func:`~triage_node.train.pipeline.train_bundle`; with ``networks_from``
   only the selection, heads, calibration, operating points and reference).
2. ``DIR/P/test-labels.csv``: P's hip images of the test set (or, without
   one, of the development set: none of them is in the fold's training), scored
   with all seven heads (:func:`~triage_node.train.evaluate.score_cohort`) and
   reported in ``DIR/P/report/`` as ``evaluate --report`` does.

With a texture stability file (``texture_stability``) measured on the held-out
profile too, each fold uses it measured again without that profile
(:meth:`~triage_node.train.stability.Stability.without`): the held-out
renderings choose none of the fold's features.

A fold whose held-out images have fewer than :data:`MIN_PER_CLASS` of either
class is skipped (a warning, a "skipped" row with the counts), not trained.
With ``networks_from`` the networks must not have seen a held-out profile: the
source bundle's ``model.json`` ``networks_training_profiles`` must exist and not
name it (:func:`check_networks`), else :class:`HoldoutUsageError`. With an
in-profile ``bundle`` B, B is scored once on all folds' held-out images and
its AUC is set beside each fold's, with the paired DeLong difference on the
images both scored.

Output: ``DIR/holdout.md``, ``DIR/holdout.json`` (one row per profile and
variant, a pooled row per variant over the concatenated held-out values of all
folds, each at its own fold's operating point) and ``DIR/holdout.png``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from triage_node import durable
from triage_node.assessment import is_positive
from triage_node.score.bundle import load_bundle
from triage_node.score.manifest import NOT_FOR_CLINICAL_USE, VARIANTS
from triage_node.score.model import MODEL_FILE
from triage_node.train.evaluate import (
    ScoredCohort,
    dataset_summary,
    score_cohort,
    subgroups,
    variant_predictions,
    write_predictions,
)
from triage_node.train.metrics import auc_with_ci, delong_test, wilson
from triage_node.train.pipeline import (
    DEFAULT_PROFILE,
    PROFILE_COLUMN,
    TrainingOptions,
    networks_training_profiles,
    read_cases,
    train_bundle,
)
from triage_node.train.report import write_report

#: ``--hold-out-profile all``: every profile of the development labels but ``default``.
ALL = "all"
#: A fold needs at least this many held-out images of each class, or it is skipped.
MIN_PER_CLASS = 4
#: The row name of the folds pooled.
POOLED = "pooled"
#: The variants the figure and the per-profile summary compare.
COMPARED = ("D", "DTC")


class HoldoutUsageError(ValueError):
    """Bad usage (exit 2): a profile that is not there, networks that saw a held-out one."""


@dataclass(frozen=True)
class HoldoutOptions:
    """What ``evaluate --hold-out-profile`` was given (``training``: the fold bundles'
    options; its ``networks_from``, ``cache_dir``, ``seed``, ``jobs`` ... apply to every fold)."""

    data: Path
    labels: Path
    report: Path
    profiles: Sequence[str]
    test_data: Path | None = None
    test_labels: Path | None = None
    bundle: Path | None = None
    training: TrainingOptions = field(default_factory=TrainingOptions)
    jobs: int = 1
    progress: bool = True


@dataclass(frozen=True)
class _Values:
    """One bundle's values on the images it scored: path -> label, variant -> path -> value."""

    labels: dict[Path, int]
    values: dict[str, dict[Path, float]]
    thresholds: dict[str, float]

    @classmethod
    def of(cls, cohort: ScoredCohort, keep: set[Path] | None = None) -> _Values:
        paths = [cohort.cases[i].path for i in cohort.scored]
        chosen = {k for k, p in enumerate(paths) if keep is None or p in keep}
        labels = cohort.labels
        return cls(
            {paths[k]: int(labels[k]) for k in sorted(chosen)},
            {
                v: {paths[k]: float(x) for k, x in enumerate(cohort.values(v)) if k in chosen}
                for v in cohort.model.heads
            },
            {v: cohort.threshold(v) for v in cohort.model.heads},
        )


# -- labels --------------------------------------------------------------------------------


def read_labels(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of a labels CSV; ``ValueError`` without a ``profile`` column."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if PROFILE_COLUMN not in columns:
        raise ValueError(
            f"{path}: no '{PROFILE_COLUMN}' column: a held-out-profile evaluation needs each "
            "image's acquisition profile (triage-node synth --profile ... writes it)"
        )
    return columns, rows


def _profile(row: dict[str, str]) -> str:
    return (row.get(PROFILE_COLUMN) or "").strip() or DEFAULT_PROFILE


def _is_hip(row: dict[str, str]) -> bool:
    return row.get("kind", "hip") in ("hip", "")


def held_out_profiles(requested: Sequence[str], present: Sequence[str]) -> list[str]:
    """The profiles to hold out (``all``: every one present but ``default``), in the order
    given; :class:`HoldoutUsageError` for ``default`` or a profile not in the data."""
    available = sorted(set(present))
    chosen: list[str] = []
    for name in requested:
        names = [p for p in available if p != DEFAULT_PROFILE] if name == ALL else [name]
        for p in names:
            if p == DEFAULT_PROFILE:
                raise HoldoutUsageError(
                    f"profile '{DEFAULT_PROFILE}' cannot be held out: the project's own images "
                    "are in every fold's training"
                )
            if p not in available:
                raise HoldoutUsageError(
                    f"profile {p!r} is not in the development data; profiles present: "
                    + ", ".join(available)
                )
            if p not in chosen:
                chosen.append(p)
    if not chosen:
        raise HoldoutUsageError(
            "no profile to hold out: the development data have only " + ", ".join(available)
        )
    return chosen


def check_networks(networks_from: Path, profiles: Sequence[str]) -> list[str]:
    """The profiles the networks of ``networks_from`` were trained on, when none of
    ``profiles`` is among them; else :class:`HoldoutUsageError` (also when the bundle does
    not record them)."""
    bundle = load_bundle(networks_from)
    seen = networks_training_profiles(bundle.read_json(MODEL_FILE))
    name = f"{networks_from} ({bundle.manifest.name} {bundle.manifest.version})"
    if seen is None:
        raise HoldoutUsageError(
            f"--networks-from {name} does not record the acquisition profiles its femur "
            "finder and Siamese branch were trained on (the bundle predates the record, or "
            "its data named none): a fold on its networks would not be a held-out test. "
            "Train the networks on the profiles to keep (e.g. triage-node train on the "
            "default images only) and pass that bundle"
        )
    overlap = [p for p in profiles if p in seen]
    if overlap:
        raise HoldoutUsageError(
            f"--networks-from {name}: its networks were trained on profile(s) "
            f"{', '.join(overlap)} (they saw {', '.join(seen)}): holding "
            f"{', '.join(overlap)} out with them would not be a held-out test"
        )
    return seen


def write_labels(path: Path, columns: Sequence[str], rows: Sequence[dict[str, str]]) -> Path:
    """A labels CSV with ``columns`` and ``rows`` (the same ``file`` values: valid for the
    same data directory)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.write_text(path, buffer.getvalue(), fsync=False)
    return path


# -- the folds ------------------------------------------------------------------------------


@dataclass
class _Fold:
    profile: str
    train_n: int
    train_profiles: list[str]
    listed: int
    positives_listed: int
    status: str = "ok"
    reason: str = ""
    bundle: Path | None = None
    bundle_version: str = ""
    values: _Values | None = None
    test_labels: Path | None = None
    stability_profiles: list[str] | None = None  # the fold's texture stability profiles


def run_holdout(
    options: HoldoutOptions, say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every fold (see module doc); writes the per-fold files and ``holdout.md/json/png``
    under ``options.report`` and returns the JSON document."""
    if say is None:
        say = _stderr if options.progress else _quiet
    dev_columns, dev_rows = read_labels(options.labels)
    present = sorted({_profile(r) for r in dev_rows if _is_hip(r)})
    profiles = held_out_profiles(options.profiles, present)
    networks_from = options.training.networks_from
    networks_profiles = None if networks_from is None else check_networks(networks_from, profiles)
    if options.test_data is not None:
        if options.test_labels is None:
            raise HoldoutUsageError("--test-data needs --test-labels")
        test_data, (test_columns, test_rows) = options.test_data, read_labels(options.test_labels)
    elif options.test_labels is not None:
        raise HoldoutUsageError("--test-labels needs --test-data")
    else:
        test_data, test_columns, test_rows = options.data, dev_columns, dev_rows
    test_present = sorted({_profile(r) for r in test_rows if _is_hip(r)})
    missing = [p for p in profiles if p not in test_present]
    if missing:
        raise ValueError(
            f"{options.test_labels}: no image of profile(s) {', '.join(missing)}; profiles "
            f"present: {', '.join(test_present)}"
        )
    out = options.report
    out.mkdir(parents=True, exist_ok=True)

    folds: list[_Fold] = []
    for p in profiles:
        fold_dir = out / p
        train_rows = [r for r in dev_rows if _profile(r) != p]
        held = [r for r in test_rows if _profile(r) == p and _is_hip(r)]
        train_csv = write_labels(fold_dir / "train-labels.csv", dev_columns, train_rows)
        test_csv = write_labels(fold_dir / "test-labels.csv", test_columns, held)
        labels = [c.label for c in read_cases(test_csv, test_data).cases]
        train_hips = [r for r in train_rows if _is_hip(r)]
        fold = _Fold(
            p,
            len(train_hips),
            sorted({_profile(r) for r in train_hips}),
            len(labels),
            sum(labels),
            test_labels=test_csv,
        )
        folds.append(fold)
        negatives = fold.listed - fold.positives_listed
        if min(fold.positives_listed, negatives) < MIN_PER_CLASS:
            fold.status = "skipped"
            fold.reason = (
                f"{fold.listed} held-out images, {fold.positives_listed} with osteoporosis, "
                f"{negatives} without: fewer than {MIN_PER_CLASS} of a class"
            )
            say(f"fold {p}: skipped: {fold.reason}")
            continue
        say(
            f"fold {p}: training on {fold.train_n:,} images ({', '.join(fold.train_profiles)})"
            + (f", networks of {networks_from}" if networks_from else "")
        )
        fold.bundle = fold_dir / "bundle"
        try:
            # the texture reproducibility filter is measured again without the held-out
            # profile's renderings: they must not choose the fold's features
            stability = options.training.texture_stability
            if stability is not None and p in stability.profiles:
                stability = stability.without(p)
                say(
                    f"fold {p}: texture stability over {', '.join(stability.profiles)}: "
                    f"{len(stability.kept)} features kept"
                )
            fold.stability_profiles = None if stability is None else list(stability.profiles)
            with contextlib.redirect_stdout(sys.stderr):  # stdout: the report only
                result = train_bundle(
                    options.data,
                    train_csv,
                    fold.bundle,
                    replace(
                        options.training, progress=options.progress, texture_stability=stability
                    ),
                )
        except ValueError as exc:
            raise ValueError(f"fold {p}: training: {exc}") from exc
        fold.bundle_version = result.manifest.version
        say(f"fold {p}: scoring {fold.listed:,} held-out images")
        cohort = score_cohort(
            fold.bundle, test_data, test_csv, options.jobs, options.progress, desc=f"{p} held out"
        )
        scored = cohort.labels
        if min(int(scored.sum()), int(len(scored) - scored.sum())) < MIN_PER_CLASS:
            fold.status = "skipped"
            fold.reason = (
                f"{len(scored)} of {fold.listed} held-out images scored ({int(scored.sum())} "
                f"with osteoporosis; not assessable: {cohort.reasons()}): fewer than "
                f"{MIN_PER_CLASS} of a class"
            )
            say(f"fold {p}: skipped: {fold.reason}")
            continue
        fold.values = _Values.of(cohort)
        report_dir = fold_dir / "report"
        dataset = dataset_summary(cohort)
        dataset["held-out profile"] = p
        dataset["trained on"] = f"{fold.train_n} images ({', '.join(fold.train_profiles)})"
        write_report(
            variant_predictions(cohort),
            report_dir,
            dataset,
            cohort.model.synthetic,
            title=f"Held-out profile {p}",
            subgroups=subgroups(cohort),
            subgroup_variant=cohort.model.variant,
        )
        write_predictions(cohort, report_dir / "predictions.csv")

    in_profile: _Values | None = None
    in_profile_name = ""
    scored_folds = [f for f in folds if f.status == "ok"]
    if options.bundle is not None and scored_folds:
        held_rows = [r for r in test_rows if _is_hip(r) and _profile(r) in profiles]
        all_csv = write_labels(out / "in-profile-labels.csv", test_columns, held_rows)
        say(f"in-profile bundle {options.bundle}: scoring {len(held_rows):,} held-out images")
        cohort = score_cohort(
            options.bundle, test_data, all_csv, options.jobs, options.progress, desc="in-profile"
        )
        in_profile = _Values.of(cohort)
        in_profile_name = f"{cohort.model.name} {cohort.model.version}"
    document = _document(folds, in_profile, options, networks_profiles)
    if in_profile is not None:
        document["in_profile_bundle"] = {"path": str(options.bundle), "bundle": in_profile_name}
    synthetic = any(
        load_bundle(f.bundle).manifest.synthetic for f in scored_folds if f.bundle is not None
    )
    document["synthetic"] = synthetic
    (out / "holdout.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "holdout.md").write_text(render_holdout(document))
    plot_holdout(document, out / "holdout.png")
    return document


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


# -- rows -----------------------------------------------------------------------------------


def _arrays(
    parts: Sequence[_Values], variant: str
) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """Paths, labels, values and calls (each at its own part's operating point)."""
    keys: list[Path] = []
    labels, values, calls = [], [], []
    for part in parts:
        chosen = list(part.labels)
        v = np.array([part.values[variant][q] for q in chosen], dtype=float)
        keys += chosen
        labels.append(np.array([part.labels[q] for q in chosen], dtype=int))
        values.append(v)
        calls.append(is_positive(v, part.thresholds[variant]))
    return (
        keys,
        np.concatenate(labels) if labels else np.zeros(0, int),
        np.concatenate(values) if values else np.zeros(0),
        np.concatenate(calls) if calls else np.zeros(0, bool),
    )


def _auc(labels: np.ndarray, values: np.ndarray) -> dict[str, Any] | None:
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    a = auc_with_ci(labels, values)
    return {"auc": a.auc, "ci_low": a.ci_low, "ci_high": a.ci_high}


def _row(
    profile: str, variant: str, parts: Sequence[_Values], in_profile: _Values | None
) -> dict[str, Any]:
    paths, labels, values, calls = _arrays(parts, variant)
    positives = int(labels.sum())
    row: dict[str, Any] = {
        "profile": profile,
        "variant": variant,
        "status": "ok",
        "n": len(labels),
        "positives": positives,
        "auc": _auc(labels, values),
        "threshold": parts[0].thresholds[variant] if len(parts) == 1 else None,
        "sensitivity": asdict(wilson(int((calls & (labels == 1)).sum()), positives))
        if positives
        else None,
        "specificity": asdict(wilson(int((~calls & (labels == 0)).sum()), len(labels) - positives))
        if len(labels) > positives
        else None,
        "in_profile": None,
        "difference": None,
    }
    if in_profile is not None:
        mine = set(paths)
        theirs = [q for q in in_profile.labels if q in mine]
        b_labels = np.array([in_profile.labels[q] for q in theirs], dtype=int)
        b_values = np.array([in_profile.values[variant][q] for q in theirs], dtype=float)
        row["in_profile"] = {
            "n": len(theirs),
            "positives": int(b_labels.sum()),
            "auc": _auc(b_labels, b_values),
        }
        if _auc(b_labels, b_values) is not None:
            own = dict(zip(paths, values, strict=True))
            c = delong_test(b_labels, np.array([own[q] for q in theirs]), b_values)
            row["difference"] = {"n": len(theirs), "difference": c.difference, "p": c.p_value}
    return row


def _dtc_minus_d(parts: Sequence[_Values]) -> dict[str, Any] | None:
    _, labels, dtc, _ = _arrays(parts, "DTC")
    _, _, d, _ = _arrays(parts, "D")
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    c = delong_test(labels, dtc, d)
    return {"difference": c.difference, "p": c.p_value}


def _document(
    folds: Sequence[_Fold],
    in_profile: _Values | None,
    options: HoldoutOptions,
    networks_profiles: list[str] | None,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    for f in folds:
        summary: dict[str, Any] = {
            "profile": f.profile,
            "status": f.status,
            "trained_on": {"n": f.train_n, "profiles": f.train_profiles},
            "texture_stability_profiles": f.stability_profiles,
            "held_out": {"listed": f.listed, "positives": f.positives_listed},
            "test_labels": str(f.test_labels),
        }
        if f.bundle is not None:
            summary["bundle"] = str(f.bundle)
            summary["bundle_version"] = f.bundle_version
        if f.status != "ok" or f.values is None:
            summary["reason"] = f.reason
            rows.append(
                {
                    "profile": f.profile,
                    "variant": None,
                    "status": f.status,
                    "n": f.listed,
                    "positives": f.positives_listed,
                    "reason": f.reason,
                }
            )
        else:
            summary["held_out"]["scored"] = len(f.values.labels)
            summary["dtc_minus_d"] = _dtc_minus_d([f.values])
            rows += [_row(f.profile, v, [f.values], in_profile) for v in VARIANTS]
        summaries.append(summary)
    parts = [f.values for f in folds if f.values is not None]
    pooled: dict[str, Any] | None = None
    if len(parts) > 1:
        rows += [_row(POOLED, v, parts, in_profile) for v in VARIANTS]
        pooled = {"folds": len(parts), "dtc_minus_d": _dtc_minus_d(parts)}
    return {
        "development": {"data": str(options.data), "labels": str(options.labels)},
        "test": {
            "data": str(options.test_data or options.data),
            "labels": str(options.test_labels or options.labels),
            "separate": options.test_data is not None,
        },
        "networks_from": None
        if options.training.networks_from is None
        else {
            "path": str(options.training.networks_from),
            "networks_training_profiles": networks_profiles,
        },
        "seed": options.training.seed,
        "folds": summaries,
        "pooled": pooled,
        "rows": rows,
    }


# -- Markdown and figure -------------------------------------------------------------------


def _ci(a: dict[str, Any] | None) -> str:
    return "-" if a is None else f"{a['auc']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})"


def _prop(p: dict[str, Any] | None) -> str:
    if p is None:
        return "-"
    return (
        f"{100 * p['value']:.1f} ({100 * p['ci_low']:.1f}-{100 * p['ci_high']:.1f}) "
        f"[{p['successes']}/{p['total']}]"
    )


def render_holdout(document: dict[str, Any]) -> str:
    """``holdout.md``: what was held out, the table, the per-profile summary, the figure."""
    with_b = document.get("in_profile_bundle") is not None
    nets = document["networks_from"]
    test = document["test"]
    lines = ["# Held-out acquisition profiles", ""]
    if document.get("synthetic"):
        lines += [f"**{NOT_FOR_CLINICAL_USE}**", ""]
    lines += [
        "Each fold trains a bundle on the development images of every other profile "
        f"(`{DEFAULT_PROFILE}`, the generator's own images, is always among them) and scores "
        "the held-out profile's images: "
        + (
            f"those of the test set ({test['labels']})."
            if test["separate"]
            else f"the development images of that profile ({test['labels']}), none of them "
            "in the fold's training."
        ),
        "Networks (femur finder, Siamese branch): "
        + (
            f"reused from {nets['path']}, trained on "
            f"{', '.join(nets['networks_training_profiles'])} only."
            if nets
            else "trained in each fold on its training images."
        ),
        "AUC 95% CI by DeLong; sensitivity and specificity at the fold bundle's operating "
        "point of each variant (Wilson 95% CIs). Pooled: the held-out values of all folds "
        "together, each image decided at its own fold's operating point.",
    ]
    if with_b:
        b = document["in_profile_bundle"]
        lines += [
            f"In-profile: bundle {b['bundle']} ({b['path']}) on the same images; held-out - "
            "in-profile: the difference of the AUCs on the images both scored (DeLong P)."
        ]
        if not test["separate"]:
            lines += [
                "Without a separate test set the in-profile bundle is scored on development "
                "images: if it was trained on them its AUC is optimistic."
            ]
    lines += [""]
    header = (
        "| Profile | Model | Held-out n (osteoporosis) | AUC (95% CI) | Sensitivity % (95% CI) "
        "| Specificity % (95% CI) |"
    )
    rule = "|---|---|---|---|---|---|"
    if with_b:
        header += " In-profile AUC (95% CI) | Held-out - in-profile (P) |"
        rule += "---|---|"
    lines += [header, rule]
    for r in document["rows"]:
        if r["status"] != "ok":
            cells = [f"`{r['profile']}`", "skipped", f"{r['n']} ({r['positives']})"]
            cells += ["-", "-", "-"] + (["-", "-"] if with_b else [])
        else:
            name = r["profile"] if r["profile"] == POOLED else f"`{r['profile']}`"
            cells = [
                name,
                r["variant"],
                f"{r['n']} ({r['positives']})",
                _ci(r["auc"]),
                _prop(r["sensitivity"]),
                _prop(r["specificity"]),
            ]
            if with_b:
                ip, d = r["in_profile"], r["difference"]
                cells.append(_ci(ip["auc"]) if ip else "-")
                cells.append("-" if d is None else f"{d['difference']:+.3f} ({d['p']:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    for f in document["folds"]:
        if f["status"] != "ok":
            lines.append(f"- `{f['profile']}`: skipped: {f['reason']}")
            continue
        d = f["dtc_minus_d"]
        lines.append(
            f"- `{f['profile']}`: trained on {f['trained_on']['n']} images "
            f"({', '.join(f['trained_on']['profiles'])}); {f['held_out']['listed']} held out, "
            f"{f['held_out']['scored']} scored; DTC - D = "
            + ("-" if d is None else f"{d['difference']:+.3f} (P {d['p']:.3g})")
            + f"; bundle {f['bundle_version']}"
            + (
                f"; texture stability over {', '.join(f['texture_stability_profiles'])}"
                if f.get("texture_stability_profiles")
                else ""
            )
        )
    pooled = document.get("pooled")
    if pooled and pooled["dtc_minus_d"]:
        d = pooled["dtc_minus_d"]
        lines.append(
            f"- pooled over {pooled['folds']} folds: DTC - D = {d['difference']:+.3f} "
            f"(P {d['p']:.3g})"
        )
    lines += ["", "![Held-out AUC by profile](holdout.png)", ""]
    return "\n".join(lines)


def plot_holdout(document: dict[str, Any], path: Path) -> Path:
    """Per profile (and pooled), D and DTC held-out AUC with 95% CIs; the in-profile
    bundle's AUC as crosses."""
    rows = [r for r in document["rows"] if r["status"] == "ok" and r["variant"] in COMPARED]
    names = list(dict.fromkeys(r["profile"] for r in rows))
    fig = Figure(figsize=(max(4.5, 1.3 * len(names) + 2), 4.5), dpi=120)
    ax = fig.subplots()
    offsets = {"D": -0.12, "DTC": 0.12}
    colours = {"D": "tab:blue", "DTC": "tab:orange"}
    for variant in COMPARED:
        xs, ys, lo, hi, bx, by = [], [], [], [], [], []
        for r in rows:
            if r["variant"] != variant or r["auc"] is None:
                continue
            x = names.index(r["profile"]) + offsets[variant]
            a = r["auc"]
            xs.append(x)
            ys.append(a["auc"])
            lo.append(a["auc"] - a["ci_low"])
            hi.append(a["ci_high"] - a["auc"])
            ip = r.get("in_profile")
            if ip and ip["auc"] is not None:
                bx.append(x)
                by.append(ip["auc"]["auc"])
        ax.errorbar(
            xs, ys, yerr=[lo, hi], fmt="o", capsize=3, color=colours[variant],
            label=f"{variant} held out",
        )  # fmt: skip
        if bx:
            ax.plot(bx, by, "x", color=colours[variant], label=f"{variant} in-profile bundle")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.axhline(0.5, linestyle=":", color="grey", linewidth=1)
    lowest = min([r["auc"]["ci_low"] for r in rows if r["auc"] is not None] + [0.5])
    ax.set(ylabel="AUC (95% CI)", ylim=(min(0.4, lowest - 0.05), 1.02), title="Held-out profiles")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path
