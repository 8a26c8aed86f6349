"""Who we are in DICOM terms: the device signature our result objects carry.

The receiver uses the same constants to recognise our own SR and SC objects
when a misconfigured router sends them back, so they are never scored (no loops).
"""

from __future__ import annotations

MANUFACTURER = "triage-node project"
MANUFACTURER_MODEL_NAME = "triage-node"
DEVICE_NAME = "triage-node"
# Series descriptions of the objects we create; also part of the signature.
SR_SERIES_DESCRIPTION = "AI triage: osteoporosis report (not for diagnosis)"
SC_SERIES_DESCRIPTION = "AI triage: osteoporosis heatmap (not for diagnosis)"
SERIES_DESCRIPTION_PREFIX = "AI triage: osteoporosis"
# Series Numbers of our SR and heatmap series (high, so they sort after acquired series).
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
TRIAGE_DISCLAIMER = "AI triage, not for diagnosis"
SYNTHETIC_DISCLAIMER = "synthetic demo model, not for clinical use"


def carries_our_signature(
    manufacturer: str | None, model_name: str | None, series_description: str | None
) -> bool:
    """True if an instance looks like one of our own result objects."""
    if (manufacturer or "").strip() == MANUFACTURER and (
        model_name or ""
    ).strip() == MANUFACTURER_MODEL_NAME:
        return True
    return (series_description or "").startswith(SERIES_DESCRIPTION_PREFIX)
