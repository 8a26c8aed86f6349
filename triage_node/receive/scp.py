"""The DICOM receiver: a pynetdicom C-ECHO/C-STORE SCP with our association policy.

It owns association policy and status codes. Once an instance is durable (spool
file fsynced, rows committed) it answers Success; what happens next is up to the
workers reading the store.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom.config
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from triage_node.config import Settings
from triage_node.receive import pynetdicom_patches, status
from triage_node.receive.contexts import add_receiver_contexts
from triage_node.receive.eligibility import decide_eligibility
from triage_node.receive.policy import (
    REJECT_PERMANENT,
    SOURCE_SERVICE_USER,
    AssociationPolicy,
)
from triage_node.receive.spool import (
    Sender,
    SpoolFailed,
    disk_below_watermark,
    incoming_dir,
    record_refusal,
    spool_instance,
)
from triage_node.receive.validate import InstanceRefused, read_instance
from triage_node.store import InstanceState, Store, add_event
from triage_node.store.db import StoreUnavailable
from triage_node.telemetry import metrics

log = logging.getLogger(__name__)
_MB = 1024 * 1024


@dataclass
class ReceiverHandle:
    """A running receiver: its listening ``port`` and :meth:`shutdown`."""

    ae: AE
    server: ThreadedAssociationServer
    address: tuple[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.address = (str(self.server.server_address[0]), int(self.server.server_address[1]))

    @property
    def port(self) -> int:
        """The TCP port the receiver listens on (useful when configured as 0)."""
        return self.address[1]

    def shutdown(self) -> None:
        """Stop listening and end open associations."""
        self.ae.shutdown()


def tls_server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context from ``[tls]``, or None when TLS is off.

    With ``ca_certificates`` set (and ``require_client_certificate`` not false), peers
    must present a client certificate signed by one of those CAs. The handshake runs
    in each association's thread, never in the thread that accepts connections.
    """
    tls = settings.tls
    if not tls.enabled:
        return None
    if tls.certificate is None or tls.private_key is None:
        raise ValueError("[tls] enabled needs certificate and private_key")
    context = pynetdicom_patches.deferred_handshake_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.certificate), keyfile=str(tls.private_key))
    if tls.client_certificates_required:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(tls.ca_certificates))
    return context


def _receive_into(directory: Path) -> None:
    """Have pynetdicom write incoming datasets to files in ``directory``.

    With STORE_RECV_CHUNKED_DATASET pynetdicom streams each dataset to a temporary
    Part-10 file as its PDUs arrive instead of collecting it in memory; putting
    that file on the spool's file system lets us keep it by linking, without
    re-encoding or copying (:mod:`triage_node.receive.pynetdicom_patches`). The
    settings are per process: one receiver a process.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.dcm"):  # left by a crash mid-transfer: never acknowledged
        stale.unlink(missing_ok=True)
    # The receiver converts every value of a dataset to check it; pydicom's warnings
    # about values that convert but break VR rules quote them (patient data) and
    # change nothing we do.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pynetdicom_patches.apply(directory)


class StorageSCP:
    """Event handlers of the receiver, bound to one settings object and store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.policy = AssociationPolicy(settings.node.ae_title, settings.peers)

    # -- associations ------------------------------------------------------------------

    def _audit(self, kind: str, message: str, **data: Any) -> None:
        try:
            with self.store.write() as session:
                add_event(session, kind, message=message, data=data)
        except (SQLAlchemyError, StoreUnavailable) as exc:
            log.error("cannot record %s event: store unavailable (%s)", kind, type(exc).__name__)

    def on_requested(self, event: Event) -> None:
        """Apply the association policy; refuse with A-ASSOCIATE-RJ when it says no."""
        assoc = event.assoc
        request = assoc.requestor.primitive  # the A-ASSOCIATE-RQ, set before EVT_REQUESTED
        calling = str(request.calling_ae_title).strip() if request else ""
        called = str(request.called_ae_title).strip() if request else ""
        host = str(assoc.requestor.address)
        decision = self.policy.decide(calling, called, host)
        if decision.accepted:
            return
        assert decision.diagnostic is not None
        log.warning(
            "association from %s@%s to %s rejected: %s", calling, host, called, decision.reason
        )
        assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, decision.diagnostic)
        metrics.record_association(False, decision.code)
        self._audit(
            "association_rejected",
            decision.reason,
            calling_ae=calling,
            called_ae=called,
            peer_host=host,
        )
        # As pynetdicom's own ACSE does: wait until the DUL has sent the A-ASSOCIATE-RJ,
        # otherwise the server may close the socket before the peer has read it.
        assoc.kill()

    def on_accepted(self, event: Event) -> None:
        """Record an accepted association (the audit trail)."""
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        called = str(assoc.acceptor.ae_title).strip()
        host = str(assoc.requestor.address)
        log.info("association from %s@%s accepted", calling, host)
        metrics.record_association(True)
        self._audit(
            "association_accepted",
            f"{calling}@{host} -> {called}",
            calling_ae=calling,
            called_ae=called,
            peer_host=host,
        )

    def on_rejected(self, event: Event) -> None:
        """Record a rejection made by pynetdicom itself (association limit reached)."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip() if request else ""
        host = str(assoc.requestor.address)
        reason = (
            f"association limit reached (receive.max_associations = "
            f"{self.settings.receive.max_associations})"
        )
        log.warning("association from %s@%s rejected: %s", calling, host, reason)
        metrics.record_association(False, "limit_reached")
        self._audit(
            "association_rejected",
            reason,
            calling_ae=calling,
            called_ae=self.settings.node.ae_title,
            peer_host=host,
        )

    # -- C-STORE -----------------------------------------------------------------------

    def on_store(self, event: Event) -> int | Dataset:
        """Handle one C-STORE request: check, make durable, answer."""
        assoc = event.assoc
        sender = Sender(str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address))
        request = event.request
        uid = request.AffectedSOPInstanceUID if isinstance(request, C_STORE) else None
        affected = str(uid or "").strip() or None
        path = Path(event.dataset_path)
        started = time.monotonic()
        try:
            return self._store(event, path, sender, affected)
        except InstanceRefused as refused:
            metrics.record_instance("refused")
            log.warning(
                "instance %s from %s@%s refused with 0x%04X: %s",
                refused.sop_instance_uid or "(no valid SOP Instance UID)",
                sender.calling_ae,
                sender.peer_host,
                refused.status,
                refused.reason,
            )
            self._record_refusal(event, refused, sender)
            return status.status_dataset(refused.status, refused.reason)
        except (SpoolFailed, SQLAlchemyError, StoreUnavailable, OSError) as exc:
            reason = str(exc) if isinstance(exc, SpoolFailed) else type(exc).__name__
            log.error(
                "instance %s from %s@%s not stored (out of resources): %s",
                affected,
                sender.calling_ae,
                sender.peer_host,
                reason,
            )
            metrics.record_instance("refused")
            if not _store_failed(exc):
                # Not when the database is what failed: recording the refusal there would
                # wait for the same lock (or connection) again and hold the 0xA700 for
                # another timeout, long enough for the peer to give up. The log has it.
                self._record_refusal(
                    event, InstanceRefused(status.OUT_OF_RESOURCES, reason, affected), sender
                )
            return status.status_dataset(status.OUT_OF_RESOURCES, reason)
        except Exception:
            log.exception(
                "instance %s from %s@%s: internal error",
                affected,
                sender.calling_ae,
                sender.peer_host,
            )
            metrics.record_instance("refused")
            self._record_refusal(
                event,
                InstanceRefused(
                    status.INTERNAL_ERROR, "internal error of the receiver (see its log)", affected
                ),
                sender,
            )
            return status.status_dataset(status.INTERNAL_ERROR, "internal error")
        finally:
            path.unlink(missing_ok=True)
            metrics.observe_stage("receive", time.monotonic() - started)

    def _store(self, event: Event, path: Path, sender: Sender, affected: str | None) -> int:
        limits = self.settings.receive
        context = event.context
        size = path.stat().st_size
        if size > limits.max_instance_mb * _MB:
            raise InstanceRefused(
                status.INSTANCE_TOO_LARGE,
                f"instance of {size // _MB} MB exceeds receive.max_instance_mb "
                f"({limits.max_instance_mb})",
                affected,
            )
        ds, header = read_instance(
            path,
            context.abstract_syntax,
            context.transfer_syntax,
            affected,
            max_bytes=limits.max_instance_mb * _MB,
        )
        if disk_below_watermark(self.settings, size):
            raise InstanceRefused(
                status.OUT_OF_RESOURCES,
                f"free disk below receive.min_free_disk_mb ({limits.min_free_disk_mb} MB)",
                header.sop_instance_uid,
                header.study_instance_uid,
            )
        try:
            decision = decide_eligibility(ds, header, self.settings.eligibility)
        except Exception as exc:  # a corrupt value in an element the rules read
            raise InstanceRefused(
                status.CANNOT_UNDERSTAND,
                f"dataset cannot be decoded ({type(exc).__name__})",
                header.sop_instance_uid,
                header.study_instance_uid,
            ) from exc
        outcome = spool_instance(self.settings, self.store, path, header, decision, sender)
        if outcome.duplicate:
            metrics.record_instance("duplicate")
        else:
            metrics.record_instance("received")
            if outcome.state == InstanceState.SKIPPED:
                metrics.record_instance("skipped")
            log.info(
                "instance %s (instance id %d, study %s) from %s@%s stored: %s%s",
                header.sop_instance_uid,
                outcome.instance_id,
                header.study_instance_uid,
                sender.calling_ae,
                sender.peer_host,
                outcome.state,
                f" ({decision.reason})" if decision.reason else "",
            )
        return status.SUCCESS

    def _record_refusal(self, event: Event, refused: InstanceRefused, sender: Sender) -> None:
        """The refusal as a row (``worklist`` lists it) and an event; logged if the store fails."""
        context = event.context
        try:
            record_refusal(
                self.store,
                refused,
                sender,
                sop_class_uid=str(context.abstract_syntax or "") or None,
                transfer_syntax_uid=str(context.transfer_syntax or "") or None,
            )
        except (SQLAlchemyError, StoreUnavailable) as exc:
            log.error(
                "cannot record refusal of %s: store unavailable (%s)",
                refused.sop_instance_uid,
                type(exc).__name__,
            )
        except Exception:  # recording a refusal must never change the answer sent
            log.exception("cannot record refusal of %s", refused.sop_instance_uid)


def _store_failed(exc: BaseException) -> bool:
    """True if ``exc`` (or, for :class:`SpoolFailed`, the error behind it) is the database's."""
    cause = exc.__cause__ if isinstance(exc, SpoolFailed) else exc
    return isinstance(cause, (SQLAlchemyError, StoreUnavailable))


def build_ae(settings: Settings) -> AE:
    """A pynetdicom AE with our title, limits, timeouts and presentation contexts."""
    limits = settings.receive
    ae = AE(ae_title=settings.node.ae_title)
    ae.maximum_associations = limits.max_associations
    ae.maximum_pdu_size = limits.max_pdu_size
    ae.acse_timeout = limits.acse_timeout
    ae.dimse_timeout = limits.dimse_timeout
    ae.network_timeout = limits.network_timeout
    # The policy (EVT_REQUESTED) checks calling and called AE titles with the host.
    ae.require_called_aet = False
    ae.require_calling_aet = []
    add_receiver_contexts(ae)
    return ae


class ListenFailed(OSError):
    """The receiver cannot listen on ``[node] host:port``; the message names key and file."""


def start_receiver(settings: Settings, store: Store) -> ReceiverHandle:
    """Start the receiver on ``[node] host:port`` in background threads; returns at once.

    Raises :class:`~triage_node.receive.pynetdicom_patches.PynetdicomChanged` before
    anything listens when the installed pynetdicom lacks what our patches rely on, and
    :class:`ListenFailed` when the address is in use or not this machine's.
    """
    pynetdicom_patches.self_check()
    _receive_into(incoming_dir(settings))
    scp = StorageSCP(settings, store)
    ae = build_ae(settings)
    handlers: list[EventHandlerType] = [
        (evt.EVT_REQUESTED, scp.on_requested),
        (evt.EVT_ACCEPTED, scp.on_accepted),
        (evt.EVT_REJECTED, scp.on_rejected),
        (evt.EVT_C_STORE, scp.on_store),
    ]
    ssl_context = tls_server_context(settings)
    try:
        server = ae.start_server(
            (settings.node.host, settings.node.port),
            block=False,
            ssl_context=ssl_context,
            evt_handlers=handlers,
        )
    except OSError as exc:
        raise ListenFailed(settings.listen_failure("node", exc)) from exc
    assert server is not None
    handle = ReceiverHandle(ae, server)
    log.info(
        "receiver %s listening on %s:%d (tls %s)",
        settings.node.ae_title,
        handle.address[0],
        handle.port,
        "on" if settings.tls.enabled else "off",
    )
    return handle
