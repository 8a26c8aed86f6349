"""Send our result objects to a destination by C-STORE: one association per batch.

:func:`send_objects` opens one association to the destination, proposes a
presentation context for every SOP class in the batch with the transfer
syntaxes each object can be sent in (its own; plus explicit and implicit VR
little endian when it is uncompressed, pynetdicom converts between those),
sends every object over that association and returns each object's C-STORE
status.

Two kinds of failure, for the retry policy of the delivery job:

* the destination could not be used at all, or the association broke during
  the batch (refused connection, association rejected or aborted, timeout, TLS
  failure): :class:`DestinationUnavailable`, retryable; it carries the results
  of the objects already stored;
* the destination answered for one object with a failure status (e.g. 0xA700
  out of resources, 0xC000 cannot understand): that object's status in the
  returned list; the other objects are still sent. No accepted presentation
  context for an object's SOP class and transfer syntax is reported as
  0x0122 (SOP class not supported) without being sent.

This module knows nothing about jobs or the store; the deliver job decides
what to retry.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pydicom
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

if TYPE_CHECKING:
    from triage_node.config import DestinationSection, Settings

LOG = logging.getLogger(__name__)

#: Status we report for an object no accepted presentation context can carry.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
#: pynetdicom proposes at most 128 presentation contexts in one association.
MAX_CONTEXTS = 128
_UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                 DeflatedExplicitVRLittleEndian)


class DeliveryError(Exception):
    """Delivery could not be attempted or completed; the message names the destination."""


class DestinationUnavailable(DeliveryError):
    """Association refused, rejected, aborted or timed out: retry later (with backoff).

    ``results`` holds the outcomes of objects stored before the failure.
    """

    retryable = True

    def __init__(self, message: str, results: Sequence[StoreOutcome] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


class StoreOutcome(NamedTuple):
    """One object's result: its SOP Instance UID and the C-STORE status code."""

    sop_instance_uid: str
    status: int

    @property
    def category(self) -> str:
        """pynetdicom's status category: "Success", "Warning", "Failure", ..."""
        return str(code_to_category(self.status))

    @property
    def stored(self) -> bool:
        """True when the destination has the object (success or warning status)."""
        return self.category in ("Success", "Warning")


@dataclass(frozen=True)
class _Timeouts:
    connection: float
    acse: float
    dimse: float
    network: float


@dataclass(frozen=True)
class _Outgoing:
    """What we need to know of one object before the association is opened."""

    source: pydicom.Dataset | Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _timeouts(settings: Settings) -> _Timeouts:
    d = settings.deliver
    return _Timeouts(connection=d.connection_timeout, acse=d.acse_timeout,
                     dimse=d.dimse_timeout, network=d.network_timeout)


def _describe(item: pydicom.Dataset | str | Path, index: int) -> _Outgoing:
    if isinstance(item, (str, Path)):
        path = Path(item)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ValueError(f"datasets_or_paths[{index}]: cannot read {path}: {exc}") from None
        source: pydicom.Dataset | Path = path
    elif isinstance(item, pydicom.Dataset):
        ds = item
        source = item
    else:
        raise TypeError(f"datasets_or_paths[{index}]: expected a Dataset or a path, got "
                        f"{type(item).__name__}")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    for kw in ("SOPClassUID", "SOPInstanceUID"):
        if not ds.get(kw):
            raise ValueError(f"datasets_or_paths[{index}]: {kw} is missing")
    if not syntax:
        raise ValueError(f"datasets_or_paths[{index}] (SOP Instance UID {ds.SOPInstanceUID}): "
                         "no file meta Transfer Syntax UID")
    return _Outgoing(source, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(syntax))


def presentation_contexts(objects: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts to propose for (SOP Class UID, Transfer Syntax UID) pairs.

    Per SOP class: one context with explicit and implicit VR little endian
    (plus the object's own syntax if it is another uncompressed one) when any
    object of that class is uncompressed, and one context per compressed
    transfer syntax, since a compressed object can only be sent as it is.
    """
    uncompressed: dict[str, list[str]] = {}
    compressed: dict[str, list[str]] = {}
    for sop_class, syntax in objects:
        if UID(syntax) in _UNCOMPRESSED:
            syntaxes = uncompressed.setdefault(sop_class, [ExplicitVRLittleEndian,
                                                           ImplicitVRLittleEndian])
            if syntax not in syntaxes:
                syntaxes.append(syntax)
        else:
            found = compressed.setdefault(sop_class, [])
            if syntax not in found:
                found.append(syntax)
    contexts = [build_context(sop_class, syntaxes) for sop_class, syntaxes in uncompressed.items()]
    for sop_class, syntaxes in compressed.items():
        contexts.extend(build_context(sop_class, [syntax]) for syntax in syntaxes)
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"datasets_or_paths: {len(contexts)} presentation contexts needed, "
                         f"more than the {MAX_CONTEXTS} one association can carry; "
                         "send smaller batches")
    return contexts


def _tls_args(destination: DestinationSection, settings: Settings
              ) -> tuple[ssl.SSLContext, str] | None:
    if not destination.tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(settings.tls.ca_certificates) if settings.tls.ca_certificates else None,
    )
    # DICOM peers are addressed by IP as often as by name; the certificate is still checked
    # against the CA, the host name only when one is configured.
    context.check_hostname = False
    cert, key = settings.tls.client_certificate, settings.tls.client_private_key
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context, destination.host


def _where(destination: DestinationSection) -> str:
    return (f"destination {destination.name!r} ({destination.ae_title} at "
            f"{destination.host}:{destination.port})")


def send_objects(destination: DestinationSection,
                 datasets_or_paths: Sequence[pydicom.Dataset | str | Path], *,
                 settings: Settings) -> list[StoreOutcome]:
    """C-STORE every object to ``destination`` over one association.

    ``datasets_or_paths`` are datasets with file meta (as the report builders
    make them) or paths of DICOM files. The calling AE title is
    ``settings.node.ae_title``, the timeouts are ``settings.deliver``'s. TLS
    is used when ``destination.tls``, with
    ``settings.tls.client_certificate``/``client_private_key`` as client
    certificate and ``settings.tls.ca_certificates`` to check the server.

    Returns one :class:`StoreOutcome` per object, in order. Raises
    :class:`DestinationUnavailable` (retryable) when the association cannot be
    established or breaks, ``ValueError``/``TypeError`` for unusable input.
    """
    if isinstance(datasets_or_paths, (str, bytes, Path, pydicom.Dataset)):
        raise TypeError("datasets_or_paths: expected a list of Datasets or paths")
    outgoing = [_describe(item, i) for i, item in enumerate(datasets_or_paths)]
    if not outgoing:
        return []
    timeouts = _timeouts(settings)
    ae = AE(ae_title=settings.node.ae_title)
    ae.connection_timeout = timeouts.connection
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.requested_contexts = presentation_contexts(
        (o.sop_class_uid, o.transfer_syntax_uid) for o in outgoing)
    where = _where(destination)
    try:
        tls_args = _tls_args(destination, settings)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"{where}: TLS client set-up failed: {exc}") from None

    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=tls_args)
    if not assoc.is_established:
        # pynetdicom marks a refused TCP connection as "aborted" too, so only a real
        # A-ASSOCIATE-RJ is told apart.
        reason = ("association rejected by the peer" if assoc.is_rejected else
                  "no association (connection refused or aborted, timeout, or TLS failure)")
        raise DestinationUnavailable(f"{where}: {reason}; nothing sent")
    results: list[StoreOutcome] = []
    try:
        for obj in outgoing:
            if not assoc.is_established:
                raise DestinationUnavailable(
                    f"{where}: association lost after {len(results)} of {len(outgoing)} "
                    "objects", results)
            try:
                status = assoc.send_c_store(obj.source)
            except ValueError as exc:
                # pynetdicom: no accepted context for this SOP class / transfer syntax
                LOG.warning("%s: %s not sent: %s", where, obj.sop_instance_uid, exc)
                results.append(StoreOutcome(obj.sop_instance_uid,
                                            STATUS_SOP_CLASS_NOT_SUPPORTED))
                continue
            if "Status" not in status:
                # empty status: DIMSE timeout, abort or invalid response
                raise DestinationUnavailable(
                    f"{where}: no C-STORE response for SOP Instance UID {obj.sop_instance_uid} "
                    f"(timeout or association aborted) after {len(results)} of "
                    f"{len(outgoing)} objects", results)
            outcome = StoreOutcome(obj.sop_instance_uid, int(status.Status))
            if not outcome.stored:
                LOG.warning("%s: SOP Instance UID %s refused with status 0x%04X",
                            where, obj.sop_instance_uid, outcome.status)
            results.append(outcome)
    finally:
        if assoc.is_established:
            assoc.release()
    return results
