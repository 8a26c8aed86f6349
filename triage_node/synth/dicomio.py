"""Build the DICOM dataset a (fictional) modality would send, and encode its pixel data."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from triage_node import __version__
from triage_node.synth.vendors import VendorProfile

UID_ROOT = "triage-node-synth"
BASE_DATE = dt.date(2024, 1, 8)
SYNTHETIC_NOTE = "SYNTHETIC IMAGE - NOT A PATIENT"
GIVEN_NAMES = (
    "ADA",
    "BEA",
    "CORA",
    "DORA",
    "EDDA",
    "FAYE",
    "GRETA",
    "HILDE",
    "INES",
    "JUNO",
    "KAI",
    "LEO",
    "MILO",
    "NILS",
    "OTTO",
    "PER",
)


@dataclass(frozen=True)
class Header:
    """Patient/study facts written into the header."""

    patient_name: str
    patient_id: str
    sex: str
    age_years: float
    weight_kg: float | None
    height_cm: float | None
    study_date: dt.date
    study_time: str
    accession: str
    body_part: str  # HIP, PELVIS or CHEST
    view_position: str  # AP or PA
    laterality: str | None  # L, R or None (bilateral)
    kvp: float
    exposure_uas: int
    study_uid: str
    series_uid: str
    sop_uid: str
    frame_uid: str


def derive_uid(*parts: object) -> str:
    """A fixed 2.25 UID derived from ``parts`` (same parts, same UID)."""
    digest = hashlib.sha256("|".join([UID_ROOT, *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def draw_header(
    rng: np.random.Generator,
    key: tuple[object, ...],
    sex: str,
    age: float,
    weight: float,
    height: float,
    body_part: str,
    view: str,
    laterality: str | None,
    kvp: float,
    dose: float,
) -> Header:
    """Header facts for one image, all derived from ``rng`` and ``key`` (no wall clock)."""
    study_date = BASE_DATE + dt.timedelta(days=int(rng.integers(0, 700)))
    seconds = int(rng.integers(7 * 3600, 19 * 3600))
    return Header(
        patient_name=f"SYNTHETIC^{GIVEN_NAMES[int(rng.integers(len(GIVEN_NAMES)))]}",
        patient_id=f"SYN{int(rng.integers(10**7, 10**8))}",
        sex=sex,
        age_years=age,
        weight_kg=None if rng.random() < 0.05 else round(weight, 1),
        height_cm=None if rng.random() < 0.3 else round(height, 1),
        study_date=study_date,
        study_time=f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}",
        accession=f"SA{int(rng.integers(10**6, 10**7))}",
        body_part=body_part,
        view_position=view,
        laterality=laterality,
        kvp=round(kvp, 1),
        exposure_uas=int(round(2500 * dose * np.exp((75 - kvp) / 18))),
        study_uid=derive_uid(*key, "study"),
        series_uid=derive_uid(*key, "series"),
        sop_uid=derive_uid(*key, "instance"),
        frame_uid=derive_uid(*key, "frame"),
    )


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def build_dataset(
    pixels: np.ndarray, spacing_mm: float, profile: VendorProfile, header: Header
) -> Dataset:
    """The complete dataset (uncompressed, Explicit VR Little Endian) for ``pixels``."""
    h = header
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(profile.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(h.sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(derive_uid("implementation", __version__))
    meta.ImplementationVersionName = "TRIAGE_SYNTH"
    ds.file_meta = meta

    ds.SpecificCharacterSet = "ISO_IR 192" if profile.header_style == "full" else "ISO_IR 100"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY"] if profile.modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
    )
    ds.SOPClassUID = profile.sop_class_uid
    ds.SOPInstanceUID = h.sop_uid
    date = h.study_date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = h.study_time
    if profile.header_style != "legacy":
        ds.AcquisitionDateTime = date + h.study_time
    ds.AccessionNumber = h.accession
    ds.Modality = profile.modality
    ds.Manufacturer = profile.manufacturer
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = f"{profile.name.upper()}01"
    ds.StudyDescription = f"{'PELVIS' if h.body_part != 'CHEST' else 'CHEST'} (SYNTHETIC)"
    ds.SeriesDescription = f"{h.body_part} {h.view_position}"
    ds.ManufacturerModelName = profile.model
    ds.PatientName = h.patient_name
    ds.PatientID = h.patient_id
    birth = h.study_date - dt.timedelta(days=int(round(h.age_years * 365.25)))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = h.sex
    if profile.header_style != "minimal":
        ds.PatientAge = f"{int(h.age_years):03d}Y"
    if h.weight_kg is not None:
        ds.PatientWeight = f"{h.weight_kg:.1f}"
    if h.height_cm is not None:
        ds.PatientSize = f"{h.height_cm / 100:.2f}"
    ds.PatientIdentityRemoved = "NO"
    ds.BodyPartExamined = h.body_part
    ds.KVP = f"{h.kvp:.1f}"
    ds.ExposureInuAs = h.exposure_uas
    ds.SoftwareVersions = f"triage-node-synth {__version__}"
    ds.ViewPosition = h.view_position
    ds.ImagerPixelSpacing = [f"{spacing_mm:.4g}", f"{spacing_mm:.4g}"]
    if profile.header_style == "full" or profile.modality == "CR":
        ds.PixelSpacing = [f"{spacing_mm:.4g}", f"{spacing_mm:.4g}"]
        if profile.modality == "DX":
            ds.PixelSpacingCalibrationType = "GEOMETRY"
            ds.PixelSpacingCalibrationDescription = "detector plane"
    ds.StudyInstanceUID = h.study_uid
    ds.SeriesInstanceUID = h.series_uid
    ds.StudyID = h.accession[-6:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    # rows run to the viewer's right, i.e. towards the patient's left in the standard
    # display of both AP and PA views (patient's right on the viewer's left); columns
    # run towards the feet (PS3.3 C.7.6.1.1.1)
    ds.PatientOrientation = ["L", "F"]
    ds.ImageComments = SYNTHETIC_NOTE
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = profile.bits_stored
    ds.HighBit = profile.bits_stored - 1
    ds.PixelRepresentation = 0
    maxval = (1 << profile.bits_stored) - 1
    ds.WindowCenter = f"{maxval / 2:.1f}"
    ds.WindowWidth = f"{maxval:.1f}"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    if profile.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if profile.photometric == "MONOCHROME2" else -1
        ds.PresentationLUTShape = (
            "IDENTITY" if profile.photometric == "MONOCHROME2" else ("INVERSE")
        )
        ds.DetectorType = "SCINTILLATOR"
        ds.AcquisitionContextSequence = Sequence()
        view = {"AP": ("399348003", "antero-posterior"), "PA": ("399300004", "postero-anterior")}[
            h.view_position
        ]
        ds.ViewCodeSequence = Sequence([_code(view[0], "SCT", view[1])])
        anatomy = {
            "HIP": ("24136001", "Hip joint"),
            "PELVIS": ("12921003", "Pelvis"),
            "CHEST": ("43799004", "Chest"),
        }[h.body_part]
        ds.AnatomicRegionSequence = Sequence([_code(anatomy[0], "SCT", anatomy[1])])
        ds.PositionerType = ""
        ds.PositionReferenceIndicator = ""
        ds.DistanceSourceToDetector = "1150"
        ds.EstimatedRadiographicMagnificationFactor = "1.1"
        ds.FrameOfReferenceUID = h.frame_uid
    # hips are paired: a bilateral AP pelvis is "B", a chest is unpaired "U"
    ds.ImageLaterality = h.laterality or ("U" if h.body_part == "CHEST" else "B")
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def encode(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Return ``ds`` with its pixel data in ``transfer_syntax`` (lossless syntaxes only)."""
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        return ds
    if transfer_syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(transfer_syntax, generate_instance_uid=False)
        return ds
    if transfer_syntax == JPEGLosslessSV1:
        return _dcmtk_compress(ds, ["dcmcjpeg", "--encode-lossless-sv1"])
    raise ValueError(
        f"unsupported transfer syntax {transfer_syntax} (SOP Instance UID {ds.SOPInstanceUID})"
    )


def _dcmtk_compress(ds: Dataset, command: list[str]) -> Dataset:
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        src, dst = Path(tmp, "in.dcm"), Path(tmp, "out.dcm")
        ds.save_as(src, enforce_file_format=True)
        proc = subprocess.run(
            [*command, "--uid-never", str(src), str(dst)],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{command[0]} failed for SOP Instance UID {ds.SOPInstanceUID}: "
                f"{proc.stderr.strip()[:300]}"
            )
        out = pydicom.dcmread(dst)
    # dcmtk adds its own implementation UID/derivation notes; keep ours for reproducibility
    out.file_meta.ImplementationClassUID = ds.file_meta.ImplementationClassUID
    out.file_meta.ImplementationVersionName = ds.file_meta.ImplementationVersionName
    return out
