"""Staged uploads: a write too large for one request, sent in parts and applied in one transaction.

A bulk creation of many jobs from another host goes to the site agent in parts of bounded size. Each part is
checked when it arrives and kept here, in the site DB (so an agent restart loses none), under the upload's key
and the part's number; a final request takes every part and applies them together in one transaction, so the
jobs appear all at once or not at all, whatever happens to the client or the agent in between. A part sent
again (a retry) replaces itself; one that arrives after its upload was applied is ignored (the applied upload
leaves a marker, part ``APPLIED``, which also keeps what it created: a commit that comes again through the
relay, where a user's retry may become a second command, is answered with it instead of applying anything).
Parts of an upload nobody applies (its client was killed) expire after ``KEEP_S``, as do the markers.
"""

from __future__ import annotations

import sqlite3
import time
from typing import List, Optional

from balsam.exceptions import ValidationError

KEEP_S = 86400.0
"""How long the parts of an upload that was never applied are kept (a day, as long as idempotent answers)."""
APPLIED = -1
"""The part number of the marker an applied upload leaves (late retries of its parts are ignored)."""
MAX_PARTS = 100_000


def _check(upload: str, part: Optional[int] = None) -> None:
    if not isinstance(upload, str) or not 1 <= len(upload) <= 200 or not upload.isprintable():
        raise ValidationError("upload: 1 to 200 printable characters")
    if part is not None and (isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < MAX_PARTS):
        raise ValidationError(f"part: an integer from 0 to {MAX_PARTS - 1}")


def stage_part(conn: sqlite3.Connection, upload: str, part: int, rows: int, body: bytes, now: Optional[float] = None,
               keep_s: float = KEEP_S) -> bool:
    """Keep one part (``rows`` items, ``body`` its checked content) of ``upload``; False when the upload was applied
    already (a late retry: nothing kept). Expired parts of any upload are removed on the way."""
    _check(upload, part)
    now = time.time() if now is None else now
    conn.execute("DELETE FROM http_upload WHERE created < ?", (now - keep_s,))
    if conn.execute("SELECT 1 FROM http_upload WHERE upload=? AND part=?", (upload, APPLIED)).fetchone():
        return False
    conn.execute("INSERT OR REPLACE INTO http_upload(upload, part, rows, body, created) VALUES (?,?,?,?,?)",
                 (upload, part, int(rows), body, now))
    return True


def take_parts(conn: sqlite3.Connection, upload: str, parts: int, now: Optional[float] = None) -> List[bytes]:
    """The bodies of parts ``0 .. parts-1`` of ``upload``, in order, removed and replaced by the applied marker (inside
    the caller's transaction, which applies them). ValidationError naming the first part missing."""
    _check(upload)
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
        raise ValidationError(f"parts: an integer from 1 to {MAX_PARTS}")
    rows = conn.execute("SELECT part, body FROM http_upload WHERE upload=? AND part >= 0 ORDER BY part", (upload,)).fetchall()
    have = {int(r[0]): bytes(r[1]) for r in rows}
    for n in range(parts):
        if n not in have:
            applied = conn.execute("SELECT 1 FROM http_upload WHERE upload=? AND part=?", (upload, APPLIED)).fetchone()
            if applied:
                raise ValidationError(f"upload {upload!r} was applied already")
            raise ValidationError(f"upload {upload!r}: part {n} of {parts} never arrived (or expired after {KEEP_S / 3600:g} h)")
    extra = sorted(set(have) - set(range(parts)))
    if extra:
        raise ValidationError(f"upload {upload!r} has part {extra[0]}, beyond the {parts} parts named")
    now = time.time() if now is None else now
    conn.execute("DELETE FROM http_upload WHERE upload=?", (upload,))
    conn.execute("INSERT INTO http_upload(upload, part, rows, body, created) VALUES (?,?,0,x'',?)", (upload, APPLIED, now))
    return [have[n] for n in range(parts)]


def record_result(conn: sqlite3.Connection, upload: str, result: bytes) -> None:
    """Keep what applying ``upload`` created (``result``: JSON the caller reads back with :func:`applied_result`) on
    its applied marker, inside the transaction that applied it."""
    conn.execute("UPDATE http_upload SET body=? WHERE upload=? AND part=?", (result, upload, APPLIED))


def applied_result(conn: sqlite3.Connection, upload: str) -> Optional[bytes]:
    """What applying ``upload`` created, as :func:`record_result` kept it; None when it was not applied (or its
    marker expired)."""
    _check(upload)
    row = conn.execute("SELECT body FROM http_upload WHERE upload=? AND part=?", (upload, APPLIED)).fetchone()
    return bytes(row[0]) if row and row[0] else None


def drop_upload(conn: sqlite3.Connection, upload: str) -> int:
    """Forget the parts of an upload that will not be applied (its client gave up); returns how many there were."""
    _check(upload)
    return int(conn.execute("DELETE FROM http_upload WHERE upload=? AND part >= 0", (upload,)).rowcount)


def staged(conn: sqlite3.Connection) -> int:
    """Parts waiting in uploads not applied yet (``db check`` and tests)."""
    return int(conn.execute("SELECT count(*) FROM http_upload WHERE part >= 0").fetchone()[0])
