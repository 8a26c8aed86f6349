"""Every coded concept our result objects use, standard where one exists, private otherwise.

Standard codes come from DICOM PS3.16 (DCM), SNOMED CT (SCT), UMLS and UCUM;
the comment on each names the context group (CID) or template row it is taken
from. Two private schemes are used, each declared in the Coding Scheme
Identification Sequence (0008,0110) of every object that uses it, as PS3.3
C.12.1.1.4 asks:

* ``99IHE``: the IHE Radiology Technical Framework's code for the AI Results
  (AIR) profile's Contributing Equipment item, "Processing Algorithm"
  (:data:`PROCESSING_ALGORITHM`, declared by :data:`IHE_CODING_SCHEME`);
* ``99TRIAGE``: ours, only where PS3.16 has no concept for what we say (the
  triage decisions, the per-hip probability as OHIF labels it, the reason a hip
  was not assessable, the usage disclaimer), declared by
  :data:`PRIVATE_CODING_SCHEME`.

A private code value never changes meaning once released; new meanings get new
values, and retired values (:data:`RETIRED_PRIVATE_CODES`) are never reused.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.coding import Code

from triage_node import identity

# --- the private schemes ----------------------------------------------------------------

#: Coding Scheme Designator of our private codes; "99" prefix = local scheme (PS3.16 8.2).
PRIVATE_SCHEME_DESIGNATOR = "99TRIAGE"
PRIVATE_SCHEME_NAME = "triage-node private codes"
#: 2: the per-hip probability concepts replaced PROB-OSTEOPOROSIS and TRIAGE-RESULT.
PRIVATE_SCHEME_VERSION = "2"

#: The Coding Scheme Identification Sequence item declaring "99TRIAGE".
PRIVATE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME_DESIGNATOR,
    name=PRIVATE_SCHEME_NAME,
    version=PRIVATE_SCHEME_VERSION,
    responsible_organization=identity.MANUFACTURER,
)

#: IHE's scheme for codes its profiles define before DICOM adopts them.
IHE_SCHEME_DESIGNATOR = "99IHE"
#: The Coding Scheme Identification Sequence item declaring "99IHE".
IHE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=IHE_SCHEME_DESIGNATOR,
    name="IHE Radiology Technical Framework codes",
    responsible_organization="IHE",
)


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME_DESIGNATOR, meaning)


# --- document, procedure, equipment -----------------------------------------------------

#: TID 1500 root title; CID 7021 "Measurement Report Document Titles".
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
#: TID 1500 "Procedure reported" value; CID 10005 / SNOMED CT 168537006.
PLAIN_RADIOGRAPHY = Code("168537006", "SCT", "Plain radiography")
#: TID 1002 observer type (CID 270 "Observer Type"): our device made the observations.
OBSERVER_TYPE_DEVICE = CodedConcept("121007", "DCM", "Device")
#: Purpose of Reference of the AIR profile's Contributing Equipment item: the algorithm
#: that made the object (IHE RAD TF AIR; no DCM code yet).
PROCESSING_ALGORITHM = Code("Newcode1", IHE_SCHEME_DESIGNATOR, "Processing Algorithm")

# --- anatomy (TID 1410 "Finding Site", SCT 363698007, with laterality) ------------------

#: CID 7304 "Musculoskeletal anatomy": the ROI is the proximal femur (head, neck,
#: trochanters), see MODEL.md "ROI".
PROXIMAL_FEMUR = Code("310651003", "SCT", "Proximal Femur")
#: CID 244 "Laterality": values of the Finding Site's "Laterality" (SCT 272741003) modifier.
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
LATERALITY = {"left": LEFT, "right": RIGHT}

# --- findings and measurements ----------------------------------------------------------

#: TID 1410 "Finding" (DCM 121071) value: SNOMED CT 64859006 "Osteoporosis (disorder)".
OSTEOPOROSIS = Code("64859006", "SCT", "Osteoporosis")
#: UCUM "%" (CID 7181): probabilities are sent in percent, which OHIF prints as
#: "62.50 %" (it prints a unit's code value; UCUM "1" gave "0.62 1").
PERCENT = Code("%", "UCUM", "percent")

#: NUM concept of a hip's probability of osteoporosis, one per side and decision.
#: PS3.16 has "Probability of cancer" (DCM 111047) but nothing for osteoporosis, so
#: private. OHIF labels an ROI with its NUM items' "concept meaning: value unit" and
#: nothing else of ours (it ignores CODE items and the laterality modifier), so the
#: meaning carries the side and the decision: "Left hip (DXA recommended), probability
#: of osteoporosis: 62.50 %". The same facts are coded in the group for machines
#: (Finding Site laterality, the Recommendation CODE).
SIDE_PROBABILITY: dict[tuple[str, bool], Code] = {
    ("left", True): _private(
        "PROB-LEFT-DXA", "Left hip (DXA recommended), probability of osteoporosis"
    ),
    ("left", False): _private(
        "PROB-LEFT-LOW", "Left hip (low likelihood), probability of osteoporosis"
    ),
    ("right", True): _private(
        "PROB-RIGHT-DXA", "Right hip (DXA recommended), probability of osteoporosis"
    ),
    ("right", False): _private(
        "PROB-RIGHT-LOW", "Right hip (low likelihood), probability of osteoporosis"
    ),
}


def side_probability(side: str, positive: bool) -> Code:
    """The NUM concept of a hip's probability, naming the side and its decision."""
    try:
        return SIDE_PROBABILITY[(side, positive)]
    except KeyError:
        raise ValueError(f"side: expected 'left' or 'right', got {side!r}") from None


# --- qualitative evaluations --------------------------------------------------------------

#: CODE concept of a decision, per hip (TID 1410 qualitative evaluation) and for the
#: study (TID 1500 "Qualitative Evaluations"): DCM 121075 "Recommendation" (CID 6053, 7002).
RECOMMENDATION = Code("121075", "DCM", "Recommendation")
#: Values of RECOMMENDATION (no standard value set fits a triage call).
DXA_RECOMMENDED = _private("DXA-RECOMMENDED", "DXA recommended")
LOW_LIKELIHOOD = _private("LOW-LIKELIHOOD", "Low likelihood of osteoporosis, DXA not recommended")
NOT_ASSESSABLE = _private("NOT-ASSESSABLE", "Not assessable")
#: TEXT concept: the study's decision in words with its number: DCM 121077 "Conclusion"
#: (CID 6053, 7002).
CONCLUSION = Code("121077", "DCM", "Conclusion")
#: TEXT concept: what a reader must know (only one hip assessed, imputed clinical
#: values, the heatmap's per-image scale): DCM 121106 "Comment".
COMMENT = Code("121106", "DCM", "Comment")
#: TEXT concept: why a hip could not be assessed ("prosthesis", "femur not found").
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

# --- heatmaps -------------------------------------------------------------------------------

#: What the heatmaps show: DCM 130403 "Gradient-weighted class activation" (CID 7180,
#: 7469), i.e. Grad-CAM of the Siamese branch (MODEL.md).
GRADIENT_WEIGHTED_CLASS_ACTIVATION = Code("130403", "DCM", "Gradient-weighted class activation")

#: Every private code in use, for the conformance statement and tests.
PRIVATE_CODES: tuple[Code, ...] = (
    *SIDE_PROBABILITY.values(),
    DXA_RECOMMENDED,
    LOW_LIKELIHOOD,
    NOT_ASSESSABLE,
    NOT_ASSESSABLE_REASON,
    USAGE_DISCLAIMER,
)
#: Released in scheme version 1 and no longer sent; their values are never reused.
RETIRED_PRIVATE_CODES: tuple[Code, ...] = (
    _private("PROB-OSTEOPOROSIS", "Probability of osteoporosis"),
    _private("TRIAGE-RESULT", "Osteoporosis triage result"),
)

# --- the attention map (fractional Segmentation, report/attention_map.py) ---------------

#: Segmented Property Category (CID 7150 "Segmentation Property Categories"): the segment
#: is a region of the image (where the model looked), not an anatomical structure.
SPATIAL_AND_RELATIONAL_CONCEPT = Code("309825002", "SCT", "Spatial and Relational Concept")
#: Segmented Property Type: CID 217 "Visual Explanation" (CID 7151 is extensible).
GRADIENT_WEIGHTED_CLASS_ACTIVATION = Code("130403", "DCM", "Gradient-weighted class activation")
#: Algorithm Family (CID 7162 "Surface Processing Algorithm Families").
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
