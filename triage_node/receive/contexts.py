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

# pynetdicom.sop_class creates these names at import time; its types cannot list them.
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

# pynetdicom as acceptor picks, per proposed context, the first transfer syntax of THIS
# list that the requestor offers. Lossless compressed syntaxes come first so that a
# sender offering its file's own encoding next to the uncompressed ones never has to
# decompress (dcmtk's storescu cannot decompress RLE, for one); lossy syntaxes come
# last so that we never ask a sender to compress lossily what it has uncompressed.
TRANSFER_SYNTAXES: list[str] = [
    RLELossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEG2000Lossless,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
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
        if cx.abstract_syntax is not None:  # always set in pynetdicom's list
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    # AllStoragePresentationContexts has them already; make sure regardless.
    for uid in RADIOGRAPH_SOP_CLASSES:
        ae.add_supported_context(uid, TRANSFER_SYNTAXES)
