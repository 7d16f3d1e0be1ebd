"""The relay's schema migrations, run with Alembic from the scripts in ``balsam/relay/migrations``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balsam.relay.store import RelayStore


def upgrade(store: "RelayStore", revision: str = "head") -> None:
    """Upgrade the relay DB to ``revision`` (default: the newest)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current(store: "RelayStore") -> str:
    """The revision the relay DB is at ("" when it has none)."""
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() or ""
