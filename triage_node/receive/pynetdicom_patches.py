"""Every change the receiver makes to pynetdicom's internals, in one place.

Written and tested against pynetdicom 3.0.4; pyproject.toml pins ``>=3.0.4,<3.1``.
:func:`self_check` runs at receiver start, before anything listens: it fails with
the missing name, the installed and the tested version when a name or a signature
one of these patches relies on has changed. :func:`apply` installs them (once a
process; calling it again only re-points the incoming directory).

1. ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True`` and
   ``LOG_REQUEST_IDENTIFIERS = False``: stream each dataset to a file as its PDUs
   arrive instead of collecting it in memory; keep identifiers (patient data) out of
   pynetdicom's log. A setting that no longer exists would be set silently in vain.
2. ``pynetdicom.dimse_messages.NamedTemporaryFile`` (which ``DIMSEMessage.decode_msg``
   calls) is replaced by :class:`_IncomingFile` in the spool's incoming directory: on
   the spool's file system the file is kept by linking it (no copy), and disk
   write-back starts while the rest of the dataset is still on the wire, so the fsync
   before Success is short.
3. ``AssociationServer.get_request`` wraps each accepted socket with
   ``ssl_context.wrap_socket(sock, server_side=True)`` in the thread that accepts
   connections. :func:`deferred_handshake_context` (an ``ssl.SSLContext`` subclass)
   turns off the handshake there and does it on the association's first read, in
   the association's own thread: a client that never completes its handshake no
   longer stops every other association, and a failed one is one warning.
4. ``DIMSEServiceProvider.receive_primitive`` is wrapped: an undecodable DIMSE
   message (a command set without Command Field, say) signals an invalid PDU
   (Evt19, so ``provider.dul.event_queue`` gets it and pynetdicom sends A-ABORT)
   instead of ending the association's network thread without one.
5. ``AssociationSocket.recv`` is wrapped: a PDU longer than our maximum PDU size gets
   an ``A_ABORT_RQ`` and is never read (pynetdicom reads any PDU whole, up to 4 GiB).
6. ``DULServiceProvider.receive_pdu`` is wrapped: a wait for a primitive ends as
   soon as the association's network thread has ended, so a peer that connected and
   left (a port scanner, a TCP health check) does not hold one of
   ``max_associations`` for the whole ``acse_timeout``.

Found by fuzzing the receiver (bench/fuzz) and by the TLS tests. The deliver stage
patches nothing: it passes an ``ssl.SSLContext`` through pynetdicom's public
``tls_args``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import inspect
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pynetdicom
from pynetdicom import _config, dimse_messages
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationServer, AssociationSocket

log = logging.getLogger(__name__)

#: The pynetdicom release these patches were written and tested against.
TESTED_VERSION = "3.0.4"

# PDUs other than P-DATA-TF (an A-ASSOCIATE-RQ with many contexts, say) may be longer
# than a small maximum PDU size; none needs more than this.
_PDU_FLOOR = 1 << 20
# How often a thread waiting for a primitive checks that its network thread still runs.
_POLL_SECONDS = 0.1
# Write-back of an incoming file starts every this many bytes.
_WRITEBACK_CHUNK = 2 * 1024 * 1024
# Marks our wrappers, so that apply() never wraps twice.
_MARK = "_triage_node_patch"


class PynetdicomChanged(RuntimeError):
    """A pynetdicom name or signature the receiver's patches rely on is not as expected."""


# -- the self-check --------------------------------------------------------------------


@dataclass(frozen=True)
class _Relied:
    """One name a patch relies on, and what it must look like."""

    owner: ModuleType | type
    name: str
    parameters: tuple[str, ...] | None = None  # a function's parameter names, in order
    mentions: str | None = None  # text its source must contain (what it calls or sets)


_RELIED_ON: tuple[_Relied, ...] = (
    # 1. settings
    _Relied(_config, "STORE_RECV_CHUNKED_DATASET"),
    _Relied(_config, "LOG_REQUEST_IDENTIFIERS"),
    # 2. the incoming file
    _Relied(dimse_messages, "NamedTemporaryFile"),
    _Relied(DIMSEMessage, "decode_msg", ("self", "primitive", "assoc"), "NamedTemporaryFile("),
    # 3. the TLS handshake in the association's thread
    _Relied(AssociationServer, "get_request", ("self",), "ssl_context.wrap_socket("),
    # 4. undecodable DIMSE messages
    _Relied(DIMSEServiceProvider, "receive_primitive", ("self", "primitive")),
    _Relied(DIMSEServiceProvider, "__init__", None, "self.message"),
    _Relied(DIMSEServiceProvider, "dul"),
    _Relied(DIMSEServiceProvider, "assoc"),
    _Relied(DULServiceProvider, "__init__", None, "self.event_queue"),
    # 5. oversized PDUs
    _Relied(AssociationSocket, "recv", ("self", "nr_bytes")),
    _Relied(AssociationSocket, "send", ("self", "bytestream")),
    _Relied(AssociationSocket, "assoc"),
    _Relied(A_ABORT_RQ, "encode", ("self",)),
    _Relied(A_ABORT_RQ, "__init__", None, "self.reason_diagnostic"),
    # 6. waits that outlive the network thread
    _Relied(DULServiceProvider, "receive_pdu", ("self", "wait", "timeout")),
    _Relied(DULServiceProvider, "is_alive", ("self",)),
    _Relied(DULServiceProvider, "ident"),
)


def _qualified(owner: ModuleType | type, name: str) -> str:
    prefix = owner.__name__ if isinstance(owner, ModuleType) else owner.__qualname__
    return f"{prefix}.{name}"


def _problem(relied: _Relied) -> str | None:
    """What is wrong with one relied-on name, or None."""
    where = _qualified(relied.owner, relied.name)
    if not hasattr(relied.owner, relied.name):
        return f"{where} is missing"
    value = getattr(relied.owner, relied.name)
    if relied.parameters is not None:
        try:
            found = tuple(inspect.signature(value).parameters)  # follows our wrappers
        except (TypeError, ValueError):
            return f"{where} is no longer a function"
        if found != relied.parameters:
            return (
                f"{where} has parameters ({', '.join(found)}), "
                f"expected ({', '.join(relied.parameters)})"
            )
    if relied.mentions is not None:
        try:
            source = inspect.getsource(inspect.unwrap(value))
        except (OSError, TypeError):
            return None  # no source installed: the names above are all that can be checked
        if relied.mentions not in source:
            return f"{where} no longer uses {relied.mentions.rstrip('(')}"
    return None


def self_check() -> None:
    """Verify that every pynetdicom name and signature the patches rely on is as expected.

    Raises :class:`PynetdicomChanged` naming each difference, the installed
    pynetdicom version and the tested one.
    """
    problems = [p for relied in _RELIED_ON if (p := _problem(relied)) is not None]
    installed = str(pynetdicom.__version__)
    if problems:
        raise PynetdicomChanged(
            f"pynetdicom {installed} is installed, the receiver's patches were written for "
            f"{TESTED_VERSION} (pyproject.toml pins pynetdicom>=3.0.4,<3.1): " + "; ".join(problems)
        )
    if installed.split(".")[:2] != TESTED_VERSION.split(".")[:2]:
        log.warning(
            "pynetdicom %s is installed, the receiver was tested with %s; self-check passed",
            installed,
            TESTED_VERSION,
        )


# -- applying them ---------------------------------------------------------------------


def apply(incoming: Path) -> None:
    """Install the patches (1, 2, 4, 5, 6; 3 is :func:`deferred_handshake_context`).

    Incoming datasets are written to files in ``incoming`` (which must be on the
    spool's file system). Idempotent: the wrappers are installed once a process;
    the settings and the incoming directory are per process (one receiver a process).
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_REQUEST_IDENTIFIERS = False
    # The module attribute is what decode_msg calls; a partial stands in for the class.
    dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
        _IncomingFile, dir=str(incoming), prefix="rx-"
    )
    _wrap_once(DIMSEServiceProvider, "receive_primitive", _abort_on_undecodable_message)
    _wrap_once(AssociationSocket, "recv", _refuse_oversized_pdus)
    _wrap_once(DULServiceProvider, "receive_pdu", _stop_waiting_when_dul_ends)


def _wrap_once(owner: type, name: str, wrap: Callable[[Any], Callable[..., Any]]) -> None:
    current = getattr(owner, name)
    if getattr(current, _MARK, False):
        return
    wrapper = wrap(current)
    setattr(wrapper, _MARK, True)
    setattr(owner, name, wrapper)


# -- 2. the incoming file --------------------------------------------------------------


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


# -- 3. the TLS handshake in the association's thread ----------------------------------


class _HandshakeBeforeFirstRead(ssl.SSLSocket):
    """An accepted TLS socket that completes its handshake on the first read.

    A failed handshake (a plain-TCP client, an untrusted or missing client
    certificate) is logged as one warning naming the peer and reads as a closed
    connection, so the association ends quietly instead of with a traceback.
    """

    _triage_handshake_done = False

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if not self._triage_handshake_done:
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

    sslsocket_class = _HandshakeBeforeFirstRead

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


def deferred_handshake_context() -> ssl.SSLContext:
    """A TLS server context whose handshake runs on each association's first read."""
    return _AssociationThreadHandshake(ssl.PROTOCOL_TLS_SERVER)


# -- 4. undecodable DIMSE messages -----------------------------------------------------


def _abort_on_undecodable_message(
    receive: Callable[[DIMSEServiceProvider, P_DATA], None],
) -> Callable[[DIMSEServiceProvider, P_DATA], None]:
    """Make an undecodable DIMSE message abort its association cleanly.

    pynetdicom lets the exception (a command set without Command Field, say) end the
    association's network thread: the peer sees the connection drop with no A-ABORT
    and a traceback goes to stderr. Signalling an invalid PDU instead (Evt19) makes
    its state machine send A-ABORT and end the association as for any other one.
    """

    @functools.wraps(receive)
    def receive_primitive(provider: DIMSEServiceProvider, primitive: P_DATA) -> None:
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


# -- 5. oversized PDUs -----------------------------------------------------------------


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


# -- 6. waits that outlive the network thread ------------------------------------------


def _stop_waiting_when_dul_ends(
    receive_pdu: Callable[[DULServiceProvider, bool, float | None], object],
) -> Callable[[DULServiceProvider, bool, float | None], object]:
    """End a wait for a primitive as soon as the association's network thread has ended.

    An acceptor waits ``acse_timeout`` for the A-ASSOCIATE-RQ; when the peer sent
    garbage (answered with A-ABORT) or just connected and left, nothing ever comes,
    and the association kept its slot for the whole timeout: a port scanner or a TCP
    health check could fill ``max_associations``.
    """

    @functools.wraps(receive_pdu)
    def receive_pdu_while_dul_runs(
        dul: DULServiceProvider, wait: bool = False, timeout: float | None = None
    ) -> object:
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
