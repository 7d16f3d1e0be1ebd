"""The site store's connection: WAL, one writer at a time behind a file lock, and the home-host rule.

Rules (DESIGN.md section 3):
- Only processes on the site's home host open the DB. The host is recorded in ``.balsam/host`` (read before
  SQLite touches the file, so a foreign host never maps the WAL index) and in the ``meta`` table.
- Writers take a blocking ``flock`` on ``.balsam/db.lock`` and then ``BEGIN IMMEDIATE``: transactions
  that read and then write never fail with "database is locked", and waiting writers queue in the kernel
  instead of polling. Readers take no lock and never block writers.
- Each thread gets its own connection (and lock descriptor); a forked child opens fresh ones.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from balsam.db import doorbell, ids, lockwait, search, swap
from balsam.db.meta import read_meta, write_meta
from balsam.db.schema import CURRENT_VERSION, MIGRATIONS
from balsam.exceptions import ForeignHostError, SchemaError, StoreError, ValidationError

BUSY_TIMEOUT_MS = 60_000
_AFTER_COMMIT: Dict[int, List[Callable[[], None]]] = {}
_WRITES_FAILED: Dict[str, float] = {}
_DISK_ERRORS = (13, 10)  # SQLITE_FULL, SQLITE_IOERR
FULL_DISK_BYTES = 1 << 20
"""Free space under which a failed open is put down to a full disk."""


def _note_failure(db_path: Path, exc: BaseException) -> None:
    """Remember when this process last could not write ``db_path`` for lack of space or I/O."""
    if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) in _DISK_ERRORS or "disk is full" in str(exc) or "disk I/O" in str(exc)):
        _WRITES_FAILED[os.path.realpath(db_path)] = time.time()


def _open_failed(db_path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    """The error for a DB that cannot be opened: a full disk says so (SQLite cannot size the WAL index of a DB nobody
    has open, and calls it a 'disk I/O error'), anything else may be damage."""
    _note_failure(db_path, exc)
    if isinstance(exc, sqlite3.OperationalError) and (
            ((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF) in _DISK_ERRORS or "disk" in str(exc)):
        full = _full_disk(db_path)
        if full:
            return StoreError(f"{db_path}: cannot open the site DB: {full}")
        return StoreError(f"{db_path}: cannot open the site DB ({exc}): a full disk or a failing filesystem? Nothing was "
                          "changed; if it persists with free space, try 'balsam db check'")
    return StoreError(f"{db_path}: not a Balsam site DB, or corrupt ({exc}); try 'balsam db check'")


def _full_disk(db_path: Path) -> str:
    """What to say when the disk holding ``db_path`` is full (under 1 MiB free), else ""."""
    try:
        st = os.statvfs(db_path.parent)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= FULL_DISK_BYTES:
        return ""
    return (f"the disk holding it is full ({free // 1024} KiB free on {db_path.parent}); free some space and retry "
            "(nothing was changed)")


def _write_failed(db_path: Path, what: str, exc: sqlite3.OperationalError) -> StoreError:
    """The error for a write that could not start or commit: a full disk says so, in one line."""
    _note_failure(db_path, exc)
    full = _full_disk(db_path) if "full" in str(exc) or "disk" in str(exc) else ""
    return StoreError(f"{db_path}: {what}: {full or exc}")


def not_unicode(exc: UnicodeEncodeError) -> ValidationError:
    """The error for text SQLite cannot take (a lone surrogate: bytes that were not UTF-8, or a ``\\ud800`` escape in
    JSON): one message whichever door the text came in by."""
    text = exc.object if isinstance(exc.object, str) else repr(exc.object)
    return ValidationError(f"{text[:60]!r} is not valid Unicode text (bytes that are not UTF-8?): nothing was written")


def writes_failed_at(conn: sqlite3.Connection) -> float:
    """When this process last failed to write the DB behind ``conn`` (a full disk, an I/O error), 0 if never.

    Nobody's heartbeat could be written then either, so a lease's silence up to that time proves nothing
    (:func:`balsam.db.sessions.expire_sessions` counts its expiry from there)."""
    if not _WRITES_FAILED:
        return 0.0
    for _seq, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return _WRITES_FAILED.get(os.path.realpath(file), 0.0)
    return 0.0


def after_commit(conn: sqlite3.Connection, action: Callable[[], None]) -> None:
    """Run ``action`` once the write transaction on ``conn`` commits (at once outside one); never if it rolls
    back. For what must not happen unless the DB has the change: removing a journal that was just replayed."""
    if conn.in_transaction:
        _AFTER_COMMIT.setdefault(id(conn), []).append(action)
    else:
        action()
CHUNK = 5000
"""Largest number of bound values we pass in one statement (SQLite 3.32+ allows 32766)."""


def chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``seq`` of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def placeholders(n: int) -> str:
    """``?,?,...`` with ``n`` marks."""
    return ",".join("?" * n)


def apply_migrations(conn: sqlite3.Connection) -> List[str]:
    """Apply every migration newer than the DB's ``user_version`` in one transaction; returns their names.

    The caller holds the writer lock (or owns a DB nobody else can see yet).
    """
    applied: List[str] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, name, apply in MIGRATIONS:
            if number > version:
                apply(conn)
                conn.execute("INSERT INTO migration(version, name, applied) VALUES (?,?,?)", (number, name, time.time()))
                conn.execute(f"PRAGMA user_version={number}")
                applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite ends the transaction itself on some errors (a full disk)
            conn.execute("ROLLBACK")
        raise
    return applied


class _Local(threading.local):
    conn: Optional[sqlite3.Connection] = None
    lock_fd: Optional[int] = None
    pid: int = 0
    depth: int = 0


NEW_SUFFIX = ".new"
"""The name (after the DB's) a new site DB is made under before it is renamed into place (:meth:`Store.create`)."""


class Store:
    """One site's SQLite DB. Construction does no I/O; the first use opens and checks it."""

    def __init__(self, db_path: Path, lock_path: Path, host_path: Path, host: str) -> None:
        self.db_path = Path(db_path)
        self.lock_path = Path(lock_path)
        self.host_path = Path(host_path)
        self.host = host
        self._local = _Local()
        self._checked_pid = 0
        self._check_lock = threading.Lock()
        self._migrating = False
        self.read_only = ""
        """Why the site is read-only ("" when it is not): reads work, writes are refused saying so."""

    # ------------------------------------------------------------------ opening
    def _check_host(self) -> None:
        try:
            owner = self.host_path.read_text().strip()
        except FileNotFoundError:
            if not self.db_path.exists():
                raise StoreError(f"{self.db_path}: no site DB here") from None
            owner = ""
        except OSError as exc:
            raise StoreError(f"{self.host_path}: cannot read the site's home host: {exc.strerror}") from None
        if owner and owner != self.host:
            site = self.db_path.parent.parent
            raise ForeignHostError(
                f"site {site} belongs to host {owner!r} and this is {self.host!r}: SQLite must not be shared "
                f"across hosts. Run this on {owner}, or, if the site moved here for good, run "
                f"'balsam site rename-host' (from {site}) to make this host its home."
            )

    def _read_only_reason(self) -> str:
        """Why this process cannot write the DB (a read-only filesystem, no write permission), or ""."""
        for path in (self.db_path.parent, self.db_path):
            if path.exists() and not os.access(path, os.W_OK):
                return f"{path} is not writable"
        return ""

    def _connect(self) -> sqlite3.Connection:
        self.read_only = self._read_only_reason()
        if self.read_only:
            return self._connect_read_only()
        try:
            conn = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-32768")
            conn.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.DatabaseError as exc:
            raise _open_failed(self.db_path, exc) from None
        return conn

    def _connect_read_only(self) -> sqlite3.Connection:
        """Open a site that cannot be written: ``mode=ro`` needs WAL's shared-memory file to exist or be creatable;
        where neither is possible, ``immutable=1`` (no locking: nobody can write a read-only site anyway)."""
        last: Optional[Exception] = None
        for query in ("mode=ro", "immutable=1"):
            try:
                conn = sqlite3.connect(f"file:{self.db_path}?{query}", uri=True, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
                conn.execute("PRAGMA user_version").fetchone()
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.DatabaseError as exc:
                last = exc
        raise StoreError(f"{self.db_path}: the site is read-only ({self.read_only}) and cannot be opened for reading "
                         f"either ({last})") from None

    def _refuse_write(self) -> None:
        site = self.db_path.parent.parent
        raise StoreError(f"site {site} is read-only ({self.read_only}): reads work, but this change cannot be recorded; "
                         "make the site directory writable to change it")

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise _open_failed(self.db_path, exc) from None
        if version > CURRENT_VERSION:
            raise SchemaError(
                f"{self.db_path}: schema version {version} is newer than this Balsam understands ({CURRENT_VERSION}); "
                "upgrade Balsam to use this site"
            )
        if version == 0:
            raise StoreError(f"{self.db_path}: not a Balsam site DB (no schema); was it created by 'balsam site init'?")
        if version < CURRENT_VERSION and not self._migrating:
            # Never migrate on open: an older agent still running on this site would meet a schema it does not
            # know. Migration is explicit (DESIGN.md section 3; `balsam db migrate`, or the agent at start).
            raise SchemaError(
                f"{self.db_path}: schema version {version} is older than this Balsam's ({CURRENT_VERSION}): stop the "
                f"site's agent and run 'balsam db migrate --site {self.db_path.parent.parent}' (or start the agent, "
                "which migrates at start)"
            )
        if mode.lower() != "wal" and not self.read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        if not self.read_only and search.needs_reconcile(conn):
            with self.write() as c:
                search.reconcile(c)

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the site checked) on first use."""
        local = self._local
        pid = os.getpid()
        if local.conn is not None and local.pid == pid:
            return local.conn
        # A new thread, or a forked child that must not reuse its parent's connection or lock descriptor.
        local.conn, local.lock_fd, local.depth = None, None, 0
        self._check_host()
        swap.finish(self.db_path)  # a 'db recover' killed as it swapped its rebuilt DB in (one stat when none was)
        if not self.db_path.is_file():  # never sqlite3.connect a missing DB: it makes an empty one in its place
            raise StoreError(f"{self.db_path}: no site DB here (deleted or moved? restore it from a backup)")
        conn = self._connect()
        local.conn, local.pid = conn, pid
        try:
            with self._check_lock:
                if self._checked_pid != pid:
                    self._check_schema(conn)
                    self._checked_pid = pid
        except BaseException:
            conn.close()
            local.conn = None
            raise
        return conn

    # ------------------------------------------------------------------ transactions
    def _lock_fd(self) -> int:
        local = self._local
        if local.lock_fd is None:
            local.lock_fd = os.open(str(self.lock_path), os.O_RDWR | os.O_CREAT, 0o600)
        return local.lock_fd

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: the writer lock, ``BEGIN IMMEDIATE``, commit on success, rollback on error.

        Nested calls become savepoints of the enclosing transaction.
        """
        conn = self.conn
        if self.read_only:
            self._refuse_write()
        local = self._local
        if local.depth > 0:
            name = f"sp{local.depth}"
            conn.execute(f"SAVEPOINT {name}")
            local.depth += 1
            try:
                yield conn
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                local.depth -= 1
            return
        fd = self._lock_fd()
        lockwait.lock(fd, self.lock_path)
        local.depth = 1
        doorbell.take_noted()  # whatever an earlier, rolled-back transaction noted
        committed = False
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise _write_failed(self.db_path, "cannot start a write", exc) from None
            try:
                yield conn
            except BaseException as exc:
                _note_failure(self.db_path, exc)
                _AFTER_COMMIT.pop(id(conn), None)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, UnicodeEncodeError):  # text SQLite cannot take: a value that is not Unicode
                    raise not_unicode(exc) from None
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    _AFTER_COMMIT.pop(id(conn), None)
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise _write_failed(self.db_path, "commit failed", exc) from None
                committed = True
                for action in _AFTER_COMMIT.pop(id(conn), ()):
                    action()
        finally:
            local.depth = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
        topics = doorbell.take_noted()
        if committed and topics:
            doorbell.ring(self.db_path.parent, topics)  # wake who waits for this work (launchers, processing)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (several statements see one state of the DB). Takes no lock."""
        conn = self.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> List[Tuple[Any, ...]]:
        """Run one read statement and fetch all rows."""
        return self.conn.execute(sql, params).fetchall()

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap test for "anything new?"."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    # ------------------------------------------------------------------ meta and lifecycle
    def get_meta(self, key: str) -> Optional[str]:
        """The meta value under ``key`` (None if unset)."""
        return read_meta(self.conn, key)

    def set_meta(self, key: str, value: str) -> None:
        """Store a meta value in its own write transaction."""
        with self.write() as conn:
            write_meta(conn, key, value)

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> List[str]:
        """Apply pending migrations under the writer lock; returns their names.

        The only way a schema changes (``balsam db migrate`` and the site agent at start call it): every other
        open of an older DB is refused. The connection is opened before the lock is taken, since opening
        resets this thread's lock descriptor (a second descriptor would deadlock).
        """
        with self._check_lock:
            self._migrating = True
        try:
            conn = self.conn
        finally:
            with self._check_lock:
                self._migrating = False
        fd = self._lock_fd()
        lockwait.lock(fd, self.lock_path)
        try:
            return apply_migrations(conn)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def checkpoint(self) -> Tuple[int, int]:
        """SQLite's ``PASSIVE`` checkpoint on this thread's connection: copy what it can of the WAL back into the
        database file without waiting for (or blocking) readers and writers. (WAL pages, pages copied back)."""
        row = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[1]), int(row[2])

    def close(self) -> None:
        """Close this thread's connection and lock descriptor."""
        local = self._local
        if local.conn is not None and local.pid == os.getpid():
            local.conn.close()
        if local.lock_fd is not None and local.pid == os.getpid():
            os.close(local.lock_fd)
        local.conn = None
        local.lock_fd = None

    @classmethod
    def create(
        cls,
        db_path: Path,
        lock_path: Path,
        host_path: Path,
        host: str,
        *,
        site_id: int,
        name: str,
        uuid: str,
        path: str,
        site_fields: Optional[Dict[str, Any]] = None,
    ) -> "Store":
        """Create a new site DB (schema, meta, the site row) owned by ``host``.

        The DB is made whole under another name (:data:`NEW_SUFFIX`) and renamed into place: a creation killed half way
        (kill -9 of ``balsam site init``) leaves no site DB rather than one without its site row, which no command
        could use and which made the directory 'already a Balsam site'."""
        if db_path.exists():
            raise StoreError(f"{db_path}: a site DB already exists")
        db_path.parent.mkdir(parents=True, exist_ok=True)
        host_path.write_text(host + "\n")
        tmp = db_path.with_name(db_path.name + NEW_SUFFIX)
        for suffix in ("", "-wal", "-shm", "-journal"):  # what a creation killed before left
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            apply_migrations(conn)
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO meta(key, value) VALUES ('home_host', ?), ('site_id', ?), ('site_name', ?), ('uuid', ?), "
                         "('created', ?)", (host, str(site_id), name, uuid, repr(now)))
            fields = {k: json.dumps(v) for k, v in (site_fields or {}).items()}
            cols = ["id", "name", "path", "uuid", "creation_date", "last_refresh", *fields]
            conn.execute(
                f"INSERT INTO site({','.join(cols)}) VALUES ({placeholders(len(cols))})",
                (site_id, name, path, uuid, now, now, *fields.values()),
            )
            ids.seed_sequences(conn, site_id)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself: it is renamed without its WAL
        finally:
            conn.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, db_path)
        return cls(db_path, lock_path, host_path, host)
