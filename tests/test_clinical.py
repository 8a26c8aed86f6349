"""Clinical features from DICOM headers: age sources, sex coding, weight, imputation warnings."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset

from triage_node.score.clinical import (
    ClinicalImputation,
    age_years,
    clinical_feature_names,
    read_clinical,
)


def _ds(**tags: str) -> Dataset:
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def test_age_from_patient_age_or_dates() -> None:
    assert age_years(_ds(PatientAge="068Y", PatientBirthDate="19000101")) == 68.0
    assert age_years(_ds(PatientAge="018M")) == pytest.approx(1.5)
    by_dates = age_years(_ds(PatientBirthDate="19570101", StudyDate="20250101"))
    assert by_dates == pytest.approx(68.0, abs=0.01)
    # Content Date stands in for a missing Study Date; garbage gives None.
    assert age_years(_ds(PatientBirthDate="19570101", ContentDate="20170101")) == pytest.approx(
        60.0, abs=0.01
    )
    assert age_years(_ds(PatientAge="abc", PatientBirthDate="1957")) is None
    assert age_years(_ds(PatientBirthDate="20300101", StudyDate="20250101")) is None


def test_read_clinical_and_impute_with_warnings() -> None:
    full = read_clinical(_ds(PatientAge="070Y", PatientSex="F", PatientWeight="61.5"))
    assert full == {"age": 70.0, "sex": 1.0, "weight": 61.5}
    sparse = read_clinical(_ds(PatientSex="O", PatientWeight="0"))
    assert sparse == {"age": None, "sex": None, "weight": None}

    imputation = ClinicalImputation.fit(
        [full, {"age": 60.0, "sex": 0.0, "weight": None}, {"age": 80.0, "sex": 1.0, "weight": 70}]
    )
    assert imputation.medians == {"age": 70.0, "sex": 1.0, "weight": pytest.approx(65.75)}
    values, warnings = imputation.apply(sparse)
    np.testing.assert_allclose(values, [70.0, 1.0, 65.75])
    assert len(warnings) == 3 and all("imputed training median" in w for w in warnings)
    assert warnings[0].startswith("age missing") and "kg" in warnings[2]
    values, warnings = imputation.apply(full)
    np.testing.assert_allclose(values, [70.0, 1.0, 61.5])
    assert warnings == []
    again = ClinicalImputation.from_json(imputation.to_json())
    assert again.medians == imputation.medians
    with pytest.raises(ValueError, match="clinical.json"):
        ClinicalImputation.from_json({"medians": {"age": 1}})
    assert clinical_feature_names() == ["clinical:age", "clinical:sex", "clinical:weight"]
