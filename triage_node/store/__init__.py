"""The durable state: SQLAlchemy models, migrations and job claiming (SQLite and PostgreSQL)."""

from triage_node.store.db import Store, StoreUnavailable, add_event
from triage_node.store.models import (
    Event,
    Instance,
    InstanceState,
    Job,
    JobKind,
    JobState,
    Study,
    utcnow,
)

__all__ = [
    "Event",
    "Instance",
    "InstanceState",
    "Job",
    "JobKind",
    "JobState",
    "Store",
    "StoreUnavailable",
    "Study",
    "add_event",
    "open_store",
    "utcnow",
]


def open_store(settings: "object", *, migrate: bool = True) -> Store:
    """Open the configured database and (by default) bring its schema up to date."""
    from triage_node.config import Settings
    from triage_node.store.migrate import upgrade

    assert isinstance(settings, Settings)
    store = Store(settings.database_url)
    if migrate:
        upgrade(store)
    return store
