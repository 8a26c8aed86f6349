"""Training a model bundle from labelled radiographs: finder, Siamese branch, seven heads.

Steps (``triage-node train``):

1. Read the labels CSV (:func:`read_cases`): the synth ``labels.csv`` or a
   site CSV with a ``file`` or ``sop_instance_uid`` column, a ``label`` (0/1)
   or ``t_score`` column (osteoporosis = T <= -2.5) and optional
   ``mask_left``/``mask_right`` columns (PNG paths relative to the data
   directory; ``1``/``0`` flags mean the synth naming ``<stem>_femur_L.png``).
2. Femur finder: trained on the images that have masks, plus a few synthetic
   chest and blank images as "nothing here" examples (``finder_negatives``).
   With ``finder_bundle`` given (``train --finder-bundle``), or without any
   masks, that bundle's finder (default: the demo bundle's) is reused instead.
   With ``networks_from`` (``train --networks-from``) the finder and the
   Siamese branch of that bundle are reused, with its ROI and texture
   settings, and steps 2 and 5 train nothing: only the selection, heads,
   calibration and operating points are fitted again.
3. Per image (in ``jobs`` processes, cached under ``cache_dir`` by the file's
   sha256, the masks' and the settings): decode, then the inference code,
   :func:`~triage_node.score.features.measure_hips`, on the given masks (or
   the finder's, :func:`~triage_node.score.features.find_femurs`): both hips
   checked and cut, all 325 texture features per hip (a texture error leaves
   the hip assessable with its texture missing, as at inference), the CNN
   inputs (float32, as the network sees them); clinical values from the
   header. A hip that is not assessable is replaced by the other hip, as at
   inference; images with no assessable hip are left out and counted.
4. Stratified (by label; grouped by ``patient_id`` when present), seeded split
   into training and validation.
5. Siamese branch on the training split; its pooled features for every image.
6. For each of the seven variants: selection (texture groups by cost, then
   LASSO; :mod:`triage_node.train.selection`) and the head on the training
   split, Platt calibration on the validation split, and there the
   operating point (target sensitivity) and validation AUC with DeLong CI of
   the value the node decides on: the highest assessed side, each hip scored
   in both slots of the head (docs/model.md, "The decision rule"). The
   bilateral value's operating point and AUC are kept beside them. Then the
   variant's one-hip head (:func:`fit_onehip_head`): the selected features in
   one slot, a head and its calibration on per-hip rows (each assessed hip
   alone, with its image's label), for images with one assessable hip
   (docs/model.md, "One hip").
7. The validation reference (:mod:`triage_node.score.reference`): the bundle's
   variant on the validation images at its operating point.
8. :func:`~triage_node.score.bundle.write_bundle` with a manifest describing all of it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from triage_node import durable
from triage_node.assessment import Side
from triage_node.score.bundle import DEMO_BUNDLE_DIR, load_bundle, write_bundle
from triage_node.score.clinical import (
    CLINICAL_FEATURES,
    CLINICAL_PREFIX,
    ClinicalImputation,
    clinical_feature_names,
    read_clinical,
)
from triage_node.score.decode import decode_radiograph
from triage_node.score.features import (
    HipFeatures,
    find_femurs,
    measure_hips,
    patient_row,
    texture_bases,
)
from triage_node.score.femur_finder import FINDER_FILE, SIDES, FemurFinder, FinderConfig
from triage_node.score.manifest import (
    NOT_FOR_CLINICAL_USE,
    VARIANTS,
    BundleManifest,
    OperatingPoint,
)
from triage_node.score.model import (
    CLINICAL_FILE,
    MODEL_FILE,
    SIAMESE_FILE,
    head_file,
    model_info_json,
    onehip_head_file,
)
from triage_node.score.reference import REFERENCE_FILE, ValidationReference
from triage_node.score.roi import RoiSettings
from triage_node.score.siamese import (
    SiameseConfig,
    branch_features,
    siamese_from_safetensors,
    siamese_to_safetensors,
)
from triage_node.score.texture import (
    TextureSettings,
    all_texture_groups,
    side_feature_names,
    texture_cost,
    texture_feature_names,
    texture_groups,
)
from triage_node.synth import render_instance
from triage_node.synth.sites import DEFAULT_PROFILE
from triage_node.train.deep import DeepTrainingSettings, train_siamese
from triage_node.train.finder import (
    FinderSample,
    FinderTrainingSettings,
    finder_sample,
    train_femur_finder,
)
from triage_node.train.head import (
    HeadSettings,
    calibrate,
    choose_operating_point,
    fit_head,
    image_values,
)
from triage_node.train.metrics import auc_with_ci
from triage_node.train.selection import SelectionSettings, feature_group, select_features
from triage_node.train.stability import Stability

OSTEOPOROSIS_T_SCORE = -2.5
#: Columns only the synth cohort's labels.csv has: their presence marks synthetic data.
SYNTH_COLUMNS = ("density_left", "density_right", "vendor", "oracle")
#: The labels column naming each image's acquisition profile (``triage-node synth --profile``).
PROFILE_COLUMN = "profile"
#: Version of the per-image cache entries (3: measure_hips, float32 CNN inputs; 4: each
#: hip's not-assessable reason, for the validation reference).
CACHE_VERSION = 4
SITE_INTENDED_USE = (
    "Triage aid for opportunistic osteoporosis screening on hip radiographs; "
    "not a diagnosis. Confirm with DXA."
)
MASK_SUFFIX = {"left": "L", "right": "R"}
#: What the operating points in ``model.json`` ``thresholds`` were chosen on (docs/model.md,
#: "The decision rule"); ``bilateral_thresholds`` are those of the bilateral value, kept for
#: comparison (``triage-node evaluate``).
DECISION_VALUE = "highest assessed side"


@dataclass(frozen=True)
class Case:
    """One labelled image: its file, label (1 = osteoporosis), masks per side, patient key."""

    path: Path
    label: int
    masks: dict[Side, Path | None]
    patient: str
    profile: str | None = None  # synth acquisition profile (labels.csv ``profile``)


@dataclass(frozen=True)
class CaseSet:
    """Cases read from a labels CSV and what the CSV was.

    ``profiles``: the acquisition profiles of the listed images (sorted; the CSV's
    ``profile`` column, ``["default"]`` for a synth CSV without one), None for site
    data that names none.
    """

    cases: list[Case]
    synthetic: bool
    source: str
    has_masks: bool
    profiles: list[str] | None = None


def _label(row: dict[str, str], where: str) -> int:
    if row.get("label", "").strip() != "":
        value = row["label"].strip()
        if value not in ("0", "1"):
            raise ValueError(f"{where}: label {value!r} is not 0 or 1")
        return int(value)
    if row.get("t_score", "").strip() != "":
        return int(float(row["t_score"]) <= OSTEOPOROSIS_T_SCORE)
    raise ValueError(f"{where}: neither label nor t_score given")


def _index_by_uid(data_dir: Path) -> dict[str, Path]:
    index = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # not DICOM: masks, CSVs, notes
            continue
        if "SOPInstanceUID" in ds:
            index[str(ds.SOPInstanceUID)] = path
    return index


def _mask_path(value: str, image: Path, side: str, data_dir: Path) -> Path | None:
    value = value.strip()
    if value in ("", "0"):
        return None
    if value == "1":
        candidate = image.with_name(f"{image.stem}_femur_{MASK_SUFFIX[side]}.png")
    else:
        candidate = Path(value) if Path(value).is_absolute() else data_dir / value
    return candidate if candidate.exists() else None


def read_cases(labels_csv: Path, data_dir: Path) -> CaseSet:
    """Read a synth ``labels.csv`` or a site CSV (see module doc); ``ValueError`` naming the row."""
    with open(labels_csv, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        rows = list(reader)
    if "file" not in columns and "sop_instance_uid" not in columns:
        raise ValueError(f"{labels_csv}: needs a 'file' or 'sop_instance_uid' column")
    if "label" not in columns and "t_score" not in columns:
        raise ValueError(f"{labels_csv}: needs a 'label' or 't_score' column")
    synthetic = all(c in columns for c in SYNTH_COLUMNS[:3])
    uid_index: dict[str, Path] | None = None
    cases = []
    for number, row in enumerate(rows, start=2):
        where = f"{labels_csv}:{number}"
        if row.get("kind", "hip") not in ("hip", ""):
            continue
        if row.get("file", "").strip():
            path = data_dir / row["file"].strip()
        else:
            if uid_index is None:
                uid_index = _index_by_uid(data_dir)
            uid = row["sop_instance_uid"].strip()
            if uid not in uid_index:
                raise ValueError(f"{where}: no file in {data_dir} has SOP Instance UID {uid}")
            path = uid_index[uid]
        if not path.exists():
            raise ValueError(f"{where}: file {path} does not exist")
        masks: dict[Side, Path | None] = {}
        for side in SIDES:
            column = f"mask_{side}"
            value = row.get(column, "1" if column not in columns else "")
            masks[side] = _mask_path(value or "", path, side, data_dir)
        patient = row.get("patient_id", "").strip() or str(path)
        # the profile column names it (blank: the generator's own); a synth CSV without
        # the column is all default; site data without it: not known
        profile = (
            row[PROFILE_COLUMN].strip() or DEFAULT_PROFILE
            if PROFILE_COLUMN in columns
            else (DEFAULT_PROFILE if synthetic else None)
        )
        cases.append(Case(path, _label(row, where), masks, patient, profile))
    if not cases:
        raise ValueError(f"{labels_csv}: no hip images listed")
    profiles = {c.profile for c in cases}
    return CaseSet(
        cases,
        synthetic,
        "triage-node synth" if synthetic else "site",
        any(m is not None for c in cases for m in c.masks.values()),
        None if None in profiles else sorted(str(p) for p in profiles),
    )


# -- per-image work (runs in worker processes) ----------------------------------------------

_WORKER_FINDER: FemurFinder | None = None


def single_thread_worker() -> None:
    """One thread per process for torch, SimpleITK (pyradiomics) and BLAS: processes
    give the parallelism, and two processes with two threads each on two cores
    only fight over them."""
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    threadpool_limits(1)


def _init_worker(finder_bytes: bytes | None) -> None:
    global _WORKER_FINDER
    single_thread_worker()
    _WORKER_FINDER = FemurFinder.from_safetensors(finder_bytes) if finder_bytes else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A femur mask PNG (non-zero inside) as a bool array; ``ValueError`` unless it is ``shape``."""
    mask = np.asarray(Image.open(path)) != 0
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != shape:
        raise ValueError(f"mask {path}: shape {mask.shape} != image shape {shape}")
    return mask


def _cached(
    cache_dir: Path | None, key: str, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``compute()``, or its result stored as ``<cache_dir>/<key>.npz`` (no pickle)."""
    if cache_dir is not None:
        path = cache_dir / f"{key}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
    result = compute()
    if cache_dir is not None:
        with durable.atomic_write(path, fsync=False) as f:  # a cache: atomic, not durable
            np.savez_compressed(f, **result)  # type: ignore[arg-type]
    return result


def _masks_hash(case: Case) -> str:
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in case.masks.values() if p is not None)
    ).hexdigest()


def _finder_item(task: tuple[Case, str, Path | None]) -> dict[str, np.ndarray]:
    case, settings_key, cache_dir = task
    key = f"finder|{_sha256(case.path)}|{_masks_hash(case)}|{settings_key}"

    def compute() -> dict[str, np.ndarray]:
        decoded = decode_radiograph(pydicom.dcmread(case.path))
        masks = [load_mask(p, decoded.pixels.shape) for p in case.masks.values() if p]
        config = FinderConfig.from_json(settings_key)
        sample = finder_sample(decoded.pixels, decoded.spacing_mm, masks, config)
        return {"image": sample.image, "target": sample.target}

    return _cached(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:40], compute)


def _feature_item(task: tuple[Case, str, Path | None]) -> dict[str, np.ndarray]:
    """One image's measurements by the inference code (see module doc), as cacheable arrays.

    ``ok_<side>``: the hip is assessable; ``reason_<side>``: why not (``""`` when it
    is); ``texture_<side>``: its 325 texture
    values (NaN: not measured); ``deep_input_<side>``: the CNN's float32 input
    (a 1 x 1 zero when not assessable); ``clinical``: raw header values (NaN: missing).
    """
    case, settings_key, cache_dir = task
    key = f"features|{_sha256(case.path)}|{_masks_hash(case)}|{settings_key}"

    def compute() -> dict[str, np.ndarray]:
        ds = pydicom.dcmread(case.path)
        decoded = decode_radiograph(ds)
        settings = json.loads(settings_key)
        texture = settings["texture"]
        texture_settings = TextureSettings.from_json(texture)
        masks: dict[Side, np.ndarray | None]
        reasons: dict[Side, str | None] = {}
        if any(case.masks.values()):
            masks = {
                s: (load_mask(p, decoded.pixels.shape) if p else None)
                for s, p in case.masks.items()
            }
        elif _WORKER_FINDER is None:
            raise ValueError(f"{case.path}: no masks and no femur finder")
        else:
            masks, reasons = find_femurs(ds, decoded, _WORKER_FINDER)
        names = texture_feature_names()
        hips = measure_hips(
            decoded,
            masks,
            reasons,
            RoiSettings.from_json(settings["roi"]),
            texture_settings,
            names,
        )
        out: dict[str, np.ndarray] = {}
        for side in SIDES:
            ok = side in hips.rois
            out[f"ok_{side}"] = np.array(ok)
            out[f"reason_{side}"] = np.array(hips.not_assessable.get(side, ""))
            out[f"texture_{side}"] = hips.texture_vector(side, names)
            out[f"deep_input_{side}"] = (
                hips.deep_input[side] if ok else np.zeros((1, 1), np.float32)
            )
        clinical = read_clinical(ds)
        out["clinical"] = np.array(
            [np.nan if clinical[c] is None else clinical[c] for c in CLINICAL_FEATURES]
        )
        return out

    return _cached(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:40], compute)


def _map(
    function: Any,
    tasks: list[Any],
    jobs: int,
    desc: str,
    progress: bool,
    finder_bytes: bytes | None = None,
) -> list[Any]:
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress)
    results = []
    if jobs <= 1:
        _init_worker(finder_bytes)
        for task in tasks:
            results.append(function(task))
            bar.update()
    else:
        with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(finder_bytes,)) as pool:
            for result in pool.map(function, tasks, chunksize=1):
                results.append(result)
                bar.update()
    bar.close()
    return results


# -- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingOptions:
    """Everything ``triage-node train`` can set (see ``train/command.py`` for the flags)."""

    variant: str = "DTC"
    seed: int = 0
    epochs: int = 30
    finder_epochs: int = 40
    finder_negatives: int = 16
    finder_images: int | None = 400
    jobs: int = 2
    torch_threads: int = 2
    cache_dir: Path | None = None
    validation_fraction: float = 0.25
    target_sensitivity: float = 0.90
    calibration: str = "platt"
    bilateral: bool = False
    finder_bundle: Path | None = None
    networks_from: Path | None = None
    texture_budget: float = 0.25
    progress: bool = True
    texture: TextureSettings = field(default_factory=TextureSettings)
    texture_stability: Stability | None = None
    finder: FinderConfig = field(default_factory=FinderConfig)
    roi: RoiSettings = field(default_factory=RoiSettings)
    siamese: SiameseConfig = field(default_factory=lambda: SiameseConfig(first_width=16))
    patience: int | None = 5
    min_epochs: int = 8
    augment: float = 0.0  # Siamese processing augmentation probability (train/augment.py)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant: {self.variant!r} is not one of {sorted(VARIANTS)}")
        if not 0.05 <= self.validation_fraction <= 0.5:
            raise ValueError(f"validation_fraction: {self.validation_fraction} not in [0.05, 0.5]")
        if self.epochs < 1 or self.finder_epochs < 1 or self.jobs < 1 or self.torch_threads < 1:
            raise ValueError("epochs, finder_epochs, jobs and torch_threads must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience: {self.patience} must be >= 1 (or None: no early stop)")
        if not 0.0 <= self.augment <= 1.0:
            raise ValueError(f"augment: {self.augment} not in [0, 1]")
        if not 0.0 < self.texture_budget <= 1.0:
            raise ValueError(f"texture_budget: {self.texture_budget} not in (0, 1]")
        stability = self.texture_stability
        if stability is not None and stability.normalisation != self.texture.normalisation:
            raise ValueError(
                f"texture stability: measured with normalisation {stability.normalisation!r}, "
                f"but training uses {self.texture.normalisation!r}"
            )

    @property
    def texture_on_roi(self) -> TextureSettings:
        """The texture settings with the ROI grid's spacing (shape features in mm)."""
        spacing = (self.roi.spacing_mm, self.roi.spacing_mm)
        return replace(self.texture, spacing_mm=spacing)


@dataclass(frozen=True)
class TrainingResult:
    """What training wrote: the bundle directory and its manifest."""

    bundle: Path
    manifest: BundleManifest


def synthetic_negatives(count: int, seed: int, config: FinderConfig) -> list[Any]:
    """Finder samples of synthetic chest and blank images (no femur): "not found" examples."""
    samples = []
    for i in range(count):
        image = render_instance(
            seed, index=900_000 + i, size="small", kind=("chest", "blank")[i % 2]
        )
        decoded = decode_radiograph(image.dataset)
        samples.append(finder_sample(decoded.pixels, decoded.spacing_mm, [], config))
    return samples


@dataclass(frozen=True)
class ReusedNetworks:
    """The trained networks of an existing bundle and the settings they were trained with."""

    source: str  # "<name> <version>"
    finder_bytes: bytes
    finder_note: str
    siamese: Any  # SiameseNet, eval mode
    roi: RoiSettings
    texture: TextureSettings
    history: dict[str, Any]
    #: The acquisition profiles the networks were trained on (None: not recorded).
    training_profiles: list[str] | None = None


def reused_networks(path: Path) -> ReusedNetworks:
    """The femur finder and Siamese branch of the bundle at ``path`` (``train --networks-from``)."""
    bundle = load_bundle(path)
    info = bundle.read_json(MODEL_FILE)
    texture = info["texture"]
    siamese_info = info.get("siamese", {})
    source = f"{bundle.manifest.name} {bundle.manifest.version}"
    return ReusedNetworks(
        source=source,
        finder_bytes=bundle.raw(FINDER_FILE),
        finder_note=f"{info.get('finder', 'femur finder')} (of {source})",
        siamese=siamese_from_safetensors(bundle.raw(SIAMESE_FILE)),
        roi=RoiSettings.from_json(info.get("roi")),
        texture=replace(TextureSettings.from_json(texture), spacing_mm=TextureSettings.spacing_mm),
        history=dict(siamese_info.get("training", {})),
        training_profiles=networks_training_profiles(info),
    )


def networks_training_profiles(model_info: dict[str, Any]) -> list[str] | None:
    """The acquisition profiles a bundle's femur finder and Siamese branch were trained on,
    from its ``model.json`` (None: the bundle predates the record, or its data named none)."""
    profiles = model_info.get("networks_training_profiles")
    return None if profiles is None else sorted(str(p) for p in profiles)


def _bundle_name(path: Path) -> str:
    """``<name> <version>`` of the bundle at ``path`` (what a reused part came from)."""
    manifest = load_bundle(path).manifest
    return f"{manifest.name} {manifest.version}"


def _reused_finder(options: TrainingOptions) -> tuple[bytes, list[str] | None]:
    """The femur finder of ``finder_bundle`` (default: the demo bundle), and the profiles
    its networks were trained on (None: not recorded)."""
    path = options.finder_bundle or DEMO_BUNDLE_DIR
    bundle = load_bundle(path)
    return bundle.raw(FINDER_FILE), networks_training_profiles(bundle.read_json(MODEL_FILE))


def split_development(
    labels: np.ndarray, groups: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, patient-grouped, seeded split: (train indices, validation indices)."""
    folds = max(2, int(round(1.0 / fraction)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, validation = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(train), np.sort(validation)


def candidate_feature_names(deep_per_side: int) -> list[str]:
    """Every feature the selection sees: clinical, texture per side, deep per side."""
    texture = list(texture_feature_names())
    deep = [f"deep_{i:03d}" for i in range(deep_per_side)]
    return (
        clinical_feature_names()
        + side_feature_names(texture, "right")
        + side_feature_names(texture, "left")
        + side_feature_names(deep, "right")
        + side_feature_names(deep, "left")
    )


def onehip_feature_names(names: Sequence[str]) -> list[str]:
    """The one-hip head's candidates: clinical and one hip's features, in the ``right:`` slot."""
    return [n for n in names if not n.startswith("left:")]


def fit_onehip_head(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    names: Sequence[str],
    selected: Sequence[str],
    threshold: float,
    options: TrainingOptions,
) -> tuple[Any, dict[str, Any]]:
    """A variant's one-hip head on per-hip rows (each assessed hip alone, its image's label).

    Its features are the bilateral head's selection put in one slot (clinical, and
    each selected per-side feature of either side as ``right:``), so a one-hip image
    costs no texture the bilateral head does not compute, and no second selection
    runs. Head on the training images' hips, Platt calibration on the validation
    images' hips. The node decides a one-hip image at the variant's one threshold;
    the sensitivity and specificity per validation hip at that threshold, and the
    threshold a separate operating point would have, are kept for comparison
    (docs/model.md, "One hip").
    """
    one_slot = {
        n if n.startswith(CLINICAL_PREFIX) else f"right:{n.partition(':')[2]}" for n in selected
    }
    chosen = [n for n in names if n in one_slot]
    columns = [list(names).index(n) for n in chosen]
    head = fit_head(X[train][:, columns], y[train], chosen, HeadSettings(seed=options.seed))
    head = calibrate(head, X[val][:, columns], y[val], options.calibration)
    p = head.probability(X[val][:, columns])
    auc = auc_with_ci(y[val], p)
    own = choose_operating_point(y[val], p, options.target_sensitivity)
    positive = p >= threshold
    return head, {
        "validation_hips": int(val.sum()),
        "validation_auc": auc.auc,
        "validation_auc_ci": [auc.ci_low, auc.ci_high],
        "sensitivity_at_threshold": float(positive[y[val] == 1].mean()),
        "specificity_at_threshold": float((~positive[y[val] == 0]).mean()),
        "own_threshold": own.threshold,
        "features": len(chosen),
    }


def _train_siamese(
    options: TrainingOptions,
    tensors: dict[Side, torch.Tensor],
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    say: Callable[..., None],
) -> tuple[Any, dict[str, Any]]:
    """Step 4: the Siamese branch trained on the training split (early stopping on validation)."""
    config = options.siamese
    say(
        f"train: Siamese on {len(train_idx)} pairs, validation {len(val_idx)}, "
        f"CNN input {options.roi.deep_size_px} px at {options.roi.deep_spacing_mm} mm, widths "
        f"{config.first_width or config.width}/{2 * config.width}/{4 * config.width}, "
        f"up to {options.epochs} epochs"
        + (f", early stop after {options.patience} without gain" if options.patience else "")
        + (f", processing augmentation of {options.augment:.0%} of pairs" * bool(options.augment))
    )
    siamese = train_siamese(
        tensors["left"][train_idx],
        tensors["right"][train_idx],
        y[train_idx],
        config,
        DeepTrainingSettings(
            epochs=options.epochs,
            seed=options.seed,
            threads=options.torch_threads,
            patience=options.patience,
            min_epochs=min(options.min_epochs, options.epochs),
            augment=options.augment,
            input_spacing_mm=options.roi.deep_spacing_mm,
        ),
        progress=options.progress,
        validation=(tensors["left"][val_idx], tensors["right"][val_idx], y[val_idx]),
    )
    history = dict(getattr(siamese, "training_history", {}))
    if history:
        say(
            f"train: Siamese stopped after {history['epochs_run']} epoch(s), best epoch "
            f"{history['best_epoch']}"
        )
    return siamese, history


def train_bundle(
    data_dir: Path, labels_csv: Path, out: Path, options: TrainingOptions | None = None
) -> TrainingResult:
    """Train everything a bundle needs and write it to ``out`` (see module doc)."""
    options = options or TrainingOptions()
    say = print if options.progress else (lambda *a, **k: None)
    reused = reused_networks(options.networks_from) if options.networks_from else None
    if reused is not None:  # the networks' own settings, whatever the preset said
        options = replace(
            options,
            roi=reused.roi,
            # the networks do not see texture: its normalisation is this training's choice
            texture=replace(reused.texture, normalisation=options.texture.normalisation),
            siamese=reused.siamese.config,
        )
    case_set = read_cases(labels_csv, data_dir)
    cases = case_set.cases
    if options.cache_dir is not None:
        options.cache_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(options.torch_threads)

    # 1. femur finder
    finder_key = options.finder.to_json()
    with_masks = [c for c in cases if any(c.masks.values())]
    finder_cases = with_masks
    if options.finder_images is not None and len(with_masks) > options.finder_images:
        pick = np.random.default_rng(options.seed).choice(
            len(with_masks), options.finder_images, replace=False
        )
        finder_cases = [with_masks[i] for i in sorted(pick)]
    # the profiles the finder and the Siamese branch see (docs/model.md, "Held-out profiles")
    networks_profiles = case_set.profiles
    if reused is not None:
        finder_bytes = reused.finder_bytes
        finder_note = reused.finder_note
        networks_profiles = reused.training_profiles
        say(f"train: femur finder and Siamese branch of {reused.source}")
    elif with_masks and options.finder_bundle is None:
        raw = _map(
            _finder_item,
            [(c, finder_key, options.cache_dir) for c in finder_cases],
            options.jobs,
            "finder inputs",
            options.progress,
        )
        samples = [FinderSample(r["image"], r["target"]) for r in raw]
        samples += synthetic_negatives(options.finder_negatives, options.seed, options.finder)
        finder_settings = FinderTrainingSettings(
            epochs=options.finder_epochs, seed=options.seed, threads=options.torch_threads
        )
        digest = hashlib.sha256(f"{finder_key}|{finder_settings}".encode())
        for sample in samples:
            digest.update(np.ascontiguousarray(sample.image).tobytes())
            digest.update(np.ascontiguousarray(sample.target).tobytes())
        cached = (
            options.cache_dir / f"finder-{digest.hexdigest()[:40]}.safetensors"
            if options.cache_dir is not None
            else None
        )
        if cached is not None and cached.exists():  # same inputs, same settings: same weights
            finder_bytes = cached.read_bytes()
            say(f"train: femur finder from the cache ({cached.name})")
        else:
            say(
                f"train: femur finder on {len(finder_cases)} masked images + "
                f"{options.finder_negatives} negatives, {options.finder_epochs} epochs"
            )
            finder = train_femur_finder(
                samples, options.finder, finder_settings, progress=options.progress
            )
            finder_bytes = finder.to_safetensors()
            if cached is not None:  # a cache: atomic, not durable
                durable.write_bytes(cached, finder_bytes, fsync=False)
        finder_note = f"trained on {len(finder_cases)} masked images + "
        finder_note += f"{options.finder_negatives} synthetic negatives"
    else:
        finder_bytes, finder_profiles = _reused_finder(options)
        # the finder's own profiles count too; unrecorded ones leave the record unknown
        networks_profiles = (
            None
            if finder_profiles is None or case_set.profiles is None
            else sorted({*finder_profiles, *case_set.profiles})
        )
        finder_note = f"reused from {_bundle_name(options.finder_bundle or DEMO_BUNDLE_DIR)}"

    # 2. per-image features (cached)
    settings_key = json.dumps(
        {
            "texture": options.texture_on_roi.to_json(),
            "roi": options.roi.to_json(),
            "version": CACHE_VERSION,
            "finder": hashlib.sha256(finder_bytes).hexdigest() if not with_masks else "",
        },
        sort_keys=True,
    )
    items = _map(
        _feature_item,
        [(c, settings_key, options.cache_dir) for c in cases],
        options.jobs,
        "texture features",
        options.progress,
        finder_bytes,
    )
    usable = [i for i, it in enumerate(items) if it["ok_right"] or it["ok_left"]]
    excluded = len(cases) - len(usable)
    if excluded:
        say(f"train: {excluded} image(s) without an assessable hip left out")
    y = np.array([cases[i].label for i in usable])
    if y.min() == y.max() or min(int(y.sum()), int(len(y) - y.sum())) < 4:
        raise ValueError("training data: need at least 4 images of each class")
    inputs: dict[Side, list[np.ndarray]] = {s: [] for s in SIDES}
    textures: dict[Side, list[np.ndarray]] = {s: [] for s in SIDES}
    for i in usable:
        it = items[i]
        for side in SIDES:
            use = side if it[f"ok_{side}"] else ("left" if side == "right" else "right")
            inputs[side].append(it[f"deep_input_{use}"])
            textures[side].append(it[f"texture_{use}"])
    clinical_raw = np.vstack([items[i]["clinical"] for i in usable])

    # 3. split
    train_idx, val_idx = split_development(
        y, [cases[i].patient for i in usable], options.validation_fraction, options.seed
    )

    # 4. Siamese branch
    config = options.siamese
    tensors = {s: torch.from_numpy(np.stack(inputs[s])[:, None]) for s in SIDES}
    if reused is not None:
        siamese = reused.siamese
        history = reused.history
    else:
        siamese, history = _train_siamese(options, tensors, y, train_idx, val_idx, say)
    with torch.no_grad():
        deep = {s: branch_features(siamese.branch, tensors[s]) for s in SIDES}

    # 5. feature matrix
    imputation = ClinicalImputation.fit(
        [
            {
                c: (None if np.isnan(v) else float(v))
                for c, v in zip(CLINICAL_FEATURES, row, strict=True)
            }
            for row in clinical_raw[train_idx]
        ]
    )
    base_texture = list(texture_feature_names())
    names = candidate_feature_names(config.features_per_side)
    clinical_rows = [
        imputation.apply(
            {
                c: (None if np.isnan(v) else float(v))
                for c, v in zip(CLINICAL_FEATURES, clinical_raw[k], strict=True)
            }
        )[0]
        for k in range(len(y))
    ]
    hips = [
        {
            s: HipFeatures(dict(zip(base_texture, textures[s][k], strict=True)), deep[s][k])
            for s in SIDES
        }
        for k in range(len(y))
    ]
    X = np.vstack([patient_row(names, clinical_rows[k], hips[k]) for k in range(len(y))])
    # Each hip in both slots, as inference scores a side (BundleScoringModel.probabilities):
    # the image value the operating point is chosen on is the highest assessed side.
    X_side = {
        side: np.vstack(
            [
                patient_row(
                    names, clinical_rows[k], {"right": hips[k][side], "left": hips[k][side]}
                )
                for k in range(len(y))
            ]
        )
        for side in SIDES
    }
    assessed: list[list[Side]] = [[s for s in SIDES if items[i][f"ok_{s}"]] for i in usable]
    # One-hip examples: every assessed hip of an image, alone, with the image's label.
    onehip_names = onehip_feature_names(names)
    X_hip, y_hip, hip_image = [], [], []
    for k in range(len(y)):
        for side in assessed[k]:
            hip = hips[k][side]
            X_hip.append(patient_row(onehip_names, clinical_rows[k], {"right": hip, "left": hip}))
            y_hip.append(y[k])
            hip_image.append(k)
    X_hip_all, y_hip_all, hip_of = np.vstack(X_hip), np.array(y_hip), np.array(hip_image)
    hip_train = np.isin(hip_of, train_idx)
    hip_val = np.isin(hip_of, val_idx)

    # 6. seven heads
    files: dict[str, bytes] = {}
    thresholds: dict[str, float] = {}
    bilateral_thresholds: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    operating_points: dict[str, OperatingPoint] = {}
    selected_by_variant: dict[str, list[str]] = {}
    values_by_variant: dict[str, np.ndarray] = {}
    y_train, y_val = y[train_idx], y[val_idx]
    for variant in VARIANTS:
        selected = select_features(
            X[train_idx],
            y_train,
            names,
            variant,
            SelectionSettings(
                bilateral=options.bilateral,
                seed=options.seed,
                texture_budget=options.texture_budget,
                stable_texture=None
                if options.texture_stability is None
                else options.texture_stability.kept,
            ),
        )
        columns = [names.index(n) for n in selected]
        head = fit_head(
            X[train_idx][:, columns], y_train, selected, HeadSettings(seed=options.seed)
        )
        head = calibrate(head, X[val_idx][:, columns], y_val, options.calibration)
        p_bilateral = head.probability(X[val_idx][:, columns])
        p_val = image_values(
            {s: head.probability(X_side[s][val_idx][:, columns]) for s in SIDES},
            [assessed[k] for k in val_idx],
        )
        op = choose_operating_point(y_val, p_val, options.target_sensitivity)
        bilateral_op = choose_operating_point(y_val, p_bilateral, options.target_sensitivity)
        auc = auc_with_ci(y_val, p_val)
        bilateral_auc = auc_with_ci(y_val, p_bilateral)
        files[head_file(variant)] = (json.dumps(head.to_json(), indent=1) + "\n").encode()
        thresholds[variant] = op.threshold
        bilateral_thresholds[variant] = bilateral_op.threshold
        operating_points[variant] = op
        selected_by_variant[variant] = selected
        values_by_variant[variant] = p_val
        metrics[variant] = {
            "validation_auc": auc.auc,
            "validation_auc_ci": [auc.ci_low, auc.ci_high],
            "threshold": op.threshold,
            "validation_sensitivity": op.validation_sensitivity,
            "validation_specificity": op.validation_specificity,
            "bilateral": {
                "validation_auc": bilateral_auc.auc,
                "validation_auc_ci": [bilateral_auc.ci_low, bilateral_auc.ci_high],
                "threshold": bilateral_op.threshold,
                "validation_sensitivity": bilateral_op.validation_sensitivity,
                "validation_specificity": bilateral_op.validation_specificity,
            },
            "selected": {
                g: sum(1 for n in selected if feature_group(n) == g) for g in VARIANTS[variant]
            },
        }
        groups = texture_groups(texture_bases(selected))
        if "texture" in VARIANTS[variant]:
            metrics[variant]["texture_groups"] = [f"{t}/{c}" for t, c in groups]
            metrics[variant]["texture_cost_fraction"] = round(
                texture_cost(groups) / texture_cost(all_texture_groups()), 3
            )
        say(
            f"train: {variant:>3} validation AUC {auc.auc:.3f} "
            f"({auc.ci_low:.3f}-{auc.ci_high:.3f}), {len(selected)} features"
        )
        onehip, onehip_metrics = fit_onehip_head(
            X_hip_all, y_hip_all, hip_train, hip_val, onehip_names, selected, op.threshold, options
        )
        files[onehip_head_file(variant)] = (json.dumps(onehip.to_json(), indent=1) + "\n").encode()
        metrics[variant]["one_hip"] = onehip_metrics
        say(
            f"train: {variant:>3} one-hip head: validation AUC per hip "
            f"{onehip_metrics['validation_auc']:.3f}, {len(onehip.feature_names)} features"
        )

    # 7. validation reference: the bundle's variant at its operating point
    source = (
        f"validation split of the development data ({labels_csv.name}; {len(val_idx)} "
        f"images, {int(y_val.sum())} positive; split seed {options.seed})"
    )
    reference = ValidationReference.from_outcomes(
        values_by_variant[options.variant],
        [
            str(items[usable[k]][f"reason_{side}"]) or None
            if f"reason_{side}" in items[usable[k]]
            else (None if items[usable[k]][f"ok_{side}"] else "not assessable")
            for k in val_idx
            for side in SIDES
        ],
        operating_points[options.variant].threshold,
        source,
    )
    files[REFERENCE_FILE] = reference.dumps().encode()

    # 8. bundle
    files[FINDER_FILE] = finder_bytes
    files[SIAMESE_FILE] = siamese_to_safetensors(siamese)
    files[CLINICAL_FILE] = (json.dumps(imputation.to_json(), indent=1) + "\n").encode()
    files[MODEL_FILE] = model_info_json(
        options.texture_on_roi,
        thresholds,
        {
            "roi": options.roi.to_json(),
            "siamese": {
                "width": config.width,
                "first_width": config.first_width or config.width,
                "training": history,
            },
            "finder": finder_note,
            "calibration": options.calibration,
            "bilateral_selection": options.bilateral,
            "decision_value": DECISION_VALUE,
            "bilateral_thresholds": bilateral_thresholds,
            # what the images were (synth --profile; docs/model.md, "Held-out profiles")
            "training_profiles": case_set.profiles,
            "networks_training_profiles": networks_profiles,
            **(
                {}
                if options.texture_stability is None
                else {"texture_stability": options.texture_stability.record()}
            ),
        },
    )
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    files_digest = hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()[:8]
    summary = {
        "source": case_set.source,
        "labels_csv": labels_csv.name,
        "images_listed": len(cases),
        "images_used": len(usable),
        "images_without_assessable_hip": excluded,
        "positives": int(y.sum()),
        "train": {"n": len(train_idx), "positives": int(y_train.sum())},
        "validation": {"n": len(val_idx), "positives": int(y_val.sum())},
        "split": f"stratified, patient-grouped, seed {options.seed}, "
        f"validation fraction {options.validation_fraction}",
        "masks": "given" if case_set.has_masks else "from the femur finder",
        "siamese_epochs": history.get("epochs_run", options.epochs),
        "siamese_best_epoch": history.get("best_epoch"),
        "finder": finder_note,
        "seed": options.seed,
        **({"networks_from": reused.source} if reused is not None else {}),
    }
    manifest = BundleManifest(
        name=options.variant,
        version=f"{created[:10]}.s{options.seed}.{files_digest}",
        created=created,
        variant=options.variant,
        synthetic=case_set.synthetic,
        training_data=summary,
        feature_names=names,
        selected_features=selected_by_variant[options.variant],
        operating_point=operating_points[options.variant],
        files={},
        metrics={"validation": metrics, "target_sensitivity": options.target_sensitivity},
        intended_use=NOT_FOR_CLINICAL_USE if case_set.synthetic else SITE_INTENDED_USE,
    )
    write_bundle(out, manifest, files)
    say(f"train: wrote bundle {out} ({options.variant}, version {manifest.version})")
    return TrainingResult(out, manifest)
