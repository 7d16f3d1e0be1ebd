"""Keeping a site DB healthy: integrity and consistency checks (with repairs), online backups, compaction,
and schema status for upgrades.

The consistency checks cover what the store keeps twice for speed: ``job_tag`` mirrors ``job.tags``,
``job_parent`` mirrors ``job.parent_ids``, and a job's ``session_id`` must name a live session row. Events
and transfer items must belong to a job. Everything :func:`repair` does happens in one write transaction.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from balsam.db import lockwait
from balsam.db.connection import Store
from balsam.db.schema import CURRENT_VERSION, MIGRATIONS
from balsam.exceptions import StoreError


@dataclass
class Problem:
    """One kind of inconsistency found by :func:`check`."""

    name: str
    count: int
    description: str
    fixable: bool = True

    def __str__(self) -> str:
        return f"{self.name}: {self.count} {self.description}"


# name, description, count SQL, repair SQL (None: report only). Rows with malformed JSON are left to the
# "malformed JSON" check rather than failing the JSON-walking queries.
_TAGS = "job.tags != '{}' AND json_valid(job.tags)"
_PARENTS = "job.parent_ids != '[]' AND json_valid(job.parent_ids)"
CHECKS: List[Tuple[str, str, str, Optional[str]]] = [
    (
        "missing tag index rows", "job tags missing from the job_tag index (tag filters miss these jobs)",
        f"SELECT count(*) FROM job, json_each(job.tags) t WHERE {_TAGS} AND NOT EXISTS "
        "(SELECT 1 FROM job_tag x WHERE x.key = t.key AND x.value = t.value AND x.job_id = job.id)",
        f"INSERT OR IGNORE INTO job_tag(key, value, job_id) SELECT t.key, t.value, job.id FROM job, json_each(job.tags) t WHERE {_TAGS}",
    ),
    (
        "stale tag index rows", "job_tag rows that no job's tags hold (tag filters find jobs wrongly)",
        "SELECT count(*) FROM job_tag x WHERE NOT EXISTS (SELECT 1 FROM job, json_each(job.tags) t WHERE job.id = x.job_id "
        f"AND {_TAGS} AND t.key = x.key AND t.value = x.value)",
        "DELETE FROM job_tag WHERE NOT EXISTS (SELECT 1 FROM job, json_each(job.tags) t WHERE job.id = job_tag.job_id "
        f"AND {_TAGS} AND t.key = job_tag.key AND t.value = job_tag.value)",
    ),
    (
        "missing parent links", "parent_ids entries missing from job_parent (children would not be released)",
        f"SELECT count(*) FROM job, json_each(job.parent_ids) p WHERE {_PARENTS} AND NOT EXISTS "
        "(SELECT 1 FROM job_parent x WHERE x.parent_id = p.value AND x.child_id = job.id)",
        "INSERT OR IGNORE INTO job_parent(parent_id, child_id) SELECT p.value, job.id FROM job, json_each(job.parent_ids) p "
        f"WHERE {_PARENTS}",
    ),
    (
        "stale parent links", "job_parent rows that no child's parent_ids hold",
        "SELECT count(*) FROM job_parent x WHERE NOT EXISTS (SELECT 1 FROM job, json_each(job.parent_ids) p "
        f"WHERE job.id = x.child_id AND {_PARENTS} AND p.value = x.parent_id)",
        "DELETE FROM job_parent WHERE NOT EXISTS (SELECT 1 FROM job, json_each(job.parent_ids) p "
        f"WHERE job.id = job_parent.child_id AND {_PARENTS} AND p.value = job_parent.parent_id)",
    ),
    (
        "dangling session locks", "jobs locked by a session that no longer exists (no launcher can take them)",
        "SELECT count(*) FROM job WHERE session_id IS NOT NULL AND session_id NOT IN (SELECT id FROM session)",
        "UPDATE job SET session_id = NULL WHERE session_id IS NOT NULL AND session_id NOT IN (SELECT id FROM session)",
    ),
    (
        "orphan events", "events of jobs that no longer exist",
        "SELECT count(*) FROM event WHERE job_id NOT IN (SELECT id FROM job)",
        "DELETE FROM event WHERE job_id NOT IN (SELECT id FROM job)",
    ),
    (
        "orphan transfer items", "transfer items of jobs that no longer exist",
        "SELECT count(*) FROM transfer_item WHERE job_id NOT IN (SELECT id FROM job)",
        "DELETE FROM transfer_item WHERE job_id NOT IN (SELECT id FROM job)",
    ),
    (
        "jobs of missing apps", "jobs whose app no longer exists (they cannot run; delete them with 'balsam job rm')",
        "SELECT count(*) FROM job WHERE app_id NOT IN (SELECT id FROM app)",
        None,
    ),
    (
        "malformed JSON", "jobs whose tags, parameters, data or parent_ids are not valid JSON",
        "SELECT count(*) FROM job WHERE NOT (json_valid(tags) AND json_valid(parameters) AND json_valid(data) "
        "AND json_valid(parent_ids) AND json_valid(launch_params))",
        None,
    ),
]


def integrity_errors(conn: sqlite3.Connection, limit: int = 20) -> List[str]:
    """SQLite's own ``PRAGMA integrity_check`` messages (empty when the file is sound)."""
    rows = [str(r[0]) for r in conn.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()]
    return [] if rows == ["ok"] else rows


def quick_check(conn: sqlite3.Connection) -> str:
    """SQLite's ``PRAGMA quick_check(1)``: "ok", or the first problem found (faster than the full check)."""
    return str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])


def check(conn: sqlite3.Connection) -> List[Problem]:
    """Every problem found: SQLite integrity first, then the store's own consistency rules."""
    problems: List[Problem] = []
    errors = integrity_errors(conn)
    if errors:
        problems.append(Problem("integrity", len(errors), "SQLite integrity errors: " + "; ".join(errors[:3]) +
                                " (restore a backup, or try the sqlite3 '.recover' command)", fixable=False))
        return problems  # the consistency queries are meaningless on a damaged file
    for name, description, count_sql, fix_sql in CHECKS:
        n = int(conn.execute(count_sql).fetchone()[0])
        if n:
            problems.append(Problem(name, n, description, fixable=fix_sql is not None))
    return problems


def repair(store: Store) -> List[Problem]:
    """Fix every fixable problem in one transaction; returns what was fixed (with counts before the fix)."""
    with store.write() as conn:
        if integrity_errors(conn):
            raise StoreError(f"{store.db_path}: SQLite reports integrity errors; repairs would not be safe: restore a backup")
        return fix(conn)


def fix(conn: sqlite3.Connection) -> List[Problem]:
    """Fix every fixable problem inside the caller's write transaction (on a sound file); returns what was fixed."""
    fixed: List[Problem] = []
    for name, description, count_sql, fix_sql in CHECKS:
        if fix_sql is None:
            continue
        n = int(conn.execute(count_sql).fetchone()[0])
        if n:
            conn.execute(fix_sql)
            fixed.append(Problem(name, n, description))
    return fixed


def backup(store: Store, dest: Path, progress: Optional[Callable[[int, int], None]] = None) -> int:
    """Copy the site DB to ``dest`` with SQLite's online backup (consistent while writers run); returns bytes.

    The copy is written next to ``dest`` and renamed into place, so ``dest`` is never half-written.
    """
    dest = Path(dest)
    drop_dead_copies(dest.parent)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    # Made here, owner-only and new (not through a link): sqlite3.connect would create it with the umask's mode (0644),
    # readable by every user while the copy is written when dest is in a shared folder, and follow a link planted at
    # its name since the unlink above.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
    target = sqlite3.connect(str(tmp))
    try:
        # One step copies every page inside one read snapshot: in WAL mode writers go on meanwhile, and the
        # copy is the DB as of the step's start.
        store.conn.backup(target, pages=-1, progress=(lambda status, remaining, total: progress(total - remaining, total)) if progress else None)
        target.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
    except BaseException:
        target.close()
        tmp.unlink(missing_ok=True)
        raise
    target.close()
    os.replace(tmp, dest)
    return dest.stat().st_size


_COPY = re.compile(r"\.(.+)\.(\d+)\.tmp(-journal)?")
_SQLITE_HEADER = b"SQLite format 3\0"


def drop_dead_copies(folder: Path) -> List[Path]:
    """Remove the temporary copies (``.NAME.PID.tmp``, and their rollback journals) that backups into ``folder`` killed
    before their rename left, each as big as the DB: those whose process no longer runs, and that are SQLite files
    (or empty, killed as they began). Returns what was removed."""
    from balsam.db.sessions import process_alive

    removed: List[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _COPY.fullmatch(name)
        if m is None or process_alive(int(m.group(2)), None):
            continue
        path = folder / name
        try:
            with open(path, "rb") as f:
                head = f.read(len(_SQLITE_HEADER))
            if m.group(3) is None and head not in (b"", _SQLITE_HEADER):
                continue  # not a copy of ours
            if not path.is_symlink() and path.is_file():
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def db_size(store: Store) -> int:
    """Bytes used by the DB file and its WAL."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(str(store.db_path) + suffix).st_size
        except FileNotFoundError:
            pass
    return total


def vacuum(store: Store) -> Tuple[int, int]:
    """Compact the DB (VACUUM) while holding the writer lock; returns (bytes before, bytes after)."""
    conn = store.conn
    before = db_size(store)
    fd = os.open(str(store.lock_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        lockwait.lock(fd, store.lock_path)
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return before, db_size(store)


def schema_status(store: Store) -> Tuple[int, int, List[str]]:
    """(the DB's schema version, this code's version, names of migrations it would apply), read before
    opening the store migrates it (the home-host rule is checked first)."""
    store._check_host()
    if not store.db_path.exists():
        raise StoreError(f"{store.db_path}: no site DB here")
    conn = sqlite3.connect(f"file:{store.db_path}?mode=ro", uri=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{store.db_path}: not a Balsam site DB, or corrupt ({exc})") from None
    finally:
        conn.close()
    pending = [name for number, name, _ in MIGRATIONS if number > version]
    return version, CURRENT_VERSION, pending


__all__ = ["CHECKS", "Problem", "backup", "check", "db_size", "drop_dead_copies", "fix", "integrity_errors", "quick_check", "repair", "schema_status", "vacuum"]
