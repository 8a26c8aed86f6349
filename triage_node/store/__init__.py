"""The durable state: SQLAlchemy models, migrations and job claiming (SQLite and PostgreSQL)."""

from triage_node.config import Settings
from triage_node.store.clock import Clock, utcnow
from triage_node.store.db import Store, StoreUnavailable, add_event
from triage_node.store.migrate import upgrade
from triage_node.store.models import (
    Delivery,
    DeliveryState,
    Event,
    Instance,
    InstanceState,
    Job,
    JobKind,
    JobState,
    Refusal,
    Result,
    ResultKind,
    Study,
    StudyState,
)

__all__ = [
    "Clock",
    "Delivery",
    "DeliveryState",
    "Event",
    "Instance",
    "InstanceState",
    "Job",
    "JobKind",
    "JobState",
    "Refusal",
    "Result",
    "ResultKind",
    "Store",
    "StoreUnavailable",
    "Study",
    "StudyState",
    "add_event",
    "open_store",
    "utcnow",
]


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """Open the configured database and (by default) bring its schema up to date."""
    store = Store(settings.database_url)
    if migrate:
        upgrade(store)
    return store
