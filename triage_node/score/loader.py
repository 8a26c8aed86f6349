"""Finding and loading the configured model bundle (or the shipped demo bundle).

The bundle's files are read and verified by :mod:`triage_node.score.bundle`
(light: numpy and JSON). The implementation that runs it,
:mod:`triage_node.score.model`, needs torch, SimpleITK and pyradiomics and is
imported only when a model is described or loaded. When that import fails (a
broken or missing library), the result is :class:`ModelUnavailable` whose
message carries the real cause, e.g. ``libSimpleITK...so: cannot open shared
object file``, so ``status`` and the score job's ``last_error`` say what to fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from triage_node.assessment import ModelUnavailable, ScoringModel
from triage_node.config import Settings
from triage_node.score.bundle import describe_bundle, open_configured

if TYPE_CHECKING:
    from triage_node.score.model import BundleScoringModel

#: The module that builds a scoring model from a verified bundle.
IMPLEMENTATION = "triage_node.score.model"


def implementation() -> type[BundleScoringModel]:
    """The model implementation; :class:`ModelUnavailable` naming the cause if it won't import.

    ``OSError`` is caught with ``ImportError``: a shared library that does not
    load (torch, SimpleITK) is reported as either, depending on the library.
    """
    try:
        # lazy: torch, SimpleITK, pyradiomics load when a model is used, not with this module
        from triage_node.score.model import BundleScoringModel
    except (ImportError, OSError) as exc:
        raise ModelUnavailable(
            f"the model implementation {IMPLEMENTATION} cannot be imported: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return BundleScoringModel


def describe_model(settings: Settings, *, check_implementation: bool = True) -> dict[str, Any]:
    """What `status` shows about the model: name, version, synthetic flag, or why it's missing.

    Reads the bundle's manifest and verifies its hashes (weights are not
    loaded), then (unless ``check_implementation`` is False: a process that
    never scores need not load torch) checks that the implementation imports:
    a bundle this installation cannot run is not available, and ``error`` says why.
    """
    configured = settings.model.bundle or "demo"
    try:
        info = describe_bundle(settings)
        if check_implementation:
            implementation()
    except ModelUnavailable as exc:
        return {"bundle": configured, "available": False, "error": str(exc)}
    return {"bundle": configured, "available": True, **info}


def load_model(settings: Settings) -> ScoringModel:
    """Load the configured bundle (``[model] bundle``), or the demo bundle when empty.

    Raises :class:`ModelUnavailable` naming the file when there is no usable
    bundle, or naming the cause when the implementation cannot be imported.
    """
    bundle = open_configured(settings)
    return implementation()(bundle, threshold=settings.model.threshold)
