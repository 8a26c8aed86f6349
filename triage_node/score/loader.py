"""Finding and loading the configured model bundle (or the shipped demo bundle)."""

from __future__ import annotations

from typing import Any

from triage_node.assessment import ModelUnavailable, ScoringModel
from triage_node.config import Settings


def describe_model(settings: Settings) -> dict[str, Any]:
    """What `status` shows about the model: name, version, synthetic flag, or why it's missing.

    Reads the bundle's manifest only (cheap); weights are not loaded.
    """
    configured = settings.model.bundle or "demo"
    try:
        from triage_node.score import bundle as bundle_module
    except ImportError:
        return {
            "bundle": configured,
            "available": False,
            "error": "no model implementation is installed in this build",
        }
    try:
        info = dict(bundle_module.describe_bundle(settings))
    except ModelUnavailable as exc:
        return {"bundle": configured, "available": False, "error": str(exc)}
    return {"bundle": configured, "available": True, **info}


def load_model(settings: Settings) -> ScoringModel:
    """Load the configured bundle (``[model] bundle``), or the demo bundle when empty.

    Raises :class:`ModelUnavailable` naming the file when there is no usable bundle.
    """
    try:
        from triage_node.score import bundle as bundle_module  # the DTC model's loader
    except ImportError:
        raise ModelUnavailable(
            "no model implementation is installed in this build (triage_node.score.bundle)"
        ) from None
    return bundle_module.load_scoring_model(settings)  # type: ignore[no-any-return]
