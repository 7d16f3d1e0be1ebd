"""The workdir substring index: an FTS5 trigram index over ``job.workdir``, filled behind job creation.

A filter ``workdir__contains="w/9999"`` scans every job without it (0.3 s on 1,000,000 jobs). SQLite 3.34+
built with FTS5 has a trigram tokenizer, so the index ``job_workdir_fts`` (external content: only the index is
stored, the text stays in ``job``; ``detail=none``: no positions, a third of the size) finds the jobs holding
every trigram of the substring, and ``instr`` keeps those holding the substring itself.

Creating jobs does not pay for it (a trigger per inserted row made bulk inserts 3.5x slower): the index covers
the jobs up to a cursor (``meta.workdir_index_upto``; ids only grow), :func:`catch_up` indexes the jobs after it
in small steps (the API server runs it every second), and a query reads the index for the jobs it covers and
scans the few after it, so answers are exact whatever the cursor. A deleted job's entry stays until the next
rebuild (the query joins with ``job``, so it is never returned); a workdir change of an indexed job is applied
by a trigger (rare).

Where FTS5 or the trigram tokenizer is missing nothing is created and the filter scans, as before. A DB that has
the index opened by a SQLite without it (another Python on the home host) would fail workdir changes on the
trigger, so :func:`reconcile` drops the trigger there and marks the index stale (cursor -1); the next SQLite
that has FTS5 empties it, puts the trigger back and indexes again from the first job.
"""

from __future__ import annotations

import sqlite3
from typing import Dict, List, Optional, Tuple

TABLE = "job_workdir_fts"
TRIGGER = "job_workdir_fts_update"
CURSOR = "workdir_index_upto"
TRIGGER_SQL = (f"CREATE TRIGGER {TRIGGER} AFTER UPDATE OF workdir ON job "
               f"WHEN old.id <= (SELECT CAST(value AS INTEGER) FROM meta WHERE key = '{CURSOR}') BEGIN "
               f"INSERT INTO {TABLE}({TABLE}, rowid, workdir) VALUES ('delete', old.id, old.workdir); "
               f"INSERT INTO {TABLE}(rowid, workdir) VALUES (new.id, new.workdir); END")
MIN_CHARS = 3
"""Trigrams cannot find a shorter substring: those filters scan."""
PROBE_LIMIT = 5_000
"""A substring with more matches than this is found faster by walking the jobs in order and stopping at the page."""
STEP = 5_000
"""Jobs indexed per :func:`catch_up` call (a short write transaction)."""
_capable: Dict[str, bool] = {}


def capable(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has FTS5 with the trigram tokenizer (asked once per SQLite version)."""
    version = sqlite3.sqlite_version
    if version not in _capable:
        try:
            conn.execute("CREATE VIRTUAL TABLE temp._balsam_trigram_probe USING fts5(x, tokenize='trigram case_sensitive 1')")
            conn.execute("DROP TABLE temp._balsam_trigram_probe")
            _capable[version] = True
        except sqlite3.OperationalError:
            _capable[version] = False
    return _capable[version]


def _state(conn: sqlite3.Connection) -> Tuple[bool, bool, int]:
    """(the index table exists, its trigger exists, the cursor: -1 stale, 0 nothing indexed yet)."""
    rows = conn.execute("SELECT type FROM sqlite_master WHERE name IN (?, ?)", (TABLE, TRIGGER)).fetchall()
    cursor = conn.execute("SELECT value FROM meta WHERE key = ?", (CURSOR,)).fetchone()
    return any(r[0] == "table" for r in rows), any(r[0] == "trigger" for r in rows), int(cursor[0]) if cursor else -1


def _set_cursor(conn: sqlite3.Connection, value: int) -> None:
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (CURSOR, str(value)))


def install(conn: sqlite3.Connection) -> bool:
    """Create the (empty) index and its trigger inside the caller's write transaction; :func:`catch_up` fills it.
    False (nothing done) where this SQLite lacks FTS5 trigrams."""
    if not capable(conn):
        return False
    table, trigger, _ = _state(conn)
    if not table:
        conn.execute(f"CREATE VIRTUAL TABLE {TABLE} USING fts5(workdir, content='job', content_rowid='id', "
                     "tokenize='trigram case_sensitive 1', detail='none')")
    else:
        conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('delete-all')")
    _set_cursor(conn, 0)
    if not trigger:
        conn.execute(TRIGGER_SQL)
    return True


def reset(conn: sqlite3.Connection) -> None:
    """Index again from the first job (job ids were rewritten), inside the caller's write transaction."""
    if _state(conn)[0] and capable(conn):
        conn.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('delete-all')")
        _set_cursor(conn, 0)


def catch_up(conn: sqlite3.Connection, step: int = STEP) -> int:
    """Index up to ``step`` jobs past the cursor, inside the caller's write transaction; how many."""
    table, trigger, cursor = _state(conn)
    if not (table and trigger) or cursor < 0 or not capable(conn):
        return 0
    rows = conn.execute("SELECT id, workdir FROM job WHERE id > ? ORDER BY id LIMIT ?", (cursor, step)).fetchall()
    if rows:
        conn.executemany(f"INSERT INTO {TABLE}(rowid, workdir) VALUES (?, ?)", rows)
        _set_cursor(conn, int(rows[-1][0]))
    return len(rows)


def pending(conn: sqlite3.Connection) -> bool:
    """Whether jobs past the cursor wait for :func:`catch_up` (a read)."""
    table, trigger, cursor = _state(conn)
    if not (table and trigger) or cursor < 0 or not capable(conn):
        return False
    return conn.execute("SELECT 1 FROM job WHERE id > ? LIMIT 1", (cursor,)).fetchone() is not None


def needs_reconcile(conn: sqlite3.Connection) -> bool:
    """Whether :func:`reconcile` has work to do (a read, at every open)."""
    table, trigger, cursor = _state(conn)
    if not table:
        return False
    return trigger if not capable(conn) else (not trigger or cursor < 0)


def reconcile(conn: sqlite3.Connection) -> Optional[str]:
    """Make job writes work and the index trustworthy, inside the caller's write transaction: "dropped" (this
    SQLite cannot keep it: the trigger goes, the index is marked stale), "reset" (this one can: trigger back,
    index emptied, to be filled again), or None."""
    table, trigger, cursor = _state(conn)
    if not table:
        return None
    if not capable(conn):
        if not trigger:
            return None
        conn.execute(f"DROP TRIGGER {TRIGGER}")
        _set_cursor(conn, -1)
        return "dropped"
    if trigger and cursor >= 0:
        return None
    install(conn)
    return "reset"


def _trigrams(value: str) -> str:
    """An FTS5 query for the jobs holding the trigrams of ``value`` that cover it (each third one, and the last)."""
    starts = sorted({*range(0, len(value) - 2, 3), len(value) - 3})
    return " AND ".join('"' + value[i:i + 3].replace('"', '""') + '"' for i in starts)


def contains_clause(conn: Optional[sqlite3.Connection], value: str) -> Optional[Tuple[str, List[object]]]:
    """The WHERE clause of ``workdir__contains=value`` through the index, or None to scan (no index, a substring
    too short for trigrams, or one so common that walking the jobs in order finds a page sooner). A NUL, which FTS5
    cannot take in a query, is scanned for too."""
    if conn is None or len(value) < MIN_CHARS or "\x00" in value:
        return None
    table, trigger, cursor = _state(conn)
    if not (table and trigger) or cursor <= 0 or not capable(conn):
        return None
    query = _trigrams(value)
    hits = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM {TABLE} WHERE {TABLE} MATCH ? LIMIT {PROBE_LIMIT})", (query,)).fetchone()[0]
    if hits >= PROBE_LIMIT:
        return None
    # Indexed jobs through the index, the few created since by their ids; instr keeps the exact matches.
    return (f"id IN (SELECT rowid FROM {TABLE} WHERE {TABLE} MATCH ? UNION ALL SELECT id FROM job WHERE id > ?) "
            "AND instr(workdir, ?) > 0", [query, cursor, value])
