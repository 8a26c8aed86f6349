"""The algorithm's identity in every object we create, as the IHE AI Results (AIR) profile asks.

* :func:`algorithm_equipment`: the Contributing Equipment Sequence (0018,A001)
  item naming the algorithm: Purpose of Reference (Newcode1, 99IHE,
  "Processing Algorithm"), Manufacturer, Manufacturer's Model Name (the
  model's name), Software Versions (the model's version, then the node's),
  Device UID (:func:`triage_node.report.uids.algorithm_device_uid`: the same
  for the same bundle, new for a retrained one), Contribution DateTime and
  Description.
* :func:`add_algorithm_identity` appends that item to an object built by
  highdicom and declares the ``99IHE`` scheme in its Coding Scheme
  Identification Sequence. The SR, the heatmap SC and the parametric map call it.
* :func:`algorithm_identification`: TID 4019 "Algorithm Identification" (DCM
  111001 name, 111003 version, 111002 parameters) for each SR measurement group.

The object-level Manufacturer / Manufacturer's Model Name stay the node's
(:mod:`triage_node.identity`): they are the signature the receiver uses to
recognise our own objects.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.valuerep import DT

import triage_node
from triage_node import identity
from triage_node.assessment import ImageAssessment
from triage_node.report import codes
from triage_node.report.uids import algorithm_device_uid


def software_versions(assessment: ImageAssessment) -> list[str]:
    """Software Versions (0018,1020) of our objects: the node's and the model's."""
    return [
        f"{identity.MANUFACTURER_MODEL_NAME} {triage_node.__version__}",
        f"{assessment.model_name} {assessment.model_version}",
    ]


def algorithm_parameters(assessment: ImageAssessment) -> list[str]:
    """The parameters a result depends on beyond the bundle: the operating point, the data."""
    return [
        f"operating point (threshold) {assessment.threshold:.4f}",
        f"trained on synthetic data: {'yes' if assessment.synthetic_model else 'no'}",
    ]


def algorithm_identification(assessment: ImageAssessment) -> hd.sr.AlgorithmIdentification:
    """TID 4019 "Algorithm Identification" of the model that made ``assessment``."""
    return hd.sr.AlgorithmIdentification(
        name=assessment.model_name,
        version=assessment.model_version,
        parameters=algorithm_parameters(assessment),
        manufacturer=identity.MANUFACTURER,
    )


def algorithm_equipment(
    assessment: ImageAssessment, when: datetime.datetime, description: str
) -> pydicom.Dataset:
    """The AIR Contributing Equipment item of the model that made ``assessment``.

    Built as a plain dataset: highdicom's ``ContributingEquipment`` accepts only
    the DCM purposes of CID 7005, not IHE's "Processing Algorithm".
    ``description`` (Contribution Description, ST) says what the algorithm made.
    """
    if not isinstance(assessment, ImageAssessment):
        raise TypeError(f"assessment: expected an ImageAssessment, got {type(assessment).__name__}")
    if not isinstance(when, datetime.datetime):
        raise TypeError("when: expected a datetime.datetime")
    item = pydicom.Dataset()
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(codes.PROCESSING_ALGORITHM)]
    item.Manufacturer = identity.MANUFACTURER
    item.ManufacturerModelName = assessment.model_name
    item.SoftwareVersions = [
        assessment.model_version,
        f"{identity.MANUFACTURER_MODEL_NAME} {triage_node.__version__}",
    ]
    item.DeviceUID = algorithm_device_uid(assessment.model_name, assessment.model_version)
    item.ContributionDateTime = DT(when)
    item.ContributionDescription = description[:1024]
    return item


def declare_coding_schemes(
    ds: pydicom.Dataset, schemes: Sequence[CodingSchemeIdentificationItem]
) -> None:
    """Add each scheme to the Coding Scheme Identification Sequence unless already declared."""
    declared = list(ds.get("CodingSchemeIdentificationSequence", []))
    known = {item.CodingSchemeDesignator for item in declared}
    declared += [s for s in schemes if s.CodingSchemeDesignator not in known]
    ds.CodingSchemeIdentificationSequence = declared


def add_algorithm_identity(
    ds: pydicom.Dataset,
    assessment: ImageAssessment,
    when: datetime.datetime,
    description: str,
) -> None:
    """Append the algorithm's Contributing Equipment item to ``ds`` and declare ``99IHE``.

    Items highdicom put there (the source's acquisition equipment, highdicom
    itself) stay in front; ``when`` is the object's content date/time.
    """
    equipment = list(ds.get("ContributingEquipmentSequence", []))
    equipment.append(algorithm_equipment(assessment, when, description))
    ds.ContributingEquipmentSequence = equipment
    declare_coding_schemes(ds, [codes.IHE_CODING_SCHEME])
