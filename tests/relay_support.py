"""Relay fixtures: a RelayStore on SQLite (always) and on PostgreSQL (when .ci/postgres.sh runs: BALSAM_TEST_PG_URL)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def relay_store(kind: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh, migrated RelayStore of ``kind``."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from balsam.relay.store import RelayStore

    if kind == "sqlite":
        store = RelayStore(f"sqlite:///{tmp_path / 'relay.db'}")
    else:
        url = os.environ.get("BALSAM_TEST_PG_URL")
        if not url:
            pytest.skip("PostgreSQL is not running (bash .ci/postgres.sh start; export BALSAM_TEST_PG_URL=$(bash .ci/postgres.sh url))")
        import sqlalchemy as sa

        store = RelayStore(url)
        with store.begin() as c:
            c.execute(sa.text("DROP SCHEMA public CASCADE"))
            c.execute(sa.text("CREATE SCHEMA public"))
    store.migrate()
    yield store
    store.close()
