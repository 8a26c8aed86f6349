"""Clinical features from the DICOM header: age, sex and weight, with recorded imputation.

* Age in years: Patient's Age (``nnnY/M/W/D``), else Study Date (or Content/
  Acquisition Date) minus Patient's Birth Date.
* Sex: 1.0 female, 0.0 male (Patient's Sex ``F``/``M``); ``O`` or empty is missing.
* Weight in kg: Patient's Weight, when between 20 and 300 kg.

A missing or implausible value is replaced by the training median stored in
the bundle (``clinical.json``) and the replacement is named in the result's
warnings, so the report can say the score used an assumed value.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pydicom

CLINICAL_FEATURES = ("age", "sex", "weight")
CLINICAL_PREFIX = "clinical:"
UNITS = {"age": "years", "sex": "1 = female", "weight": "kg"}
WEIGHT_RANGE_KG = (20.0, 300.0)
AGE_RANGE_YEARS = (0.0, 120.0)
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def clinical_feature_names() -> list[str]:
    """``clinical:age``, ``clinical:sex``, ``clinical:weight`` (the head's column names)."""
    return [f"{CLINICAL_PREFIX}{name}" for name in CLINICAL_FEATURES]


def _date(value: Any) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def age_years(ds: pydicom.Dataset) -> float | None:
    """Age at the study: Patient's Age, else study (content, acquisition) date - birth date."""
    match = _AGE.match(str(ds.get("PatientAge", "") or "").strip())
    if match:
        age = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    else:
        birth = _date(ds.get("PatientBirthDate"))
        study = next(
            (
                d
                for d in (_date(ds.get(k)) for k in ("StudyDate", "ContentDate", "AcquisitionDate"))
                if d is not None
            ),
            None,
        )
        if birth is None or study is None:
            return None
        age = (study - birth).days / 365.25
    lo, hi = AGE_RANGE_YEARS
    return float(age) if lo <= age <= hi else None


def sex_female(ds: pydicom.Dataset) -> float | None:
    """1.0 for ``F``, 0.0 for ``M``, None otherwise."""
    return {"F": 1.0, "M": 0.0}.get(str(ds.get("PatientSex", "") or "").strip().upper())


def weight_kg(ds: pydicom.Dataset) -> float | None:
    """Patient's Weight in kg when present and plausible."""
    try:
        weight = float(ds.get("PatientWeight") or "nan")
    except (TypeError, ValueError):
        return None
    lo, hi = WEIGHT_RANGE_KG
    return weight if lo <= weight <= hi else None


def read_clinical(ds: pydicom.Dataset) -> dict[str, float | None]:
    """Raw clinical values of one dataset (None = missing), keyed as :data:`CLINICAL_FEATURES`."""
    return {"age": age_years(ds), "sex": sex_female(ds), "weight": weight_kg(ds)}


@dataclass(frozen=True)
class ClinicalImputation:
    """Training medians used for missing values (``clinical.json`` in a bundle)."""

    medians: Mapping[str, float]

    def __post_init__(self) -> None:
        missing = [n for n in CLINICAL_FEATURES if n not in self.medians]
        if missing:
            raise ValueError(f"clinical imputation: no median for {missing}")
        for name in CLINICAL_FEATURES:
            if not np.isfinite(float(self.medians[name])):
                raise ValueError(f"clinical imputation: median of {name} is not finite")

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float | None]]) -> ClinicalImputation:
        """Medians of the non-missing training values (a column with none falls back to 0)."""
        medians = {}
        for name in CLINICAL_FEATURES:
            values = [float(v) for r in rows if (v := r.get(name)) is not None]
            medians[name] = float(np.median(values)) if values else 0.0
        return cls(medians)

    def apply(self, values: Mapping[str, float | None]) -> tuple[np.ndarray, list[str]]:
        """Values in :data:`CLINICAL_FEATURES` order with medians filled in, and the warnings."""
        out, warnings = [], []
        for name in CLINICAL_FEATURES:
            value = values.get(name)
            if value is None:
                value = float(self.medians[name])
                warnings.append(
                    f"{name} missing from the header; imputed training median "
                    f"{value:.3g} ({UNITS[name]})"
                )
            out.append(float(value))
        return np.asarray(out, dtype=np.float64), warnings

    def to_json(self) -> dict[str, Any]:
        """``{"medians": {...}, "units": {...}}``."""
        return {"medians": {n: float(self.medians[n]) for n in CLINICAL_FEATURES}, "units": UNITS}

    @classmethod
    def from_json(cls, data: Any, source: str = "clinical.json") -> ClinicalImputation:
        """Inverse of :meth:`to_json`; ``ValueError`` naming ``source``."""
        try:
            return cls({n: float(data["medians"][n]) for n in CLINICAL_FEATURES})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a valid clinical imputation: {exc!r}") from None
