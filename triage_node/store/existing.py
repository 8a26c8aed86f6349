"""Opening the node's database from the admin commands without creating one by accident."""

from __future__ import annotations

from pathlib import Path

from triage_node.config import Settings
from triage_node.store.db import Store


def open_existing_store(settings: Settings) -> Store | None:
    """The configured store, or None when the default SQLite file does not exist yet.

    Admin commands read; they never create the node's database or migrate it.
    """
    url = settings.database_url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.exists():
            return None
    return Store(url)
