"""systemd service notification (sd_notify): READY, STATUS, WATCHDOG and STOPPING.

The protocol is a datagram of ``KEY=VALUE`` lines sent to the unix socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket). Without that
variable (not started by systemd with Type=notify) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _socket_address(environ: Mapping[str, str]) -> str | bytes | None:
    addr = environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr.startswith("@"):
        return b"\0" + addr[1:].encode()
    if addr.startswith("/"):
        return addr
    return None  # vsock and other forms: not used by the units we ship


def sd_notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=VALUE`` assignments to the service manager; True if sent.

    Example: ``sd_notify("READY=1", "STATUS=listening on 11112")``. Errors are
    logged, never raised: a lost notification must not take the node down.
    """
    env = os.environ if environ is None else environ
    address = _socket_address(env)
    if address is None or not assignments:
        return False
    message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc, extra={"notify_socket": env["NOTIFY_SOCKET"]})
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None if not asked.

    ``$WATCHDOG_PID``, when set, must be our pid: the watchdog is meant for the
    main process only.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2_000_000


class Watchdog:
    """A thread that sends WATCHDOG=1 at half of ``$WATCHDOG_USEC`` while ``healthy()`` holds.

    When ``healthy()`` returns False the pings stop and systemd restarts the
    service after WatchdogSec: a node with dead workers is not left looking alive.
    """

    def __init__(
        self, healthy: Callable[[], bool], environ: Mapping[str, str] | None = None
    ) -> None:
        self._healthy = healthy
        self._environ = environ
        self.interval = watchdog_interval(environ)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start pinging (nothing happens when no watchdog was requested)."""
        if self.interval is None:
            return
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> bool:
        """One watchdog period: ping if ``healthy()`` holds; returns whether it pinged."""
        try:
            ok = self._healthy()
        except Exception:  # a failing health check is an unhealthy node
            log.exception("health check raised")
            ok = False
        if ok:
            sd_notify("WATCHDOG=1", environ=self._environ)
        else:
            log.error("node unhealthy: withholding the systemd watchdog ping")
        return ok

    def stop(self) -> None:
        """Stop pinging and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
