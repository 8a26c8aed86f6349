"""Small DICOM files for tests, built with pydicom; patient data is marked to grep for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"

# Patient identifiers that must never show up in logs, metrics or admin output.
PHI_NAME = "Phiname^Zebulon"
PHI_ID = "PHIID-7731"
PHI_BIRTH_DATE = "19391231"


def make_radiograph(
    body_part: str = "HIP",
    *,
    modality: str = "DX",
    rows: int = 64,
    columns: int = 48,
    study_uid: str | None = None,
    seed: int = 0,
    patient_name: str = PHI_NAME,
    patient_id: str = PHI_ID,
) -> Dataset:
    """A small grayscale radiograph dataset (16-bit, MONOCHROME2) with a full header."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = DX_PRESENTATION if modality == "DX" else CR_IMAGE
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = PHI_BIRTH_DATE
    ds.PatientSex = "F"
    ds.PatientAge = "071Y"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "AP"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    return ds


def write_radiograph(path: Path, body_part: str = "HIP", **kwargs: object) -> Dataset:
    ds = make_radiograph(body_part, **kwargs)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
