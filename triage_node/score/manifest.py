"""The model bundle's manifest: what a bundle is, how it was trained, and the hash of every file.

A bundle is a directory holding ``manifest.json`` and weight files in formats
that load without unpickling (``.safetensors``, ``.json``, ``.npz`` read with
``allow_pickle=False``). The manifest is the only file without a hash; every
other file the model needs is listed in ``files`` with its sha256.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_NAME = "triage-node-model-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: File kinds a bundle may hold; anything else (a pickle, a script) is refused.
ALLOWED_SUFFIXES = (".json", ".safetensors", ".npz")
NOT_FOR_CLINICAL_USE = (
    "Trained on synthetic data. NOT FOR CLINICAL USE: the probabilities mean nothing "
    "about real patients."
)
#: The seven model variants of the paper: which feature groups each uses.
VARIANTS: dict[str, tuple[str, ...]] = {
    "C": ("clinical",),
    "T": ("texture",),
    "TC": ("texture", "clinical"),
    "D": ("deep",),
    "DC": ("deep", "clinical"),
    "DT": ("deep", "texture"),
    "DTC": ("deep", "texture", "clinical"),
}


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold chosen on validation data for a target sensitivity.

    ``threshold`` is on the calibrated probability scale (0..1).
    """

    threshold: float
    target_sensitivity: float
    validation_sensitivity: float
    validation_specificity: float

    def __post_init__(self) -> None:
        for name in (
            "threshold",
            "target_sensitivity",
            "validation_sensitivity",
            "validation_specificity",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"operating_point.{name}: {value!r} is not a number in [0, 1]")


@dataclass(frozen=True)
class BundleManifest:
    """Everything ``manifest.json`` says about a bundle.

    Parameters
    ----------
    name, version:
        Model name (e.g. ``"DTC"``) and version string shown in reports.
    created:
        ISO 8601 timestamp of training, given by the trainer (never read from a clock here).
    variant:
        One of :data:`VARIANTS` (``"C"`` ... ``"DTC"``).
    synthetic:
        True when trained on synthetic data; ``intended_use`` must then carry
        :data:`NOT_FOR_CLINICAL_USE`.
    training_data:
        Summary of the training set (counts, positives, source), free-form JSON.
    feature_names:
        Every candidate feature the selection saw, in order.
    selected_features:
        The features the head uses, in the head's input order.
    operating_point:
        See :class:`OperatingPoint`.
    metrics:
        Validation/test metrics, free-form JSON.
    files:
        File name (relative to the bundle directory) -> lowercase hex sha256.
    """

    name: str
    version: str
    created: str
    variant: str
    synthetic: bool
    training_data: dict[str, Any]
    feature_names: list[str]
    selected_features: list[str]
    operating_point: OperatingPoint
    files: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in ("name", "version", "created"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"manifest {name}: must be a non-empty string")
        if self.variant not in VARIANTS:
            raise ValueError(f"manifest variant: {self.variant!r} is not one of {sorted(VARIANTS)}")
        if not isinstance(self.synthetic, bool):
            raise TypeError(f"manifest synthetic: {self.synthetic!r} is not a bool")
        if self.synthetic and NOT_FOR_CLINICAL_USE not in self.intended_use:
            raise ValueError(
                f"manifest intended_use: a synthetic bundle must say {NOT_FOR_CLINICAL_USE!r}"
            )
        if self.format != FORMAT_NAME or self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"manifest format: {self.format!r} v{self.format_version} is not "
                f"{FORMAT_NAME!r} v{FORMAT_VERSION}"
            )
        missing = [f for f in self.selected_features if f not in self.feature_names]
        if missing:
            raise ValueError(f"manifest selected_features: not in feature_names: {missing[:5]}")
        for file_name, digest in self.files.items():
            if (
                file_name == MANIFEST_NAME
                or "/" in file_name
                or "\\" in file_name
                or file_name.startswith(".")
            ):
                raise ValueError(f"manifest files: {file_name!r} is not a plain file name")
            if not file_name.endswith(ALLOWED_SUFFIXES):
                raise ValueError(
                    f"manifest files: {file_name!r} is not one of the allowed kinds "
                    f"{ALLOWED_SUFFIXES} (bundles never hold pickles)"
                )
            if (
                not isinstance(digest, str)
                or len(digest) != 64
                or any(c not in "0123456789abcdef" for c in digest)
            ):
                raise ValueError(f"manifest files: {file_name!r} sha256 {digest!r} is malformed")

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (keys in a stable order)."""
        return asdict(self)

    def dumps(self) -> str:
        """The manifest as ``manifest.json`` text."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> BundleManifest:
        """Build from parsed ``manifest.json``; raises ``ValueError`` naming the bad key."""
        if not isinstance(data, dict):
            raise ValueError("manifest: top level is not a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"manifest: unknown keys {unknown}")
        try:
            op = OperatingPoint(**data["operating_point"])
            return cls(**{**data, "operating_point": op})
        except KeyError as exc:
            raise ValueError(f"manifest: missing key {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"manifest: {exc}") from None
