"""The store's clock: what "now" is for leases, backoff, retries and settling.

Every function that compares against or schedules by the time takes a ``clock``
(default :func:`utcnow`), so tests move a clock instead of sleeping until a real
timer runs out. A clock returns an aware UTC datetime.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

#: A source of "now": an aware UTC datetime on every call.
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime (the real clock, the default everywhere)."""
    return dt.datetime.now(dt.UTC)
