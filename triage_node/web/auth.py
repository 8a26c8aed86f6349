"""Console users: password hashes (scrypt), logins held in memory, CSRF tokens.

A password is kept only as ``scrypt$N$r$p$SALT$HASH`` (:func:`hash_password`,
what ``triage-node console --hash-password`` prints for the config). A login
gives a random session token in an HttpOnly, SameSite=Strict cookie; the token
and its CSRF token live in this process's memory, so a restart logs everyone
out. Every form that changes something carries the session's CSRF token, and
the server compares it in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from triage_node.config import WebUserSection

#: scrypt's cost: 2**15 x 8 x 1 takes about 0.1 s and 32 MiB per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$SALT$HASH`` of ``password`` with a fresh 16-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` gives ``stored`` (a :func:`hash_password` string)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.urlsafe_b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.urlsafe_b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True)
class Login:
    """Who a session belongs to and its CSRF token."""

    user: str
    role: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Sessions:
    """Logins of this process: token -> (login, last use); idle ones expire."""

    def __init__(
        self,
        users: Sequence[WebUserSection],
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = {u.name: u for u in users}
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, tuple[Login, float]] = {}
        # Checked when a name is unknown, so a wrong name costs what a wrong password does.
        self._decoy = hash_password(secrets.token_hex(8))

    @property
    def required(self) -> bool:
        """With users configured every page needs a login; without, pages are read-only."""
        return bool(self.users)

    def login(self, name: str, password: str) -> tuple[str, Login] | None:
        """A new session token and its login, or None for a wrong name or password."""
        user = self.users.get(name)
        ok = verify_password(password, user.password_hash if user else self._decoy)
        if user is None or not ok:
            return None
        token = secrets.token_urlsafe(32)
        login = Login(user.name, user.role, secrets.token_urlsafe(32))
        with self._lock:
            self._live[token] = (login, self._clock())
        return token, login

    def get(self, token: str | None) -> Login | None:
        """The login of a live session token (its idle time starts again), else None."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            for stale in [t for t, (_, at) in self._live.items() if now - at > self.idle_seconds]:
                del self._live[stale]
            found = self._live.get(token)
            if found is None:
                return None
            self._live[token] = (found[0], now)
            return found[0]

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._live.pop(token or "", None)


def csrf_ok(login: Login | None, sent: str | None) -> bool:
    """The form's CSRF token is the session's (constant-time compare)."""
    if login is None or not sent:
        return False
    return hmac.compare_digest(login.csrf.encode(), sent.encode())
