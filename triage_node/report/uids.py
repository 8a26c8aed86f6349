"""Deterministic UIDs for our result objects, derived from what they are results of.

A re-run after a crash must produce the same objects (same UIDs) so that a
receiving archive sees a re-send, not a duplicate. Every UID here is a
``2.25.<integer>`` UID (PS3.5 B.2) whose integer is a name-based UUID
(RFC 4122 version 5, :func:`uuid.uuid5`) of its inputs. (pydicom's
``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy and returns
a random UUID, so it cannot be used here.) The inputs:

* the source SOP Instance UIDs (sorted, so arrival order does not matter),
* the model version (a new model gives new objects),
* the report version (a late instance makes the worker bump it: new UIDs),
* a fixed namespace per kind of UID, so that two kinds never collide.

Series UIDs do not depend on the report version or on which instances are in
the report: every version of the report of a study (and every heatmap of it)
from one model version lands in the same series, the newest instance
superseding the older ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from triage_node import identity

#: Namespace of our name-based UUIDs; changing it changes every UID we make.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:triage-node:uids:1")


def _uid(kind: str, *parts: str) -> str:
    # "\n" cannot occur in a UID or version string, so the joined name is unambiguous.
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(10).join([kind, *parts])).int}"


def _check_uid(value: object, argument: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{argument}: expected a non-empty string, got {value!r}")
    return value


def _check_version(report_version: object) -> int:
    if isinstance(report_version, bool) or not isinstance(report_version, int):
        raise TypeError(f"report_version: expected an int, got {type(report_version).__name__}")
    if report_version < 1:
        raise ValueError(f"report_version: must be >= 1, got {report_version}")
    return report_version


@dataclass(frozen=True)
class ReportUIDs:
    """UIDs of one version of the study's SR."""

    series_instance_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class HeatmapUIDs:
    """UIDs of one version of the heatmap of one source image."""

    series_instance_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class AttentionMapUIDs:
    """UIDs of one version of the machine-readable attention map of one source image."""

    series_instance_uid: str
    sop_instance_uid: str
    #: Dimension Organization UID of the map's multi-frame dimension index (highdicom
    #: would make a random one; a re-run must give the same bytes).
    dimension_organization_uid: str


def study_report_uids(
    study_instance_uid: str,
    source_sop_instance_uids: Iterable[str],
    model_version: str,
    report_version: int,
) -> ReportUIDs:
    """UIDs of the SR reporting ``source_sop_instance_uids`` of a study.

    Same inputs (in any order) give the same UIDs; a different set of sources,
    model version or report version gives a different SOP Instance UID.
    """
    study = _check_uid(study_instance_uid, "study_instance_uid")
    sources = sorted({_check_uid(u, "source_sop_instance_uids") for u in source_sop_instance_uids})
    if not sources:
        raise ValueError("source_sop_instance_uids: at least one source instance is needed")
    version = str(_check_version(report_version))
    model = _check_uid(model_version, "model_version")
    return ReportUIDs(
        series_instance_uid=_uid("sr-series", study, model),
        sop_instance_uid=_uid("sr-instance", study, model, version, *sources),
    )


def heatmap_uids(
    study_instance_uid: str, source_sop_instance_uid: str, model_version: str, report_version: int
) -> HeatmapUIDs:
    """UIDs of the secondary-capture heatmap made from one source image."""
    study = _check_uid(study_instance_uid, "study_instance_uid")
    source = _check_uid(source_sop_instance_uid, "source_sop_instance_uid")
    model = _check_uid(model_version, "model_version")
    version = str(_check_version(report_version))
    return HeatmapUIDs(
        series_instance_uid=_uid("sc-series", study, model),
        sop_instance_uid=_uid("sc-instance", study, model, version, source),
    )


def attention_map_uids(
    study_instance_uid: str, source_sop_instance_uid: str, model_version: str, report_version: int
) -> AttentionMapUIDs:
    """UIDs of the attention map (fractional Segmentation) made from one source image."""
    study = _check_uid(study_instance_uid, "study_instance_uid")
    source = _check_uid(source_sop_instance_uid, "source_sop_instance_uid")
    model = _check_uid(model_version, "model_version")
    version = str(_check_version(report_version))
    return AttentionMapUIDs(
        series_instance_uid=_uid("map-series", study, model),
        sop_instance_uid=_uid("map-instance", study, model, version, source),
        dimension_organization_uid=_uid("map-dimensions", study, model, version, source),
    )


def tracking_uid(source_sop_instance_uid: str, side: str, model_version: str) -> str:
    """Tracking Unique Identifier of one femur ROI in one image.

    Independent of the report version: the left femur of an image is the same
    finding in every version of the report.
    """
    source = _check_uid(source_sop_instance_uid, "source_sop_instance_uid")
    if side not in ("left", "right"):
        raise ValueError(f"side: expected 'left' or 'right', got {side!r}")
    return _uid("tracking", source, side, _check_uid(model_version, "model_version"))


def device_observer_uid() -> str:
    """Device Observer UID of this product (TID 1004); the same on every node."""
    return _uid("device", identity.MANUFACTURER, identity.DEVICE_NAME)


def algorithm_device_uid(model_name: str, model_version: str) -> str:
    """Device UID (0018,1002) of one model bundle, for the AIR Contributing Equipment item.

    The same bundle (name and version) gives the same UID on every node and every
    run; a retrained bundle has a new version (``score.manifest``: date, seed and
    a hash of its weights) and so a new UID.
    """
    return _uid(
        "algorithm-device",
        _check_uid(model_name, "model_name"),
        _check_uid(model_version, "model_version"),
    )
