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

import ipaddress
import logging
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import code_to_category

from triage_node.config import DestinationSection, Settings
from triage_node.telemetry.logs import library_errors_reported_by_caller

LOG = logging.getLogger(__name__)

#: Status we report for an object no accepted presentation context can carry.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
#: pynetdicom proposes at most 128 presentation contexts in one association.
MAX_CONTEXTS = 128
_UNCOMPRESSED = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)


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
    return _Timeouts(
        connection=d.connection_timeout,
        acse=d.acse_timeout,
        dimse=d.dimse_timeout,
        network=d.network_timeout,
    )


def _describe(item: pydicom.Dataset | str | Path, index: int) -> _Outgoing:
    ds: pydicom.Dataset
    if isinstance(item, (str, Path)):
        path = Path(item)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            raise ValueError(
                f"datasets_or_paths[{index}]: {path} is not a DICOM file (no DICM preamble)"
            ) from None
        except OSError as exc:
            raise ValueError(
                f"datasets_or_paths[{index}]: cannot read {path}: {exc.strerror or exc}"
            ) from None
        source: pydicom.Dataset | Path = path
    elif isinstance(item, pydicom.Dataset):
        ds = item
        source = item
    else:
        raise TypeError(
            f"datasets_or_paths[{index}]: expected a Dataset or a path, got {type(item).__name__}"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    for kw in ("SOPClassUID", "SOPInstanceUID"):
        if not ds.get(kw):
            raise ValueError(f"datasets_or_paths[{index}]: {kw} is missing")
    if not syntax:
        raise ValueError(
            f"datasets_or_paths[{index}] (SOP Instance UID {ds.SOPInstanceUID}): "
            "no file meta Transfer Syntax UID"
        )
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
            syntaxes = uncompressed.setdefault(
                sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
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
        raise ValueError(
            f"datasets_or_paths: {len(contexts)} presentation contexts needed, "
            f"more than the {MAX_CONTEXTS} one association can carry; "
            "send smaller batches"
        )
    return contexts


class _HandshakeRecordingSocket(ssl.SSLSocket):
    """Keeps a TLS error on its context, for the delivery's message: pynetdicom only logs it.

    Our check of the destination's certificate fails in ``connect``; the destination's
    refusal of our client certificate arrives (with TLS 1.3) on the first read.
    """

    def _record(self, error: ssl.SSLError) -> None:
        context = self.context
        if isinstance(context, _TlsClientContext) and context.handshake_error is None:
            context.handshake_error = error

    def connect(self, addr: Any) -> None:
        try:
            super().connect(addr)
        except ssl.SSLError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc)
            raise


class _TlsClientContext(ssl.SSLContext):
    """The client context for one association; ``handshake_error`` says why TLS failed."""

    sslsocket_class = _HandshakeRecordingSocket
    handshake_error: ssl.SSLError | None = None


def _tls_args(
    destination: DestinationSection, settings: Settings
) -> tuple[_TlsClientContext, str] | None:
    """The TLS context and server name for ``destination``, or None without ``tls``.

    The destination's certificate must be signed by ``[tls] ca_certificates`` (the
    system's CAs when unset). A destination configured by host name must also be
    named in its certificate; one configured by IP address is checked against the CA
    only, since DICOM devices' certificates seldom list their addresses.
    """
    if not destination.tls:
        return None
    context = _TlsClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, host names checked
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls.ca_certificates is not None:
        context.load_verify_locations(cafile=str(settings.tls.ca_certificates))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    try:
        ipaddress.ip_address(destination.host)
        context.check_hostname = False
    except ValueError:
        pass  # a host name: checked against the certificate
    cert, key = settings.tls.client_certificate, settings.tls.client_private_key
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key is not None else None)
    return context, destination.host


def _tls_failure(error: ssl.SSLError, settings: Settings) -> str:
    """Why the TLS handshake failed, in words a site engineer can act on."""
    if isinstance(error, ssl.SSLCertVerificationError):
        trusted = (
            f"[tls] ca_certificates ({settings.tls.ca_certificates})"
            if settings.tls.ca_certificates is not None
            else "the system's CAs"
        )
        return (
            f"TLS handshake failed: the destination's certificate was not accepted "
            f"({error.verify_message}; checked against {trusted})"
        )
    reason = str(error.reason or error).upper()
    # An alert from the destination about certificates is about ours (e.g.
    # TLSV13_ALERT_CERTIFICATE_REQUIRED, TLSV1_ALERT_UNKNOWN_CA).
    if "ALERT" in reason and any(w in reason for w in ("CERTIFICATE", "UNKNOWN_CA")):
        ours = settings.tls.client_certificate or "none configured"
        return (
            f"TLS handshake failed: the destination did not accept our client "
            f"certificate ({reason}; [tls] client_certificate: {ours})"
        )
    return f"TLS handshake failed: {reason}"


def _where(destination: DestinationSection) -> str:
    return (
        f"destination {destination.name!r} ({destination.ae_title} at "
        f"{destination.host}:{destination.port})"
    )


@dataclass
class _Handshake:
    """What happened while the association was requested (pynetdicom's events)."""

    connected: bool = False
    answers: list[Any] = field(default_factory=list)  # ACSE primitives from the peer

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_ACSE_RECV, self._on_acse),
        ]

    def _on_open(self, event: Any) -> None:
        self.connected = True

    def _on_acse(self, event: Any) -> None:
        self.answers.append(event.primitive)


class TlsSetupFailed(Exception):
    """The TLS client context could not be built from the [tls] files (not retryable)."""


class PeerUnreachable(Exception):
    """The peer's host name does not resolve or its port cannot be connected to."""


@dataclass
class AssociationAttempt:
    """What :func:`request_association` got: the association (established or not), what
    the peer answered (to say why not), and a TLS handshake error, if any."""

    association: Association
    handshake: _Handshake
    tls_error: ssl.SSLError | None


def request_association(
    ae: AE, peer: DestinationSection, settings: Settings, where: str
) -> AssociationAttempt:
    """Ask ``peer`` for an association with ``ae``'s contexts, over TLS when configured.

    Shared by the C-STORE and C-FIND SCUs. Raises :class:`TlsSetupFailed` or
    :class:`PeerUnreachable` (messages start with ``where`` and say what to check);
    an association that the peer rejects, aborts or leaves unanswered is returned
    not established, with what the peer answered in ``handshake``.
    """
    try:
        tls_args = _tls_args(peer, settings)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupFailed(
            f"{where}: TLS client set-up failed ({exc.strerror or exc}); check the [tls] "
            "client_certificate, client_private_key and ca_certificates files"
        ) from None
    handshake = _Handshake()
    try:
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls_args,
            evt_handlers=handshake.handlers(),
        )
    except socket.gaierror as exc:
        # pynetdicom resolves the host name before it connects, and lets this through.
        raise PeerUnreachable(
            f"{where}: host name {peer.host!r} does not resolve ({exc.strerror}); "
            "check the destination's host in the config (a name this machine's DNS knows, "
            "or an IP address)"
        ) from None
    except OSError as exc:
        raise PeerUnreachable(
            f"{where}: cannot connect ({exc.strerror or exc}); check the destination's "
            "host and port in the config"
        ) from None
    tls_error = tls_args[0].handshake_error if tls_args is not None else None
    return AssociationAttempt(assoc, handshake, tls_error)


def _no_association(
    destination: DestinationSection,
    settings: Settings,
    handshake: _Handshake,
    tls_error: ssl.SSLError | None,
) -> str:
    """Why no association came about, and what to check, for the delivery's last error."""
    calling, called = settings.node.ae_title, destination.ae_title
    if tls_error is not None:
        return _tls_failure(tls_error, settings)
    if not handshake.connected:
        return (
            f"no association: cannot connect to {destination.host}:{destination.port} "
            "(connection refused, or no answer within deliver.connection_timeout = "
            f"{settings.deliver.connection_timeout:g} s); check that the archive is running "
            f"and listens on port {destination.port}, and that no firewall blocks it"
        )
    for answer in handshake.answers:
        if isinstance(answer, A_ASSOCIATE) and answer.result in (0x01, 0x02):
            return (
                f"association rejected by the peer ({answer.result_str}, "
                f"{answer.source_str}: {answer.reason_str}); check that {called} accepts "
                f"our AE title {calling} from this host and that its own AE title is {called}"
            )
        if isinstance(answer, A_ASSOCIATE) and answer.result == 0x00:
            return (
                "no association: the peer accepted none of our presentation contexts; "
                f"check that {called} accepts storage of the SOP classes we send "
                "(Comprehensive 3D SR, Secondary Capture)"
            )
        if isinstance(answer, (A_ABORT, A_P_ABORT)):
            return (
                "no association: the peer aborted the association request; check its log "
                f"(is our AE title {calling} configured there?)"
            )
    return (
        "no association: no answer to the association request within "
        f"deliver.acse_timeout = {settings.deliver.acse_timeout:g} s; check that "
        f"{destination.host}:{destination.port} is a DICOM service"
    )


def send_objects(
    destination: DestinationSection,
    datasets_or_paths: Sequence[pydicom.Dataset | str | Path],
    *,
    settings: Settings,
) -> list[StoreOutcome]:
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
    Every error message names the destination, its AE title, host and port, and
    what to check; pynetdicom's own error lines about it go to the DEBUG log.
    """
    if isinstance(datasets_or_paths, (str, bytes, Path, pydicom.Dataset)):
        raise TypeError("datasets_or_paths: expected a list of Datasets or paths")
    outgoing = [_describe(item, i) for i, item in enumerate(datasets_or_paths)]
    if not outgoing:
        return []
    with library_errors_reported_by_caller():
        return _send(destination, outgoing, settings)


def _send(
    destination: DestinationSection, outgoing: list[_Outgoing], settings: Settings
) -> list[StoreOutcome]:
    timeouts = _timeouts(settings)
    ae = AE(ae_title=settings.node.ae_title)
    ae.connection_timeout = timeouts.connection
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.requested_contexts = presentation_contexts(
        (o.sop_class_uid, o.transfer_syntax_uid) for o in outgoing
    )
    where = _where(destination)
    try:
        attempt = request_association(ae, destination, settings, where)
    except TlsSetupFailed as exc:
        raise DeliveryError(str(exc)) from None
    except PeerUnreachable as exc:
        raise DestinationUnavailable(f"{exc}; nothing sent") from None
    assoc = attempt.association
    if not assoc.is_established:
        reason = _no_association(destination, settings, attempt.handshake, attempt.tls_error)
        raise DestinationUnavailable(f"{where}: {reason}; nothing sent")
    results: list[StoreOutcome] = []
    try:
        for obj in outgoing:
            if not assoc.is_established:
                raise DestinationUnavailable(
                    f"{where}: association lost after {len(results)} of {len(outgoing)} "
                    "objects; check the destination's log",
                    results,
                )
            try:
                status = assoc.send_c_store(obj.source)
            except ValueError as exc:
                # pynetdicom: no accepted context for this SOP class / transfer syntax. The
                # status is in the outcome; the caller reports it (one line per attempt).
                LOG.debug("%s: %s not sent: %s", where, obj.sop_instance_uid, exc)
                results.append(StoreOutcome(obj.sop_instance_uid, STATUS_SOP_CLASS_NOT_SUPPORTED))
                continue
            if "Status" not in status:
                # empty status: DIMSE timeout, abort or invalid response
                raise DestinationUnavailable(
                    f"{where}: no C-STORE response for SOP Instance UID {obj.sop_instance_uid} "
                    f"(no answer within deliver.dimse_timeout = {timeouts.dimse:g} s, or the "
                    f"association was aborted) after {len(results)} of {len(outgoing)} "
                    "objects; check the destination's log",
                    results,
                )
            outcome = StoreOutcome(obj.sop_instance_uid, int(status.Status))
            if not outcome.stored:
                LOG.debug(
                    "%s: SOP Instance UID %s refused with status 0x%04X",
                    where,
                    obj.sop_instance_uid,
                    outcome.status,
                )
            results.append(outcome)
    finally:
        if assoc.is_established:
            assoc.release()
    return results
