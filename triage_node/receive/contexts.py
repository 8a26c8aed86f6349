"""The presentation contexts we accept: every storage SOP class in every common transfer syntax."""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

# In our order of preference; pynetdicom as acceptor takes the first transfer syntax the
# *requestor* proposes that is in this list, so the order matters little.
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
]

# The classes we can score; all other storage classes are accepted and stored as skipped.
RADIOGRAPH_SOP_CLASSES: frozenset[str] = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
    }
)


def add_receiver_contexts(ae: AE) -> None:
    """Add Verification and every storage SOP class with :data:`TRANSFER_SYNTAXES` to ``ae``.

    As acceptor pynetdicom has no limit on the number of supported contexts (the
    128-context limit applies to what a requestor proposes).
    """
    ae.add_supported_context(Verification)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    # AllStoragePresentationContexts has them already; make sure regardless.
    for uid in RADIOGRAPH_SOP_CLASSES:
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
