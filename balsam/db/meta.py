"""The meta table: the store's own key/value notes (schema stamp, home host, the site's name and uuid, the
settings file's stamp, the relay link's cursors). One reader and one writer, used inside the caller's
transaction; :meth:`balsam.db.connection.Store.get_meta` and ``set_meta`` wrap them for one-off use.
"""

from __future__ import annotations

import sqlite3
from typing import Optional

from balsam.exceptions import ValidationError


def read_meta(conn: sqlite3.Connection, key: str) -> Optional[str]:
    """The value stored under ``key``, or None."""
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def write_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    """Store ``value`` under ``key`` (replacing any value there)."""
    if not isinstance(key, str) or not key or not isinstance(value, str):
        raise ValidationError(f"meta entries are non-empty string keys with string values, not {key!r}: {type(value).__name__}")
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))


__all__ = ["read_meta", "write_meta"]
