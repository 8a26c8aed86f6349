"""Database connections: SQLite (WAL, synchronous FULL) by default, PostgreSQL by URL.

Writers open their transaction with ``BEGIN IMMEDIATE`` on SQLite so that two
processes never both read-then-write the same rows; PostgreSQL relies on row
locks (``FOR UPDATE SKIP LOCKED``) in the claiming query instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Executable, create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from triage_node.store.clock import utcnow
from triage_node.store.models import Event, Job

_IMMEDIATE = "triage_immediate"


class StoreUnavailable(Exception):
    """The database cannot be reached or written."""


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get(_IMMEDIATE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


class CommitSignal:
    """Wakes waiters in this process as soon as one of its transactions has committed news.

    The store has two: ``job_signal`` (a job was queued) and ``study_signal`` (an
    instance became final). Workers that find nothing to do wait for the next job
    signal or ``worker.poll_seconds``, whichever comes first, so a job queued in the
    same process (the receiver's score job, the report job after scoring, the
    delivery after the report) is claimed at once instead of on the next poll; jobs
    queued by other processes (a scale-out setup) and retries that fall due later
    are still found by polling. The completeness check runs on the study signal as
    well as on its timer. The
    generation counter closes the gap between a worker's empty claim and its wait: a
    job committed in between is a new generation, and the wait returns at once.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0

    @property
    def generation(self) -> int:
        with self._changed:
            return self._generation

    def notify(self) -> None:
        """A job was committed (or the workers are asked to stop): wake every waiter."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until the generation differs from ``seen`` or ``timeout`` seconds pass.

        True when woken by a signal.
        """
        with self._changed:
            return self._changed.wait_for(lambda: self._generation != seen, timeout)


#: ``session.info`` key a transaction sets when an instance of a study became final.
STUDY_NEWS = "study_news"


def _signal_commits(
    factory: sessionmaker[Session], jobs: CommitSignal, studies: CommitSignal
) -> None:
    @event.listens_for(factory, "after_flush")
    def _note_new_jobs(session: Session, _context: Any) -> None:
        if any(isinstance(obj, Job) for obj in session.new):
            session.info["job_queued"] = True

    @event.listens_for(factory, "after_commit")
    def _wake(session: Session) -> None:
        if session.info.pop("job_queued", False):
            jobs.notify()
        if session.info.pop(STUDY_NEWS, False):
            studies.notify()

    @event.listens_for(factory, "after_rollback")
    def _forget(session: Session) -> None:
        session.info.pop("job_queued", None)
        session.info.pop(STUDY_NEWS, None)


class Store:
    """The node's database: sessions for reading and for writing, and migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 30})
            _sqlite_setup(self.engine)
            writer: Engine = self.engine.execution_options(**{_IMMEDIATE: True})
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
            writer = self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)
        #: Wakes this process's idle workers when a job is queued here (see CommitSignal).
        self.job_signal = CommitSignal()
        #: Fires when a transaction here made an instance final (the completeness check
        #: looks at its study at once instead of on its next tick).
        self.study_signal = CommitSignal()
        _signal_commits(self._write, self.job_signal, self.study_signal)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that may write; committed on exit, rolled back on error."""
        with self._write() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only snapshot transaction."""
        with self._read() as session:
            yield session
            session.rollback()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless a trivial query succeeds."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except OperationalError as exc:
            raise StoreUnavailable(str(exc.orig)) from exc

    def dispose(self) -> None:
        self.engine.dispose()


def add_event(session: Session, kind: str, *, state: str | None = None, **fields: Any) -> Event:
    """Record an event row in the caller's transaction (the audit trail).

    ``state`` is any of the state enums (stored as its value) or None.
    """
    ev = Event(kind=kind, at=utcnow(), state=None if state is None else str(state), **fields)
    session.add(ev)
    return ev


def rows_changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE or DELETE in the caller's transaction; how many rows it matched."""
    result = cast("CursorResult[Any]", session.execute(statement))
    return int(result.rowcount or 0)


def redact_url(url: str) -> str:
    """The database URL without its password, for messages and status output."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        user = cred.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
