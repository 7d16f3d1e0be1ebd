"""Waiting for the site DB's writer lock, and saying who holds it when the wait is long.

Every writer on the home host takes a blocking ``flock`` on ``.balsam/db.lock`` (see :mod:`balsam.db.connection`).
A wait is normally milliseconds. A holder that stopped (SIGSTOP, Ctrl-Z, a debugger, a node swapping) holds it
for as long as it stays stopped, and every writer of the site then waits: the agent, the launchers, the CLI. The
wait itself stays in the kernel (no polling; the holder may resume at any moment and nothing is lost by
waiting), but a writer that has waited :data:`REPORT_AFTER_S` says so, every :data:`REPORT_EVERY_S` after,
naming the process that holds the lock (from ``/proc/locks`` on Linux), its command line, and whether it is
stopped, with what to do about it. The report goes to the ``balsam.db`` logger: the agent's and launchers' logs,
and a CLI command's stderr.

One reporter thread per process, started at the first wait that does not get the lock at once, watches every
thread's wait; a write that gets the lock at once costs one non-blocking ``flock`` call and nothing more.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

logger = logging.getLogger("balsam.db")

REPORT_AFTER_S = 5.0
"""A writer that has waited this long for the lock says who holds it."""
REPORT_EVERY_S = 30.0
"""And says it again this often while it still waits."""
WRITER_LOCK = "the site DB's writer lock"


@dataclass(frozen=True)
class Holder:
    """The process holding a lock: its pid, command line and whether it is stopped."""

    pid: int
    command: str
    stopped: bool

    def describe(self) -> str:
        what = f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"
        if self.stopped:
            return (f"{what}, which is stopped: resume it with 'kill -CONT {self.pid}', or end it ('kill {self.pid}'); "
                    "its unfinished write is then rolled back")
        return f"{what}, which is still running (a long write?)"


LOCKS_READS = 5
"""How many times :func:`holder` reads ``/proc/locks`` before it says nobody holds the lock (see there)."""


def holder(path: Path, locks: str = "/proc/locks") -> Optional[Holder]:
    """Who holds an exclusive ``flock`` on ``path``: read from ``/proc/locks`` (Linux); None where it cannot be told
    (another OS, a lock held on another host of a shared filesystem, or nobody holds it now).

    The kernel hands ``/proc/locks`` out a page (~4 KB, ~60 locks) per read and finds where the next page starts
    by counting entries again; a lock released meanwhile by any process of the machine shifts that count, and the
    entry at the page's edge is then never shown. On a busy machine the list is longer than a page (every SQLite
    connection holds a few locks) and changes all the time, so a holder that is there can be missed: the file is
    read again, up to :data:`LOCKS_READS` times, before nobody is said to hold the lock."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for _ in range(LOCKS_READS):
        try:
            with open(locks) as f:
                text = f.read()
        except OSError:
            return None
        found = _holder_in(text, st)
        if found is not None:
            return None if found <= 0 else Holder(found, _command(found), _stopped(found))
    return None


def _holder_in(text: str, st: os.stat_result) -> Optional[int]:
    """The pid holding an exclusive ``flock`` on the file of ``st`` in one read of ``/proc/locks`` (0 or less: a
    holder in another pid namespace), or None if that read does not show one."""
    # "3: FLOCK  ADVISORY  WRITE 12041 fe:00:2302930 0 EOF"; waiters' lines have "->" after the number.
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        if parts[5] != want and not _same_inode(parts[5], st.st_ino, st.st_dev):
            continue
        try:
            return int(parts[4])
        except ValueError:
            continue
    return None


def _same_inode(field: str, ino: int, dev: int) -> bool:
    """``/proc/locks`` writes the device as major:minor in hex; some kernels pad differently, so compare numbers."""
    try:
        major, minor, inode = field.split(":")
        return int(inode) == ino and int(major, 16) == os.major(dev) and int(minor, 16) == os.minor(dev)
    except ValueError:
        return False


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return ""
    text = " ".join(" ".join(a.decode(errors="replace") for a in argv if a).split())  # one line, even for -c scripts
    return text if len(text) <= 160 else text[:157] + "..."


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")  # stopped by a signal, or by a debugger


class _Wait:
    """One thread's wait for a lock."""

    __slots__ = ("path", "what", "started", "next_report", "reported")

    def __init__(self, path: Path, what: str, started: float) -> None:
        self.path = path
        self.what = what
        self.started = started
        self.next_report = started + REPORT_AFTER_S
        self.reported = False


class _Reporter:
    """The process's one watcher of long lock waits (a daemon thread, started at the first contended wait)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waits: Dict[int, _Wait] = {}
        self._next_id = 0
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def begin(self, path: Path, what: str) -> int:
        with self._cond:
            if self._thread is None or self._pid != os.getpid():  # the first wait, or a forked child's
                self._waits.clear()
                self._thread = threading.Thread(target=self._watch, name="balsam-lock-wait", daemon=True)
                self._pid = os.getpid()
                self._thread.start()
            self._next_id += 1
            self._waits[self._next_id] = _Wait(path, what, time.monotonic())
            self._cond.notify()
            return self._next_id

    def end(self, wait_id: int) -> None:
        with self._cond:
            wait = self._waits.pop(wait_id, None)
        if wait is not None and wait.reported:  # it was reported: say it is over
            logger.warning("got %s %s after %.0f s", wait.what, wait.path, time.monotonic() - wait.started)

    def longest(self) -> Optional[_Wait]:
        """This process's longest wait going on now, if any."""
        with self._cond:
            if not self._waits or self._pid != os.getpid():
                return None
            return min(self._waits.values(), key=lambda w: w.started)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._waits:
                    self._cond.wait()
                now = time.monotonic()
                due = [w for w in self._waits.values() if w.next_report <= now]
                for wait in due:
                    wait.next_report, wait.reported = now + REPORT_EVERY_S, True
                if not due:
                    self._cond.wait(timeout=max(0.05, min(w.next_report for w in self._waits.values()) - now))
            for wait in due:
                self._report(wait, now - wait.started)

    @staticmethod
    def _report(wait: _Wait, waited: float) -> None:
        who = holder(wait.path)
        by = who.describe() if who is not None else "another process (which one cannot be told here)"
        logger.warning("waiting %.0f s for %s %s, held by %s", waited, wait.what, wait.path, by)


_REPORTER = _Reporter()


def stalled() -> Optional[Dict[str, Any]]:
    """Whether this process's writes are stalled: its longest wait for a lock now, if it is past
    :data:`REPORT_AFTER_S` (what ``/v1/health`` tells a client on another host whose request timed out), as
    ``{"waiting_s", "lock", "holder_pid", "holder_stopped"}`` (no command line: health needs no credentials)."""
    wait = _REPORTER.longest()
    if wait is None:
        return None
    waited = time.monotonic() - wait.started
    if waited < REPORT_AFTER_S:
        return None
    who = holder(wait.path)
    return {"waiting_s": round(waited), "lock": wait.what, "holder_pid": who.pid if who else None,
            "holder_stopped": who.stopped if who else None}


def stall_message(stall: Dict[str, Any]) -> str:
    """What a client says of a stall that :func:`stalled` reported (pure)."""
    pid = stall.get("holder_pid")
    by = f"pid {pid} on the site's home host" if pid else "another process"
    text = f"its writes have waited {stall.get('waiting_s')} s for {stall.get('lock') or WRITER_LOCK}, held by {by}"
    if pid and stall.get("holder_stopped"):
        text += f", which is stopped ('kill -CONT {pid}' there resumes it)"
    return text


def lock(fd: int, path: Path, what: str = WRITER_LOCK) -> None:
    """Take an exclusive ``flock`` on ``fd`` (the lock file ``path``, ``what`` says which lock it is), waiting as
    long as it takes; a long wait is reported (see the module doc). An interrupt while waiting (Ctrl-C) ends the
    wait with nothing taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        wait_id = _REPORTER.begin(path, what)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            _REPORTER.end(wait_id)
