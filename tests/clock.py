"""A clock the tests move instead of sleeping until a lease, backoff or retry runs out."""

from __future__ import annotations

import datetime as dt

from triage_node.store.clock import utcnow


class MovableClock:
    """Real time plus an offset that :meth:`advance` moves forward.

    Never behind the real clock, so rows written with the real time (the receiver's,
    a test helper's) are as due for it as for the node; moving it makes every timer
    that runs on it expire at once.
    """

    def __init__(self) -> None:
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)
