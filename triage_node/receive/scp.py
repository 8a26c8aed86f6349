"""The DICOM receiver: a pynetdicom C-ECHO/C-STORE SCP with our association policy.

It owns association policy and status codes. Once an instance is durable (spool
file fsynced, rows committed) it answers Success; what happens next is up to the
workers reading the store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom.config
import pynetdicom.dimse_messages
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from triage_node.config import Settings
from triage_node.receive import status
from triage_node.receive.contexts import add_receiver_contexts
from triage_node.receive.eligibility import decide_eligibility
from triage_node.receive.network_guards import install_network_guards
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
    spool_instance,
)
from triage_node.receive.validate import InstanceRefused, read_instance
from triage_node.store import Store, add_event
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


class _HandshakeBeforeFirstRead(ssl.SSLSocket):
    """An accepted TLS socket that completes its handshake on the first read.

    A failed handshake (a plain-TCP client, an untrusted or missing client
    certificate) is logged as one warning naming the peer and reads as a closed
    connection, so the association ends quietly instead of with a traceback.
    """

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if not getattr(self, "_triage_handshake_done", False):
            self._triage_handshake_done = True
            try:
                self.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                try:
                    host, port = self.getpeername()[:2]
                    peer = f"{host}:{port}"
                except OSError:
                    peer = "unknown peer"
                reason = getattr(exc, "reason", None) or exc.__class__.__name__
                log.warning("TLS handshake with %s failed (%s); connection closed", peer, reason)
                return b""
        return super().recv(buflen, flags)


class _AssociationThreadHandshake(ssl.SSLContext):
    """A server context whose TLS handshake runs in the association's own thread.

    pynetdicom wraps each accepted socket in the thread that accepts connections; with
    the handshake done there, one client that connects and never completes it (a port
    scanner, a plain-TCP health check that holds the connection) would stop every
    other association. Deferred, the handshake happens on the association's first
    read, and a failed one ends that association only.
    """

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


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
    context = _AssociationThreadHandshake(ssl.PROTOCOL_TLS_SERVER)
    context.sslsocket_class = _HandshakeBeforeFirstRead
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
    that file on the spool's file system lets us keep it by renaming, without
    re-encoding or copying. Both settings are per process: one receiver a process.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.dcm"):  # left by a crash mid-transfer: never acknowledged
        stale.unlink(missing_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    # The receiver converts every value of a dataset to check it; pydicom's warnings
    # about values that convert but break VR rules quote them (patient data) and
    # change nothing we do.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pynetdicom.dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined]
        _IncomingFile, dir=str(directory), prefix="rx-"
    )
    install_network_guards()


_WRITEBACK_CHUNK = 2 * 1024 * 1024


def _writeback_starter() -> Callable[[int, int, int], None]:
    """A function that asks the kernel to start writing a file range to disk now.

    Linux's sync_file_range(SYNC_FILE_RANGE_WRITE) starts write-back without waiting;
    elsewhere, posix_fadvise(DONTNEED) has the same side effect on Linux and is harmless
    on other systems. Either way the final fsync only waits for the last chunk.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        sync_file_range = libc.sync_file_range
        sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]

        def start(fd: int, offset: int, length: int) -> None:
            sync_file_range(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE

        return start
    except (OSError, AttributeError):

        def fadvise(fd: int, offset: int, length: int) -> None:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)

        return fadvise


_start_writeback = _writeback_starter()


class _IncomingFile:
    """pynetdicom's temporary dataset file, starting disk write-back as data arrives.

    Success may only be sent after fsync; writing the file out while the rest of the
    dataset is still on the wire keeps that fsync short (the receive benchmark's
    node/storescp ratio depends on it).
    """

    def __init__(self, **kwargs: Any) -> None:
        self._tmp = tempfile.NamedTemporaryFile(**kwargs)
        self.name = self._tmp.name
        self.file = self._tmp.file
        self._written = 0
        self._synced = 0

    def write(self, data: bytes) -> int:
        n = self._tmp.write(data)
        self._written += n
        if self._written - self._synced >= _WRITEBACK_CHUNK:
            self._tmp.file.flush()
            _start_writeback(self._tmp.file.fileno(), self._synced, self._written - self._synced)
            self._synced = self._written
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tmp, name)


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
        request = assoc.requestor.primitive
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
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
        affected = str(event.request.AffectedSOPInstanceUID or "").strip() or None
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
            self._record_refusal(refused, sender)
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
                    InstanceRefused(status.OUT_OF_RESOURCES, reason, affected), sender
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
            if outcome.state == "skipped":
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

    def _record_refusal(self, refused: InstanceRefused, sender: Sender) -> None:
        try:
            with self.store.write() as session:
                add_event(
                    session,
                    "store_refused",
                    sop_instance_uid=refused.sop_instance_uid,
                    study_instance_uid=refused.study_instance_uid,
                    message=refused.reason,
                    data={
                        "status": f"0x{refused.status:04X}",
                        "calling_ae": sender.calling_ae,
                        "peer_host": sender.peer_host,
                    },
                )
        except (SQLAlchemyError, StoreUnavailable) as exc:
            log.error(
                "cannot record refusal of %s: store unavailable (%s)",
                refused.sop_instance_uid,
                type(exc).__name__,
            )


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


def start_receiver(settings: Settings, store: Store) -> ReceiverHandle:
    """Start the receiver on ``[node] host:port`` in background threads; returns at once."""
    _receive_into(incoming_dir(settings))
    scp = StorageSCP(settings, store)
    ae = build_ae(settings)
    handlers = [
        (evt.EVT_REQUESTED, scp.on_requested),
        (evt.EVT_ACCEPTED, scp.on_accepted),
        (evt.EVT_REJECTED, scp.on_rejected),
        (evt.EVT_C_STORE, scp.on_store),
    ]
    server = ae.start_server(
        (settings.node.host, settings.node.port),
        block=False,
        ssl_context=tls_server_context(settings),
        evt_handlers=handlers,  # type: ignore[arg-type]
    )
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
