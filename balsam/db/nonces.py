"""The replay memory shared by the site agent's API server processes: request nonces seen within the skew window.

A site agent may serve its /v1 API from several processes on one port (``api.workers``; the kernel spreads the
connections over them). A signed request is refused when its nonce was seen before, and that must hold whichever
process a replay reaches: so the processes record nonces in one table with a unique key, in a small SQLite file
of their own next to the site DB (``.balsam/nonces.db``), never in the site DB itself, whose writer lock a group
commit holds for milliseconds while a nonce check must not wait behind it. Each check is one ``INSERT`` under a
blocking ``flock`` (waiting writers queue in the kernel, not in SQLite's sleeping busy handler) and is refused by
the unique key when the nonce is there already. Rows older than twice the window (no request signed that long
ago is accepted any more) are deleted a few thousand at a time as new ones arrive. The file outlives the agent,
so a replay is refused across an agent restart as well.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Optional

from balsam.db import lockwait

NONCES_FILE = "nonces.db"
PRUNE_EVERY = 1000
"""Nonces recorded by one process between two deletions of expired rows."""
PRUNE_ROWS = 5000
"""Most expired rows one deletion removes (the oldest ones: rows are appended in time order)."""


class SharedNonces:
    """Nonces seen by any of the processes that open ``path``; :meth:`add` is False for a nonce seen before.

    The same interface as :class:`balsam.http.auth.NonceCache` (the single-process server's memory)."""

    def __init__(self, path: Path, window_s: float) -> None:
        self.path = Path(path)
        self.window_s = window_s
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._local = threading.local()
        self._added = 0

    def _conn(self) -> sqlite3.Connection:
        conn: Optional[sqlite3.Connection] = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", 0) != os.getpid():
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA busy_timeout=30000")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")  # a nonce lost in a power cut only matters for a request that old
            conn.execute("CREATE TABLE IF NOT EXISTS nonce (id INTEGER PRIMARY KEY, nonce TEXT NOT NULL UNIQUE, seen REAL NOT NULL)")
            self._local.conn, self._local.pid = conn, os.getpid()
            self._local.lock_fd = os.open(str(self._lock_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return conn

    def add(self, nonce: str, now: Optional[float] = None) -> bool:
        """Record ``nonce``; False if any process recorded it before (a replay)."""
        now = time.time() if now is None else now
        conn = self._conn()
        fd: int = self._local.lock_fd
        lockwait.lock(fd, self._lock_path, "the API's replay memory lock")
        try:
            try:
                conn.execute("INSERT INTO nonce(nonce, seen) VALUES (?, ?)", (nonce, now))
            except sqlite3.IntegrityError:
                return False
            self._added += 1
            if self._added % PRUNE_EVERY == 0:
                conn.execute("DELETE FROM nonce WHERE id IN (SELECT id FROM nonce ORDER BY id LIMIT ?) AND seen < ?",
                             (PRUNE_ROWS, now - 2 * self.window_s))
            return True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close this thread's connection (the others close with their threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            os.close(self._local.lock_fd)
            self._local.conn = None


__all__ = ["NONCES_FILE", "SharedNonces"]
