"""The ``balsam ui`` sessions that were logged out, kept in a small file under ``$BALSAM_HOME/ui/`` so that a
restarted ``balsam ui`` (same BALSAM_UI_TOKEN) refuses them too.

A session token is signed with a key derived from BALSAM_UI_TOKEN, so a restart with the same token accepts the
tokens signed before it (open dashboards reconnect). A logged-out token must not come back that way: its nonce
(which names the session and its login time, and is no credential without the signature) is written here at
logout and read at start. The file:

- is one per BALSAM_UI_TOKEN (named by a digest of its session key, which says nothing about the token), JSON,
  readable only by its owner, replaced atomically (a new file written, synced and renamed over the old one), and
  changed under a lock, so two ``balsam ui`` of the same user lose none of each other's logouts; each also sees
  the other's (a changed file is read again);
- is pruned of sessions past :data:`balsam.http.ui.SESSION_MAX_S` after their login (refused by their login
  time alone); past :data:`MAX_ENDED` logouts within that time, the oldest ones give way to a cut-off: every
  session logged in before the newest of them is refused (a few live sessions may have to log in again; no
  ended one comes back);
- when it cannot be read as written (damaged, or not JSON), is replaced by one that refuses every session logged
  in before that moment (everyone logs in again), never ignored.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

logger = logging.getLogger("balsam.http.ui")

MAX_ENDED = 10_000
"""The most logged-out sessions the file keeps (an entry is ~60 bytes): past this, a login-time cut-off."""

FORMAT = 1


def login_time(nonce: str) -> float:
    """The login time a session nonce (``<hex seconds>-<random>``) carries; -inf if it carries none."""
    try:
        return float(int(nonce.partition("-")[0], 16))
    except ValueError:
        return -math.inf


class EndedSessions:
    """The logged-out sessions of one BALSAM_UI_TOKEN, in memory and in ``path``.

    ``max_age_s``: how long after its login a session is refused anyway (entries older are dropped). Nothing is
    read until :meth:`load`.
    """

    def __init__(self, path: Path, max_age_s: float, clock: Callable[[], float]) -> None:
        self.path = path
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._ended: Dict[str, float] = {}  # nonce -> when it was logged out
        self._not_before = -math.inf
        """Sessions logged in before this are refused (a damaged file, or past MAX_ENDED)."""
        self._seen: Optional[Tuple[int, int, int]] = None  # the file's (inode, size, mtime) when last read
        self._unreadable = False

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def load(self) -> None:
        """Read the file (once at start; later reads happen when it changes). A damaged file is replaced by one
        that refuses every session logged in before now, and logged as such."""
        with self._lock:
            self._read_if_changed(force=True)

    def refuses(self, nonce: str) -> bool:
        """Whether the session ``nonce`` was logged out (here, by an earlier run, or by another ``balsam ui`` of
        this token), or logged in before a cut-off."""
        with self._lock:
            self._read_if_changed()
            return nonce in self._ended or login_time(nonce) < self._not_before

    def login_not_before(self) -> float:
        """The earliest login time a new session may carry and still be taken (-inf when there is no cut-off)."""
        with self._lock:
            self._read_if_changed()
            return self._not_before

    def end(self, nonce: str) -> None:
        """Record that the session ``nonce`` logged out, in memory at once and then in the file; OSError when the
        file cannot be written (the session is still refused by this process)."""
        now = self.clock()
        with self._lock:
            self._ended[nonce] = now
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(str(self._lock_path), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._read_if_changed()  # another balsam ui's logouts since this one last read
                self._ended[nonce] = now
                self._prune(now)
                self._write()
            finally:
                os.close(fd)  # releases the lock

    # ------------------------------------------------------------------ pieces (under self._lock)
    def _stat(self) -> Optional[Tuple[int, int, int]]:
        """The file's (inode, size, mtime); None when there is none; OSError when it cannot be looked at."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read_if_changed(self, force: bool = False) -> None:
        seen: Optional[Tuple[int, int, int]] = None
        try:
            seen = self._stat()
            if seen == self._seen and not force:
                return
            if seen is None:
                self._seen = None
                return
            ended, not_before = _parse(self.path.read_bytes())
        except (OSError, ValueError) as e:
            # Once per damaged version of the file (or once, when it cannot even be looked at): a cut-off moved on
            # at every look would refuse the sessions logged in since.
            if seen is not None and seen != self._seen or seen is None and not self._unreadable:
                self._unreadable = seen is None
                self._seen = seen
                self._damaged(str(e))
            return
        # Merge, never forget: an entry this process wrote stays refused even if another wrote without it.
        self._ended.update(ended)
        self._not_before = max(self._not_before, not_before)
        self._seen = seen

    def _damaged(self, why: str) -> None:
        """Refuse every session logged in up to this second, and write a good file saying so. (A login time is in whole
        seconds, so a session of this same second may be from before the damage; sessions logged in from now on carry
        the cut-off as their login time: :meth:`login_not_before`.)"""
        now = float(math.floor(self.clock())) + 1.0
        if now > self._not_before:
            logger.warning("%s could not be read (%s): every balsam ui session logged in before now must log in again",
                           self.path, why)
        self._not_before = max(self._not_before, now)
        try:
            self._write()
        except OSError as e:
            logger.warning("%s could not be replaced: %s", self.path, e)

    def _prune(self, now: float) -> None:
        for nonce in [n for n in self._ended if now - login_time(n) > self.max_age_s]:
            del self._ended[nonce]
        if len(self._ended) > MAX_ENDED:
            by_login = sorted(self._ended, key=login_time)
            dropped = by_login[: len(self._ended) - MAX_ENDED]
            self._not_before = max(self._not_before, login_time(dropped[-1]) + 1.0)
            for nonce in dropped:
                del self._ended[nonce]

    def _write(self) -> None:
        payload = {"format": FORMAT, "not_before": self._not_before if math.isfinite(self._not_before) else None,
                   "ended": self._ended}
        data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(str(self.path.parent), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._seen = self._stat()


def _parse(data: bytes) -> Tuple[Dict[str, float], float]:
    """The entries and cut-off of the file's bytes; ValueError when they are not what :meth:`EndedSessions._write`
    writes."""
    payload: Any = json.loads(data)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("ended"), dict):
        raise ValueError("not a file of ended sessions")
    not_before = payload.get("not_before")
    if not_before is not None and (not isinstance(not_before, (int, float)) or not math.isfinite(not_before)):
        raise ValueError("a bad not_before")
    ended: Dict[str, float] = {}
    for nonce, when in payload["ended"].items():
        if not isinstance(when, (int, float)) or isinstance(when, bool) or not math.isfinite(login_time(nonce)):
            raise ValueError(f"a bad entry {nonce[:40]!r}")
        ended[nonce] = float(when)
    return ended, -math.inf if not_before is None else float(not_before)


__all__ = ["EndedSessions", "MAX_ENDED", "login_time"]
