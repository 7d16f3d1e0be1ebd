"""Rebuilding a damaged site DB from what can still be read (``balsam db recover``).

Two ways, the better first:

* SQLite's own ``.recover`` (the ``sqlite3`` command-line shell, when it is installed): it reads every page it
  can, including rows of damaged b-trees that a query cannot reach;
* otherwise a row-by-row salvage in Python: every table of the current schema is copied from the old file in
  rowid order, in small batches; a batch that fails is retried row by row, and an unreadable stretch is
  skipped by probing ever further ahead. Rows of the derived indexes (``job_tag``, ``job_parent``) are rebuilt
  from the jobs afterwards (the same repairs as ``balsam db check --fix``).

Either way the result goes to a new file, its derived rows rebuilt, that must pass SQLite's integrity check before it
replaces the site DB (:mod:`balsam.db.swap`: a crash during the swap leaves one whole site DB); the old file is kept
beside it (``site.db.corrupt-<time>``), never deleted.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from balsam.db import ids, maintenance, search, swap
from balsam.db.connection import apply_migrations
from balsam.db.maintenance import Problem
from balsam.exceptions import StoreError

BATCH = 500
DERIVED = ("job_tag", "job_parent")
"""Tables rebuilt from the jobs rather than copied (they mirror job.tags and job.parent_ids)."""


@dataclass
class Recovery:
    """What a recovery did (or, for a dry run, would do)."""

    method: str
    counts: Dict[str, int] = field(default_factory=dict)
    lost: Dict[str, int] = field(default_factory=dict)
    new_path: Optional[Path] = None
    kept_path: Optional[Path] = None
    rebuilt: List[Problem] = field(default_factory=list)
    """Derived rows rebuilt in the new DB before it took the site DB's place (as 'balsam db check --fix' reports them)."""

    def summary(self) -> str:
        """One line: the rows recovered per table."""
        parts = [f"{n} {table}" for table, n in sorted(self.counts.items()) if n and table not in DERIVED]
        return ", ".join(parts) or "no rows"


def sqlite_cli() -> Optional[str]:
    """The sqlite3 shell, if installed and new enough to have ``.recover``."""
    return shutil.which("sqlite3")


def _old_connection(path: Path) -> sqlite3.Connection:
    # Read-only and without WAL recovery side effects on the damaged file.
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def _new_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def _tables(conn: sqlite3.Connection) -> List[Tuple[str, List[str], bool]]:
    """(name, columns, has rowid) of the new file's tables."""
    out = []
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"):
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
        out.append((str(name), cols, "WITHOUT ROWID" not in str(sql).upper()))
    return out


def _old_columns(old: sqlite3.Connection, table: str) -> Optional[List[str]]:
    try:
        cols = [str(r[1]) for r in old.execute(f"PRAGMA table_info({table})")]
        return cols or None
    except sqlite3.DatabaseError:
        return None


def _rows_by_rowid(old: sqlite3.Connection, table: str, cols: List[str], lost: Dict[str, int]) -> Iterator[Tuple[object, ...]]:
    """Every readable row of a rowid table, in rowid order, skipping unreadable stretches."""
    select = f"SELECT rowid, {', '.join(cols)} FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?"
    last = -(2 ** 63)
    while True:
        try:
            batch = old.execute(select, (last, BATCH)).fetchall()
        except sqlite3.DatabaseError:
            batch = []
            try:
                while len(batch) < BATCH:  # one row at a time up to the damage
                    row = old.execute(select, (last if not batch else batch[-1][0], 1)).fetchone()
                    if row is None:
                        break
                    batch.append(row)
            except sqlite3.DatabaseError:
                pass
            if not batch:
                nxt = _skip(old, table, last)
                if nxt is None:
                    return
                lost[table] = lost.get(table, 0) + 1  # at least one stretch lost
                last = nxt - 1
                continue
        if not batch:
            return
        for row in batch:
            yield tuple(row[1:])
        last = int(batch[-1][0])


def _skip(old: sqlite3.Connection, table: str, last: int) -> Optional[int]:
    """The next readable rowid after an unreadable one, probing ever further ahead; None past the end."""
    jump = 1
    while jump < 2 ** 62 and last + jump < 2 ** 63 - 1:
        try:
            row = old.execute(f"SELECT rowid FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT 1", (last + jump,)).fetchone()
            return None if row is None else int(row[0])
        except sqlite3.DatabaseError:
            jump *= 4
    return None


def _all_rows(old: sqlite3.Connection, table: str, cols: List[str], lost: Dict[str, int]) -> Iterator[Tuple[object, ...]]:
    try:
        yield from old.execute(f"SELECT {', '.join(cols)} FROM {table}")
    except sqlite3.DatabaseError:
        lost[table] = lost.get(table, 0) + 1


def _restore_identity(new: sqlite3.Connection, site_root: Path) -> None:
    """The site row and the id counters, from ``meta`` when the site table was lost (ids carry the site id)."""
    meta = dict(new.execute("SELECT key, value FROM meta").fetchall())
    site_id = int(meta["site_id"]) if str(meta.get("site_id", "")).isdigit() else 0
    if site_id and new.execute("SELECT count(*) FROM site").fetchone()[0] == 0 and meta.get("site_name"):
        created = float(meta.get("created") or time.time())
        new.execute("INSERT INTO site(id, name, path, uuid, creation_date, last_refresh) VALUES (?,?,?,?,?,?)",
                    (site_id, meta["site_name"], str(site_root), meta.get("uuid", ""), created, time.time()))
    if site_id:
        ids.seed_sequences(new, site_id)


def salvage(old_path: Path, new_path: Optional[Path]) -> Recovery:
    """Copy what can be read from ``old_path`` into a new DB of the current schema at ``new_path`` (None: only
    count, for ``db check``)."""
    target = new_path if new_path is not None else Path(":memory:")
    new = _new_connection(target) if new_path is not None else sqlite3.connect(":memory:", isolation_level=None)
    result = Recovery("python")
    try:
        apply_migrations(new)
        try:
            old = _old_connection(old_path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{old_path}: cannot be opened at all ({exc}); restore a backup") from None
        try:
            new.execute("BEGIN")
            for table, cols, has_rowid in _tables(new):
                if table in DERIVED or table == "migration" or table.startswith(search.TABLE):
                    continue  # derived (the workdir index is filled again from the jobs)
                old_cols = _old_columns(old, table)
                if old_cols is None:
                    result.lost[table] = result.lost.get(table, 0) + 1
                    continue
                common = [c for c in cols if c in old_cols]
                rows = _rows_by_rowid(old, table, common, result.lost) if has_rowid else _all_rows(old, table, common, result.lost)
                insert = f"INSERT OR IGNORE INTO {table}({', '.join(common)}) VALUES ({', '.join('?' * len(common))})"
                if table in ("meta", "site", "migration"):
                    new.execute(f"DELETE FROM {table}")  # the old file's identity, not the fresh schema's defaults
                n = 0
                for row in rows:
                    n += new.execute(insert, row).rowcount
                result.counts[table] = n
            _restore_identity(new, old_path.parent.parent)
            new.execute("COMMIT")
        finally:
            old.close()
    finally:
        new.close()
    return result


def recover_with_cli(cli: str, old_path: Path, new_path: Path, timeout_s: float = 3600) -> Recovery:
    """SQLite's ``.recover`` piped into a new file."""
    dump = subprocess.run([cli, str(old_path), ".recover"], capture_output=True, text=True, timeout=timeout_s)
    if dump.returncode != 0 or "COMMIT" not in dump.stdout:
        raise StoreError(f"sqlite3 .recover failed: {(dump.stderr.strip() or 'no output').splitlines()[-1]}")
    load = subprocess.run([cli, str(new_path)], input=dump.stdout, capture_output=True, text=True, timeout=timeout_s)
    if load.returncode != 0:
        raise StoreError(f"loading the recovered rows failed: {(load.stderr.strip() or 'no output').splitlines()[-1]}")
    conn = sqlite3.connect(str(new_path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        result = Recovery("sqlite3 .recover")
        for table, _cols, _rowid in _tables(conn):
            if table != "lost_and_found" and not table.startswith(search.TABLE):
                result.counts[table] = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()
    return result


def recover(db_path: Path, *, use_cli: Optional[bool] = None) -> Recovery:
    """Rebuild the site DB at ``db_path`` into a new file, check it, keep the old one beside it and put the new
    one in its place. ``use_cli``: None uses the sqlite3 shell when installed; False forces the Python salvage.
    The caller makes sure nothing has the DB open (the agent is stopped)."""
    db_path = Path(db_path)
    swap.finish(db_path)  # a recovery killed as it swapped its rebuilt DB in: that one is the site's DB now
    swap.drop_unfinished(db_path)  # rebuilt files of recoveries killed before their swap began
    new_path, kept = swap.names(db_path, time.strftime("%Y%m%d-%H%M%S"))
    cli = sqlite_cli() if use_cli is not False else None
    old_version = 0
    try:
        old = _old_connection(db_path)
        try:
            old_version = int(old.execute("PRAGMA user_version").fetchone()[0])
        finally:
            old.close()
    except sqlite3.DatabaseError:
        pass
    try:
        result = recover_with_cli(cli, db_path, new_path) if cli else salvage(db_path, new_path)
    except (StoreError, subprocess.TimeoutExpired) as exc:
        if cli is None:
            raise
        Path(new_path).unlink(missing_ok=True)
        result = salvage(db_path, new_path)
        result.method = f"python salvage, after {exc}"
    conn = sqlite3.connect(str(new_path), isolation_level=None)
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            search.reset(conn)  # the workdir index starts over from the recovered jobs
            conn.execute("COMMIT")
        except sqlite3.DatabaseError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("UPDATE meta SET value = '-1' WHERE key = ?", (search.CURSOR,))  # stale: rebuilt at the next open
        try:  # the derived rows (tag index, parent links) too, before it is the site's DB: a kill after the swap
            conn.execute("BEGIN IMMEDIATE")  # left a DB whose tag filters missed jobs and whose children waited for ever
            result.rebuilt = maintenance.fix(conn)
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"the rebuilt DB {new_path} could not be completed ({exc}); the site DB is unchanged") from None
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if not version and old_version:
            conn.execute(f"PRAGMA user_version={int(old_version)}")  # .recover keeps the rows, not the header
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    if problems != ["ok"]:
        raise StoreError(f"the rebuilt DB {new_path} fails its integrity check ({'; '.join(problems)}); the site DB is unchanged")
    swap.swap_in(db_path, new_path, kept)
    result.new_path, result.kept_path = db_path, kept
    return result
