"""Schema migrations with Alembic: `triage-node db upgrade`, also run on start."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from triage_node.store.db import Store


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "triage_node.store:migrations")
    return cfg


def upgrade(store: Store) -> str:
    """Bring the database schema to the newest revision; returns that revision."""
    cfg = alembic_config()
    with store.engine.begin() as conn:
        if store.is_sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return head_revision()


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(store: Store) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
