"""A job's processes that left its process group are still cleaned up when the job ends.

Killing the job's process group (``launcher.kill_orphans``) misses a child that started a session of its own
(``setsid``) or daemonized (double fork). Two things find those, cheaply:

* the launcher is a **child subreaper** (``PR_SET_CHILD_SUBREAPER``): a process whose parent dies is adopted
  by its nearest subreaper ancestor instead of init, so everything a job leaves behind, in whatever session,
  becomes a child of the launcher, listed in ``/proc/self/task/<pid>/children``;
* every job carries ``BALSAM_JOB_ID`` and the launcher's nonce (``BALSAM_LAUNCHER_NONCE``) in its
  environment, which its descendants inherit: an adopted child whose ``/proc/<pid>/environ`` names this
  launcher and a job that has ended is that job's orphan, and is killed (with its own group).

A warm Python worker outlives the ``run()`` it served, so what a ``run()`` started stays the worker's child:
those are checked the same way when the job ends. A child that carries no marker (it cleared its
environment) is not attributed to any job and is left alone.
When the launcher itself dies, its watchdog does the same by a scan of the user's processes
(:func:`balsam.jobwatch.marked`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
from typing import Collection, Iterable, List, Optional, Tuple

from balsam.jobwatch import NONCE_ENV, environ, kill_process, marker

logger = logging.getLogger(__name__)

__all__ = ["NONCE_ENV", "become_subreaper", "children", "kill_adopted", "new_nonce"]
_PR_SET_CHILD_SUBREAPER = 36


def new_nonce() -> str:
    """A value naming one launcher's jobs (its pid and 64 random bits)."""
    return f"{os.getpid()}-{secrets.token_hex(8)}"


def become_subreaper(on: bool = True) -> bool:
    """Make this process adopt its descendants' orphans (Linux >= 3.4), or (``on=False``) stop; False where
    that is not possible."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def children(parent: Optional[int] = None) -> List[int]:
    """The children of this process (or of ``parent``) as /proc lists them for its main thread, which is where
    the kernel hands adopted orphans (the first live thread of the subreaper); empty where /proc does not list
    children, or the process is gone."""
    pid = os.getpid() if parent is None else parent
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :][:1] == b"Z"
    except (OSError, ValueError):
        return True


def kill_adopted(nonce: str, running: Collection[int], known: Collection[int], workers: Iterable[int] = ()
                 ) -> Tuple[List[int], bool]:
    """Kill this launcher's children, and those of the warm Python ``workers`` that just ran a job, that belong
    to a job no longer running (not in ``running``); ``known`` are children that are not orphans (jobs,
    workers, the watchdog). Returns the pids killed, and whether to look again (a child was caught between
    two programs, its environment unreadable for that instant)."""
    killed: List[int] = []
    again = False
    candidates = children()
    for worker in workers:  # what a run() left: the worker lives on, so its children are not adopted
        candidates.extend(children(worker))
    for pid in candidates:
        if pid in known:
            continue
        raw = environ(pid)
        if raw == b"":
            again = again or not _zombie(pid)  # a zombie has no environment any more, and needs no kill
            continue
        mark = marker(pid, raw)
        if mark is None or mark[0] != nonce or mark[1] in running:
            continue
        logger.info("job %s ended leaving process %d behind: killing it", mark[1], pid)
        kill_process(pid)
        killed.append(pid)
    return killed, again
