"""Doorbells: a transaction that makes work for a waiting process on this host wakes it at once.

A launcher waiting for runnable jobs, or the site agent's processing waiting for jobs to pre- or post-process,
would otherwise find new work only when its poll comes round (tens of milliseconds for a launcher, half a second
for processing): that delay is most of a job's claim-to-start time, and the start of every flood.

So a waiter opens a :class:`Doorbell` for a topic: a FIFO ``<state folder>/doorbell/<topic>.<pid>.<n>`` that it
holds open for reading and, so it never sees end-of-file, for writing too; its descriptor joins whatever the
waiter sleeps on. The state engine notes which topics its changes concern (:func:`note_states`: jobs that end a
batch PREPROCESSED or RESTART_READY are ``runnable``; STAGED_IN, RUN_DONE, RUN_ERROR or RUN_TIMEOUT, ``process``;
JOB_FINISHED, FAILED or USER_KILLED, ``finished``, which a linked site's sync service waits on to push them to its
relay) and the store rings those topics once the transaction commits (:func:`ring`): one byte into every FIFO of
the topic, without blocking. A FIFO whose owner died (nobody reads it) is removed by the next ring.

A doorbell only saves time: waiters still poll on a slower period, so a ring that never comes (a writer on
another host, a full FIFO, a crash between commit and ring) costs latency, never a job. FIFOs are local to a
host's kernel even on a shared filesystem, which is right: only processes on the site's home host open the DB.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import threading
from pathlib import Path
from typing import Iterable, Optional, Set

RUNNABLE = "runnable"
"""Jobs a launcher can acquire appeared (PREPROCESSED, RESTART_READY)."""
PROCESS = "process"
"""Jobs the agent's processing moves on appeared (STAGED_IN, RUN_DONE, RUN_ERROR, RUN_TIMEOUT)."""
FINISHED = "finished"
"""Jobs reached a final state (JOB_FINISHED, FAILED, USER_KILLED): a linked site's sync pushes them to its relay."""
TOPIC_OF_STATE = {
    "PREPROCESSED": RUNNABLE, "RESTART_READY": RUNNABLE,
    "STAGED_IN": PROCESS, "RUN_DONE": PROCESS, "RUN_ERROR": PROCESS, "RUN_TIMEOUT": PROCESS,
    "JOB_FINISHED": FINISHED, "FAILED": FINISHED, "USER_KILLED": FINISHED,
}
DIR_NAME = "doorbell"

_noted = threading.local()
_counter = itertools.count()


# --------------------------------------------------------------------------------------------- writers' side
def note_states(states: Iterable[str]) -> None:
    """Jobs of this thread's current transaction now rest in ``states``: ring their topics after the commit."""
    topics = {TOPIC_OF_STATE[s] for s in states if s in TOPIC_OF_STATE}
    if topics:
        pending: Optional[Set[str]] = getattr(_noted, "topics", None)
        if pending is None:
            _noted.topics = topics
        else:
            pending |= topics


def take_noted() -> Set[str]:
    """The topics noted since the last call (and forget them): the store calls it after a commit, and before a
    transaction begins (so a rolled-back one rings nothing)."""
    topics: Optional[Set[str]] = getattr(_noted, "topics", None)
    _noted.topics = None
    return topics or set()


def ring(state_dir: Path, topics: Iterable[str]) -> int:
    """Wake every waiter of ``topics`` at the site whose state folder is ``state_dir``; returns how many were
    rung. Never blocks and never raises: a doorbell is an optimisation."""
    wanted = tuple(f"{t}." for t in topics)
    if not wanted:
        return 0
    directory = os.path.join(state_dir, DIR_NAME)
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    rung = 0
    for name in names:
        if not name.startswith(wanted):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody holds it open: its owner died
                _unlink(path)
            continue
        try:
            os.write(fd, b"!")
            rung += 1
        except OSError:  # full: it is rung already
            rung += 1
        finally:
            os.close(fd)
    return rung


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------- waiters' side
class Doorbell:
    """One waiter's doorbell for a topic (see the module docstring). :meth:`open` creates it; :meth:`fileno`
    goes into a selector, or :meth:`wait` blocks on it; :meth:`drain` empties it after a ring."""

    def __init__(self, state_dir: Path, topic: str) -> None:
        if topic not in (RUNNABLE, PROCESS, FINISHED):
            raise ValueError(f"unknown doorbell topic {topic!r}")
        self.path = Path(state_dir) / DIR_NAME / f"{topic}.{os.getpid()}.{next(_counter)}"
        self._r: Optional[int] = None
        self._w: Optional[int] = None

    def open(self) -> "Doorbell":
        """Create the FIFO and hold it open. Raises OSError where FIFOs cannot be made (the caller then polls)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _unlink(str(self.path))
        os.mkfifo(self.path, 0o600)
        try:
            self._r = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._w = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.close()
            raise
        return self

    def fileno(self) -> int:
        if self._r is None:
            raise ValueError("the doorbell is not open")
        return self._r

    def drain(self) -> bool:
        """Empty the FIFO; True if it had been rung."""
        if self._r is None:
            return False
        rung = False
        try:
            while os.read(self._r, 4096):
                rung = True
        except BlockingIOError:
            pass
        except OSError:
            pass
        return rung

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a ring; True (and drained) if it came."""
        if self._r is None:
            return False
        try:
            ready, _, _ = select.select([self._r], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return False
        return bool(ready) and self.drain()

    def close(self) -> None:
        """Stop listening and remove the FIFO."""
        for fd in (self._r, self._w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = None
        _unlink(str(self.path))

    def __enter__(self) -> "Doorbell":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
