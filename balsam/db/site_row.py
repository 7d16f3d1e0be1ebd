"""The site row: the DB's copy of settings.yml's policies and what the agent learns from the scheduler.

One reader and one writer, so the services and site operations need no SQL of their own; the writer accepts only
the fields below, each JSON-encoded where the column holds JSON.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from balsam.db.codec import dumps, loads
from balsam.db.meta import write_meta
from balsam.exceptions import ValidationError

JSON_FIELDS = frozenset({"backfill_windows", "queued_jobs", "optional_batch_job_params", "allowed_projects", "allowed_queues",
                         "transfer_locations"})
WRITABLE = JSON_FIELDS | {"globus_endpoint_id", "last_refresh"}


def read_site_row(conn: sqlite3.Connection, columns: Sequence[str]) -> Dict[str, Any]:
    """Columns of the site row (JSON ones decoded); empty if the DB has no site row."""
    unknown = [c for c in columns if c not in WRITABLE | {"id", "name", "path", "uuid", "creation_date", "version"}]
    if unknown:
        raise ValidationError(f"site field {unknown[0]!r} does not exist")
    row = conn.execute(f"SELECT {', '.join(columns)} FROM site LIMIT 1").fetchone()
    if row is None:
        return {}
    return {c: (loads(v) if c in JSON_FIELDS and v is not None else v) for c, v in zip(columns, row)}


def update_site_row(conn: sqlite3.Connection, fields: Mapping[str, Any], *, stamp: bool = False) -> None:
    """Write fields of the site row (Python values; JSON columns encoded here); ``stamp`` sets ``last_refresh``."""
    bad = sorted(set(fields) - WRITABLE)
    if bad:
        raise ValidationError(f"site field {bad[0]!r} cannot be written (writable: {', '.join(sorted(WRITABLE))})")
    values = {k: (dumps(v) if k in JSON_FIELDS else v) for k, v in fields.items()}
    if stamp:
        values["last_refresh"] = time.time()
    if values:
        conn.execute(f"UPDATE site SET {', '.join(f'{k}=?' for k in values)}, version=version+1", tuple(values.values()))


def site_identity(conn: sqlite3.Connection) -> Optional[Tuple[int, str]]:
    """(id, name) of the site row; None if the DB has none."""
    row = conn.execute("SELECT id, name FROM site LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def whole_site_row(conn: sqlite3.Connection) -> Dict[str, Any]:
    """Every column of the site row as stored (JSON columns as text), for the relay's copy; empty if none."""
    cur = conn.execute("SELECT * FROM site LIMIT 1")
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchone() or ()))


def set_site_path(conn: sqlite3.Connection, path: str) -> None:
    """Record where the site's directory now is (after ``balsam site mv``)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValidationError(f"a site path is absolute, not {path!r}")
    conn.execute("UPDATE site SET path=?, version=version+1", (path,))


def set_site_name(conn: sqlite3.Connection, name: str) -> None:
    """Give the site row (and the meta note of the name) a new name, already validated by the caller's layer."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"a site name is a non-empty string, not {name!r}")
    conn.execute("UPDATE site SET name=?, version=version+1", (name,))
    write_meta(conn, "site_name", name)


__all__ = ["JSON_FIELDS", "WRITABLE", "read_site_row", "set_site_name", "set_site_path", "site_identity", "update_site_row",
           "whole_site_row"]
