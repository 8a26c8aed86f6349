"""Every coded concept our result objects use, standard where one exists, private otherwise.

Standard codes come from DICOM PS3.16 (DCM), SNOMED CT (SCT) and UCUM; the
comment on each names the context group (CID) or template row it is taken
from. Where the standard has no concept for what we say (a probability of
osteoporosis, a triage decision), we use our own coding scheme
:data:`PRIVATE_SCHEME_DESIGNATOR` ("99TRIAGE"). PS3.3 C.12.1.1.4 asks that a
private scheme be declared in the Coding Scheme Identification Sequence of the
object that uses it: :data:`PRIVATE_CODING_SCHEME` is that declaration, and the
SR builder adds it. Private code values never change meaning once released;
new meanings get new values.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.coding import Code

from triage_node import identity

# --- the private scheme -----------------------------------------------------------------

#: Coding Scheme Designator of our private codes; "99" prefix = local scheme (PS3.16 8.2).
PRIVATE_SCHEME_DESIGNATOR = "99TRIAGE"
PRIVATE_SCHEME_NAME = "triage-node private codes"
PRIVATE_SCHEME_VERSION = "1"

#: The Coding Scheme Identification Sequence item declaring "99TRIAGE".
PRIVATE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME_DESIGNATOR,
    name=PRIVATE_SCHEME_NAME,
    version=PRIVATE_SCHEME_VERSION,
    responsible_organization=identity.MANUFACTURER,
)


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME_DESIGNATOR, meaning)


# --- document and procedure ---------------------------------------------------------------

#: TID 1500 root title; CID 7021 "Measurement Report Document Titles".
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
#: TID 1500 "Procedure reported" value; CID 10005 / SNOMED CT 168537006.
PLAIN_RADIOGRAPHY = Code("168537006", "SCT", "Plain radiography")
#: TID 1002 observer type (CID 270 "Observer Type"): our device made the observations.
OBSERVER_TYPE_DEVICE = CodedConcept("121007", "DCM", "Device")

# --- anatomy (TID 1410/1501 "Finding Site", SCT 363698007, with laterality) -------------

#: CID 7304 "Musculoskeletal anatomy": the ROI is the proximal femur (head, neck,
#: trochanters), see MODEL.md "ROI".
PROXIMAL_FEMUR = Code("310651003", "SCT", "Proximal Femur")
#: SCT 71341001 "Bone structure of femur" (CID 4031 and others), for the whole femur.
FEMUR = Code("71341001", "SCT", "Femur")
#: SCT 29627003 "Structure of neck of femur".
NECK_OF_FEMUR = Code("29627003", "SCT", "Neck of femur")
#: CID 244 "Laterality": values of the Finding Site's "Laterality" (SCT 272741003) modifier.
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
LATERALITY = {"left": LEFT, "right": RIGHT}

# --- findings and measurements ----------------------------------------------------------

#: TID 1410/1501 "Finding" (DCM 121071) value: SNOMED CT 64859006 "Osteoporosis (disorder)".
OSTEOPOROSIS = Code("64859006", "SCT", "Osteoporosis")
#: NUM concept. PS3.16 has "Probability of cancer" (DCM 111047, CID 6048) but nothing
#: for osteoporosis, so private.
PROBABILITY_OF_OSTEOPOROSIS = _private("PROB-OSTEOPOROSIS", "Probability of osteoporosis")
#: NUM concept for the operating point; DCM 122411 "Threshold Value".
THRESHOLD_VALUE = Code("122411", "DCM", "Threshold Value")
#: UCUM "1" (CID 7181 "no units"): a probability is a dimensionless ratio in [0, 1].
NO_UNITS = Code("1", "UCUM", "no units")

# --- qualitative evaluations --------------------------------------------------------------

#: Per-side CODE concept (TID 1410/1501 "Qualitative Evaluations" row): no standard
#: concept for an AI triage result, so private.
TRIAGE_RESULT = _private("TRIAGE-RESULT", "Osteoporosis triage result")
#: Study-level CODE concept: DCM 121075 "Recommendation" (CID 6053, CID 7002).
RECOMMENDATION = Code("121075", "DCM", "Recommendation")

#: Values of TRIAGE_RESULT and RECOMMENDATION (no standard value set fits a triage call).
DXA_RECOMMENDED = _private("DXA-RECOMMENDED", "DXA recommended")
LOW_LIKELIHOOD = _private("LOW-LIKELIHOOD", "Low likelihood of osteoporosis, DXA not recommended")
NOT_ASSESSABLE = _private("NOT-ASSESSABLE", "Not assessable")

#: TEXT concept: why a side (or an image) could not be assessed.
NOT_ASSESSABLE_REASON = _private("NOT-ASSESSABLE-REASON", "Reason not assessable")
#: TEXT concept: the usage disclaimers ("AI triage, not for diagnosis", synthetic model).
USAGE_DISCLAIMER = _private("USAGE-DISCLAIMER", "Usage disclaimer")
#: TID 1500 row "Qualitative Evaluations" container: UMLS C0034375 (CP-1665).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# --- algorithm identification (TID 4019, used by highdicom.sr.AlgorithmIdentification) --
# DCM 111001 "Algorithm Name", 111003 "Algorithm Version", 111002 "Algorithm Parameters"
# are written by highdicom; listed here so a reader finds every concept in one place.
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
# TID 4108 "Tracking Identifier" (DCM 112039) and "Tracking Unique Identifier"
# (DCM 112040), written by highdicom.sr.TrackingIdentifier.
TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
TRACKING_UNIQUE_IDENTIFIER = Code("112040", "DCM", "Tracking Unique Identifier")

#: Every private code, for the conformance statement and tests.
PRIVATE_CODES: tuple[Code, ...] = (
    PROBABILITY_OF_OSTEOPOROSIS,
    TRIAGE_RESULT,
    DXA_RECOMMENDED,
    LOW_LIKELIHOOD,
    NOT_ASSESSABLE,
    NOT_ASSESSABLE_REASON,
    USAGE_DISCLAIMER,
)

# --- the attention map (fractional Segmentation, report/attention_map.py) ---------------

#: Segmented Property Category (CID 7150 "Segmentation Property Categories"): the segment
#: is a region of the image (where the model looked), not an anatomical structure.
SPATIAL_AND_RELATIONAL_CONCEPT = Code("309825002", "SCT", "Spatial and Relational Concept")
#: Segmented Property Type: CID 217 "Visual Explanation" (CID 7151 is extensible).
GRADIENT_WEIGHTED_CLASS_ACTIVATION = Code("130403", "DCM", "Gradient-weighted class activation")
#: Algorithm Family (CID 7162 "Surface Processing Algorithm Families").
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
