"""The site row: the DB's copy of settings.yml's policies and what the agent learns from the scheduler.

One reader and one writer, so the services and site operations need no SQL of their own; the writer accepts only
the fields below, each JSON-encoded where the column holds JSON.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, Mapping, Sequence

from balsam.db.codec import dumps, loads
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


__all__ = ["JSON_FIELDS", "WRITABLE", "read_site_row", "update_site_row"]
