"""Ask an archive which instances it holds for a study: one C-FIND, Study Root, IMAGE level.

:func:`find_study_instances` opens one association to the query peer (a
``[[destinations]]`` entry named by ``[completeness] query_peer``), sends one
C-FIND request for the study's instances with the keys the eligibility rules
need as return keys (Modality, Body Part Examined, View Position, SOP Class
UID, and the device signature of our own results), and returns one
:class:`ArchivedInstance` per answer.

Every way the archive can fail to answer (no connection, association rejected
or aborted, no answer within ``[completeness] timeout_seconds``, a failure or
cancel status) raises :class:`ArchiveQueryFailed` with a message that names the
peer and what to check: the caller then waits the settle time instead.

This module knows nothing about jobs, studies in the store or eligibility; the
completeness check in ``work/`` decides what an answer means.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.sop_class import uid_to_sop_class
from pynetdicom.status import code_to_category

from triage_node.config import DestinationSection, Settings
from triage_node.deliver.scu import (
    PeerUnreachable,
    TlsSetupFailed,
    _Handshake,
    _where,
    request_association,
)
from triage_node.telemetry.logs import library_errors_reported_by_caller

#: Study Root Query/Retrieve Information Model - FIND (pynetdicom makes its named
#: constants at import time, which mypy cannot see).
STUDY_ROOT_FIND = uid_to_sop_class("1.2.840.10008.5.1.4.1.2.2.1")

#: Return keys of the query, besides the SOP Instance UID.
RETURN_KEYS = (
    "SOPClassUID",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDescription",
)


class ArchiveQueryFailed(Exception):
    """The query peer gave no usable answer; the message names it and what to check."""


@dataclass(frozen=True)
class ArchivedInstance:
    """One instance the archive holds in the study, as its C-FIND answer describes it.

    Attributes the archive did not return are None.
    """

    sop_instance_uid: str
    sop_class_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    manufacturer: str | None = None
    model_name: str | None = None
    series_description: str | None = None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()


def _identifier(study_instance_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = ""
    ds.SOPInstanceUID = ""
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
    return ds


def _no_association(peer: DestinationSection, settings: Settings, handshake: _Handshake) -> str:
    calling, called = settings.node.ae_title, peer.ae_title
    timeout = settings.completeness.timeout_seconds
    if not handshake.connected:
        return (
            f"cannot connect to {peer.host}:{peer.port} (connection refused, or no answer "
            f"within completeness.timeout_seconds = {timeout:g} s); check that the archive "
            f"is running and listens on port {peer.port}"
        )
    for answer in handshake.answers:
        if isinstance(answer, A_ASSOCIATE) and answer.result in (0x01, 0x02):
            return (
                f"association rejected ({answer.result_str}, {answer.source_str}: "
                f"{answer.reason_str}); check that {called} accepts our AE title {calling} "
                "from this host"
            )
        if isinstance(answer, A_ASSOCIATE) and answer.result == 0x00:
            return (
                f"{called} accepted no Study Root C-FIND context; check that it allows "
                f"queries (C-FIND) from our AE title {calling}"
            )
        if isinstance(answer, (A_ABORT, A_P_ABORT)):
            return (
                f"the peer aborted the association request; check its log (is our AE title "
                f"{calling} configured there?)"
            )
    return (
        f"no answer to the association request within completeness.timeout_seconds = "
        f"{timeout:g} s; check that {peer.host}:{peer.port} is a DICOM service"
    )


def find_study_instances(
    peer: DestinationSection, study_instance_uid: str, *, settings: Settings
) -> list[ArchivedInstance]:
    """The instances ``peer`` holds in the study ``study_instance_uid`` (C-FIND, IMAGE level).

    The calling AE title is ``settings.node.ae_title``; every network step (connect,
    associate, each answer) waits at most ``settings.completeness.timeout_seconds``,
    and the whole query is abandoned once that much time has passed since the first
    answer was awaited. Raises :class:`ArchiveQueryFailed` when the peer gives no
    complete, successful answer.
    """
    if not study_instance_uid:
        raise ValueError("study_instance_uid: empty")
    with library_errors_reported_by_caller():
        return _find(peer, study_instance_uid, settings)


def _find(
    peer: DestinationSection, study_instance_uid: str, settings: Settings
) -> list[ArchivedInstance]:
    timeout = settings.completeness.timeout_seconds
    where = f"query peer {_where(peer).removeprefix('destination ')}"
    ae = AE(ae_title=settings.node.ae_title)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(STUDY_ROOT_FIND)
    try:
        attempt = request_association(ae, peer, settings, where)
    except (TlsSetupFailed, PeerUnreachable) as exc:
        raise ArchiveQueryFailed(str(exc)) from None
    assoc, handshake = attempt.association, attempt.handshake
    if not assoc.is_established:
        raise ArchiveQueryFailed(f"{where}: {_no_association(peer, settings, handshake)}")
    found: list[ArchivedInstance] = []
    deadline = time.monotonic() + timeout
    try:
        responses = assoc.send_c_find(_identifier(study_instance_uid), STUDY_ROOT_FIND)
        for status, identifier in responses:
            if "Status" not in status:
                raise ArchiveQueryFailed(
                    f"{where}: no C-FIND response for study {study_instance_uid} within "
                    f"completeness.timeout_seconds = {timeout:g} s, or the association was "
                    "aborted; check the archive's log"
                )
            code = int(status.Status)
            category = str(code_to_category(code))
            if category == "Pending":
                uid = _text(identifier, "SOPInstanceUID") if identifier is not None else None
                if identifier is not None and uid:
                    found.append(
                        ArchivedInstance(
                            sop_instance_uid=uid,
                            sop_class_uid=_text(identifier, "SOPClassUID"),
                            modality=_text(identifier, "Modality"),
                            body_part=_text(identifier, "BodyPartExamined"),
                            view_position=_text(identifier, "ViewPosition"),
                            manufacturer=_text(identifier, "Manufacturer"),
                            model_name=_text(identifier, "ManufacturerModelName"),
                            series_description=_text(identifier, "SeriesDescription"),
                        )
                    )
            elif category == "Success":
                return found
            else:
                raise ArchiveQueryFailed(
                    f"{where}: C-FIND for study {study_instance_uid} ended with status "
                    f"0x{code:04X} ({category}); check the archive's log (does it allow "
                    f"queries from our AE title {settings.node.ae_title}?)"
                )
            if time.monotonic() > deadline:
                raise ArchiveQueryFailed(
                    f"{where}: the C-FIND for study {study_instance_uid} took longer than "
                    f"completeness.timeout_seconds = {timeout:g} s ({len(found)} answers so far)"
                )
        raise ArchiveQueryFailed(
            f"{where}: the C-FIND for study {study_instance_uid} ended without a final status"
        )
    finally:
        if assoc.is_established:
            if time.monotonic() > deadline:
                assoc.abort()
            else:
                assoc.release()
