"""Reads of the app table that are not queries through filters: stored code (for launchers and the site's owner),
the id and name of every app (the processing service loads each), and how many there are.

Writes of apps go through the backend's ``sync_app`` and ``update_rows`` (each field validated there).
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, List, Sequence, Tuple

from balsam.db.codec import dumps

APP_COLUMNS = ("id", "name", "kind", "source_code", "version")
"""What a launcher needs of an app to run it: its stored code and the version it was stored at."""


def app_code(conn: sqlite3.Connection, ids: Sequence[int]) -> List[Dict[str, Any]]:
    """Apps' stored code by id (``APP_COLUMNS``), in no particular order; unknown ids are left out."""
    rows = conn.execute(f"SELECT {', '.join(APP_COLUMNS)} FROM app WHERE id IN (SELECT value FROM json_each(?))",
                        (dumps([int(i) for i in ids]),)).fetchall()
    return [dict(zip(APP_COLUMNS, r)) for r in rows]


def app_names(conn: sqlite3.Connection) -> List[Tuple[int, str]]:
    """(id, name) of every app, by id."""
    return [(int(i), str(n)) for i, n in conn.execute("SELECT id, name FROM app ORDER BY id")]


def app_count(conn: sqlite3.Connection) -> int:
    """How many apps the site has."""
    return int(conn.execute("SELECT count(*) FROM app").fetchone()[0])


__all__ = ["APP_COLUMNS", "app_code", "app_count", "app_names"]
