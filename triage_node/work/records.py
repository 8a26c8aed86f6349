"""The typed records the work stage stores as JSON: job payloads and the score record.

Each is a frozen dataclass with ``to_json`` (what goes into the JSON column) and
``from_json`` (what comes back). The JSON is the format the node always stored:
``{"report_version": n}`` for a ``report`` job, ``{"destination": name,
"report_version": n}`` for a ``deliver`` job, and ``{"decoded": {...},
"assessment": {...}, "cam_path": "..."}`` on a scored instance. ``from_json``
ignores keys it does not know (``holder_deaths``, which the store adds to any
payload), so no stored row needs rewriting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from triage_node.assessment import ImageAssessment
from triage_node.store.models import ResultKind


@dataclass(frozen=True)
class ReportPayload:
    """A ``report`` job: build this report version of the job's study."""

    report_version: int

    def to_json(self) -> dict[str, Any]:
        return {"report_version": self.report_version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportPayload:
        """The payload as stored; version 0 when it has none (the handler refuses that)."""
        return cls(int(data.get("report_version", 0)))


@dataclass(frozen=True)
class DeliverPayload:
    """A ``deliver`` job: send this report version of the job's study to one destination."""

    destination: str  # a [[destinations]] name; "" when the stored payload has none
    report_version: int

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.destination, "report_version": self.report_version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliverPayload:
        destination = data.get("destination")
        return cls(
            destination if isinstance(destination, str) else "",
            int(data.get("report_version", 0)),
        )


@dataclass(frozen=True)
class DecodeFacts:
    """What decoding an instance's pixel data found (``decoded`` in the score record)."""

    rows: int
    columns: int
    dtype: str
    photometric: str
    transfer_syntax: str

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "dtype": self.dtype,
            "photometric": self.photometric,
            "transfer_syntax": self.transfer_syntax,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecodeFacts:
        return cls(
            rows=int(data["rows"]),
            columns=int(data["columns"]),
            dtype=str(data["dtype"]),
            photometric=str(data["photometric"]),
            transfer_syntax=str(data["transfer_syntax"]),
        )

    def describe(self) -> str:
        """One line for the event trail: ``512x512 uint16 MONOCHROME2``."""
        return f"{self.rows}x{self.columns} {self.dtype} {self.photometric}"


@dataclass(frozen=True)
class ScoreRecord:
    """What the score job keeps on its instance row (``Instance.result``).

    ``assessment`` is the model's :class:`ImageAssessment` as its own ``to_json``
    wrote it, kept as stored (``triage_node.report.results.assessment_from_json``
    reads it back); ``cam_path`` is where its class-activation maps are, and
    ``display_path`` its heatmap's display copy
    (:func:`triage_node.report.results.save_display`), relative to the spool.
    """

    decoded: DecodeFacts | None = None
    assessment: Mapping[str, Any] | None = None
    cam_path: str | None = None
    display_path: str | None = None
    # Keys a newer or older node stored that this one does not know: kept as they are.
    other: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.other)
        if self.decoded is not None:
            data["decoded"] = self.decoded.to_json()
        if self.assessment is not None:
            data["assessment"] = dict(self.assessment)
        if self.cam_path is not None:
            data["cam_path"] = self.cam_path
        if self.display_path is not None:
            data["display_path"] = self.display_path
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ScoreRecord:
        """The stored record (None or {} for an instance not scored yet).

        Parts that are not what this node writes are left out rather than refused:
        the record is read by retention and the report job, which must not fail on them.
        """
        if not isinstance(data, Mapping):
            return cls()
        decoded = data.get("decoded")
        assessment = data.get("assessment")
        cam_path = data.get("cam_path")
        display_path = data.get("display_path")
        try:
            facts = DecodeFacts.from_json(decoded) if isinstance(decoded, Mapping) else None
        except (KeyError, TypeError, ValueError):
            facts = None
        known = ("decoded", "assessment", "cam_path", "display_path")
        return cls(
            decoded=facts,
            assessment=assessment if isinstance(assessment, Mapping) else None,
            cam_path=cam_path if isinstance(cam_path, str) and cam_path else None,
            display_path=display_path if isinstance(display_path, str) and display_path else None,
            other={k: v for k, v in data.items() if k not in known},
        )

    def with_decoded(self, decoded: DecodeFacts) -> ScoreRecord:
        return replace(self, decoded=decoded)

    def with_assessment(
        self, assessment: ImageAssessment, cam_path: str | None, display_path: str | None = None
    ) -> ScoreRecord:
        """The record with the model's answer; a new ``cam_path`` or ``display_path``
        replaces the old one."""
        return replace(
            self,
            assessment=assessment.to_json(),
            cam_path=cam_path if cam_path is not None else self.cam_path,
            display_path=display_path if display_path is not None else self.display_path,
        )


@dataclass(frozen=True)
class WrittenResult:
    """One result object the report job wrote to the spool (becomes a ``results`` row)."""

    kind: ResultKind
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    source_instance_id: int | None
    path: str  # relative to the spool directory
    size_bytes: int
