"""Guards around pynetdicom's network layer so that hostile or broken peers cost little.

Found by fuzzing the receiver (bench/fuzz): pynetdicom reads any PDU whole whatever
its length, lets an undecodable command set end an association's network thread
without A-ABORT, and keeps an acceptor thread (one of ``max_associations``) waiting
for ``acse_timeout`` after a peer that never sent a valid A-ASSOCIATE-RQ is gone.
:func:`install_network_guards` wraps the three places; the wrappers are per process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

# PDUs other than P-DATA-TF (an A-ASSOCIATE-RQ with many contexts, say) may be longer
# than a small maximum PDU size; none needs more than this.
_PDU_FLOOR = 1 << 20
# How often a thread waiting for a primitive checks that its network thread still runs.
_POLL_SECONDS = 0.1


def install_network_guards() -> None:
    """Wrap pynetdicom's PDU reads, DIMSE decoding and ACSE waits (once a process)."""
    if not hasattr(DIMSEServiceProvider.receive_primitive, "__wrapped__"):
        DIMSEServiceProvider.receive_primitive = (  # type: ignore[method-assign]
            _abort_on_undecodable_message(DIMSEServiceProvider.receive_primitive)
        )
    if not hasattr(AssociationSocket.recv, "__wrapped__"):
        AssociationSocket.recv = _refuse_oversized_pdus(  # type: ignore[method-assign]
            AssociationSocket.recv
        )
    if not hasattr(DULServiceProvider.receive_pdu, "__wrapped__"):
        DULServiceProvider.receive_pdu = _stop_waiting_when_dul_ends(  # type: ignore[method-assign]
            DULServiceProvider.receive_pdu
        )


def _abort_on_undecodable_message(
    receive: Callable[[DIMSEServiceProvider, Any], None],
) -> Callable[[DIMSEServiceProvider, Any], None]:
    """Make an undecodable DIMSE message abort its association cleanly.

    pynetdicom lets the exception (a command set without Command Field, say) end the
    association's network thread: the peer sees the connection drop with no A-ABORT
    and a traceback goes to stderr. Signalling an invalid PDU instead (Evt19) makes
    its state machine send A-ABORT and end the association as for any other one.
    """

    @functools.wraps(receive)
    def receive_primitive(provider: DIMSEServiceProvider, primitive: Any) -> None:
        try:
            receive(provider, primitive)
        except Exception as exc:
            log.warning(
                "association from %s: undecodable DIMSE message (%s), aborting",
                provider.assoc.requestor.address,
                type(exc).__name__,
            )
            provider.message = None
            provider.dul.event_queue.put("Evt19")

    return receive_primitive


def _refuse_oversized_pdus(
    recv: Callable[[AssociationSocket, int], bytearray],
) -> Callable[[AssociationSocket, int], bytearray]:
    """Never read a PDU longer than our maximum PDU size.

    pynetdicom reads a whole PDU into memory, whatever length its header claims (up to
    4 GiB) and whatever maximum we negotiated: a peer could make the node hold
    gigabytes. A longer PDU gets an A-ABORT (invalid PDU parameter value) and the
    connection is closed unread.
    """

    @functools.wraps(recv)
    def recv_within_limit(sock: AssociationSocket, nr_bytes: int) -> bytearray:
        limit = sock.assoc.ae.maximum_pdu_size
        if limit and nr_bytes > max(limit, _PDU_FLOOR):
            log.warning(
                "association from %s: PDU of %d bytes exceeds the maximum PDU size (%d), aborting",
                sock.assoc.requestor.address,
                nr_bytes,
                limit,
            )
            abort = A_ABORT_RQ()
            abort.source, abort.reason_diagnostic = 0x02, 0x06
            with contextlib.suppress(OSError):
                sock.send(abort.encode())
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the maximum PDU size")
        return recv(sock, nr_bytes)

    return recv_within_limit


def _stop_waiting_when_dul_ends(receive_pdu: Callable[..., Any]) -> Callable[..., Any]:
    """End a wait for a primitive as soon as the association's network thread has ended.

    An acceptor waits ``acse_timeout`` for the A-ASSOCIATE-RQ; when the peer sent
    garbage (answered with A-ABORT) or just connected and left, nothing ever comes,
    and the association kept its slot for the whole timeout: a port scanner or a TCP
    health check could fill ``max_associations``.
    """

    @functools.wraps(receive_pdu)
    def receive_pdu_while_dul_runs(
        dul: DULServiceProvider, wait: bool = False, timeout: float | None = None
    ) -> Any:
        if not wait:
            return receive_pdu(dul, wait, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _POLL_SECONDS if deadline is None else deadline - time.monotonic()
            primitive = receive_pdu(dul, True, max(0.0, min(_POLL_SECONDS, left)))
            if primitive is not None:
                return primitive
            if (dul.ident is not None and not dul.is_alive()) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return None

    return receive_pdu_while_dul_runs
