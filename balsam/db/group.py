"""Group commit: many callers' small write transactions run as one SQLite transaction on one writer thread.

The site agent's API serves hundreds of launchers whose requests are each a small write (acquire a few jobs,
a status batch, an idempotency answer). Run one by one, each pays for the writer lock, ``BEGIN IMMEDIATE``,
the temp tables of the state engine and a ``COMMIT`` that appends the same B-tree pages to the WAL again;
and threads queueing on the lock hand the GIL back and forth. :class:`GroupWriter` instead takes every
request waiting when the previous group ended and runs them in one transaction, each in its own savepoint:

- a call that raises rolls back its own writes only (its savepoint) and gets its exception; the others commit;
- a call's result is handed back only after the group committed, so an answer never reports a write that
  could still be lost (the exactly-once answers of the HTTP API are written in the same savepoint as the
  writes they describe);
- a failed commit fails every call of the group with the error (nothing of theirs was written).

An urgent call (a launcher waiting for jobs) goes ahead of the calls waiting with it, and one that arrives while a
group runs ends that group at its next call (committing what it did), so it waits for one call's work at most.

The calls run in arrival order on the writer thread, through the same ``Store.write()`` as any other writer
(which nests as a savepoint inside the group), so nothing about the SQL changes: only how often it commits.

**Checkpoints off the writer lock.** SQLite copies the WAL back into the database file (a checkpoint, with an
fsync) inside the ``COMMIT`` that finds the WAL past ``wal_autocheckpoint`` pages, and the site's writer lock is
held all that time: measured under 256 launchers, one commit in ten took 10-35 ms instead of under 1 ms, and every
other writer (the other API processes, their waiting acquires) waited for it. So the writer's connection leaves
checkpoints to a thread of its own (:data:`CHECKPOINT_S` after a group committed, at most that often), which runs
SQLite's ``PASSIVE`` checkpoint beside the writers (it takes no writer lock). The connection still checkpoints by
itself past :data:`SAFETY_CHECKPOINT_PAGES`, should that thread ever fall behind.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from balsam.db.connection import Store
from balsam.exceptions import StoreError

logger = logging.getLogger("balsam.db")

MAX_GROUP = 256
"""Most calls in one transaction (a bound on how long one commit keeps the others waiting)."""
MAX_GROUP_S = 0.005
"""Most seconds of work in one group: past it, the group commits and the rest wait for the next. Short, because a
site's other API processes wait for the writer lock while a group holds it, and an urgent call of theirs cannot
end it: with 256 launchers on a 2-core login node, 5 ms groups (20 before) cut the p99 acquire latency from
~260 to ~110 ms at the same throughput (bench/bench_http.py)."""
CHECKPOINT_S = 0.5
"""The checkpoint thread runs at most this often, and only after a group committed (an idle site wakes nothing)."""
SAFETY_CHECKPOINT_PAGES = 10_000
"""The writer's own ``wal_autocheckpoint`` (SQLite's default is 1,000 pages): only if the checkpoint thread falls behind."""

_Waiter = Union["Future[Any]", "asyncio.Future[Any]"]
_Item = Tuple[Callable[[], Any], _Waiter, Optional[asyncio.AbstractEventLoop], bool]
"""(call, its future, the event loop awaiting it or None, urgent)."""


class GroupWriter:
    """One writer thread for a store; :meth:`submit` queues a call and returns a Future of its result."""

    def __init__(self, store: Store, *, max_group: int = MAX_GROUP, max_group_s: float = MAX_GROUP_S, name: str = "balsam-writer",
                 checkpoint_s: float = CHECKPOINT_S) -> None:
        self.store = store
        self.checkpoint_s = checkpoint_s
        self.max_group = max_group
        self.max_group_s = max_group_s
        self.name = name
        self._queue: "queue.SimpleQueue[Optional[_Item]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._closed = False
        self._checkpointer: Optional[threading.Thread] = None
        self._committed = threading.Event()
        """Set after a group committed: there is WAL for the checkpoint thread to copy back."""
        self._urgent_put = 0
        self._urgent_taken = 0
        """Urgent calls queued, and taken by the writer thread (the difference: urgent calls not yet seen)."""
        self.groups = 0
        """Transactions committed (for tests and benchmarks: calls / groups is the coalescing achieved)."""
        self.calls = 0

    def submit(self, fn: Callable[[], Any]) -> "Future[Any]":
        """Run ``fn()`` inside the next group transaction (it may use ``store.write()``, which nests); its Future
        resolves after that transaction committed (or with its exception, or the commit's)."""
        future: "Future[Any]" = Future()
        self._put((fn, future, None, False))
        return future

    def submit_async(self, fn: Callable[[], Any], *, urgent: bool = False) -> "asyncio.Future[Any]":
        """:meth:`submit` for a coroutine of the running event loop: await the result. The writer settles all of a
        group's futures of one loop with one wake-up of that loop. ``urgent`` calls (a launcher waiting for jobs to
        run) found waiting with others commit in a group of their own first: they wait for no one else's work."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Any]" = loop.create_future()
        self._put((fn, future, loop, urgent))
        return future

    def _put(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the group writer is stopped")
            if item[3]:
                self._urgent_put += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
                self._checkpointer = threading.Thread(target=self._checkpoints, name=f"{self.name}-checkpoint", daemon=True)
                self._checkpointer.start()
        self._queue.put(item)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``submit(fn)`` and wait for its result (from any thread but the writer's)."""
        return self.submit(fn).result()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the queued calls and end the writer thread."""
        with self._lock:
            self._closed = True
            thread, checkpointer = self._thread, self._checkpointer
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=timeout_s)
        if checkpointer is not None:
            self._committed.set()
            checkpointer.join(timeout=timeout_s)

    # ------------------------------------------------------------------ the writer thread
    def _drain(self, pending: List[_Item]) -> bool:
        """Move every call queued now to ``pending``; True when the stop marker was among them."""
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            if nxt[3]:
                self._urgent_taken += 1
            pending.append(nxt)

    def _checkpoints(self) -> None:
        """The checkpoint thread: copy the WAL back into the database file after groups commit, beside the writers."""
        try:
            while True:
                self._committed.wait()
                if self._closed:
                    return
                self._committed.clear()
                try:
                    self.store.checkpoint()
                except (sqlite3.Error, StoreError) as e:  # the next commit tries again; the writer's own is the safety net
                    logger.debug("a WAL checkpoint failed: %s", e)
                time.sleep(self.checkpoint_s)
        finally:
            self.store.close()

    def _run(self) -> None:
        try:
            self.store.conn.execute(f"PRAGMA wal_autocheckpoint={SAFETY_CHECKPOINT_PAGES}")
        except sqlite3.Error as e:  # the first write reports a store that cannot be used
            logger.debug("cannot set wal_autocheckpoint: %s", e)
        stop = False
        pending: List[_Item] = []
        while pending or not stop:
            if not pending:
                first = self._queue.get()
                if first is None:
                    break
                if first[3]:
                    self._urgent_taken += 1
                pending.append(first)
            if not stop:
                stop = self._drain(pending)
            # Urgent calls waiting with others go first, in a transaction of their own, whether the others came
            # with them or were left over from a group that ran out of time.
            urgent = [item for item in pending if item[3]]
            if urgent and len(urgent) < len(pending):
                items, pending = urgent, [item for item in pending if not item[3]]
            else:
                items, pending = pending, []
            pending = self._group(items[:self.max_group]) + items[self.max_group:] + pending
        self.store.close()

    def _group(self, items: List[_Item]) -> List[_Item]:
        """Run ``items`` in one transaction; the ones left for the next group when time ran out."""
        done: List[Tuple[_Waiter, Optional[asyncio.AbstractEventLoop], bool, Any]] = []
        rest: List[_Item] = []
        deadline = time.monotonic() + self.max_group_s
        try:
            with self.store.write() as conn:
                for n, (fn, future, loop, _urgent) in enumerate(items):
                    if n and (time.monotonic() > deadline or self._urgent_put != self._urgent_taken):
                        rest = items[n:]  # out of time, or an urgent call came: it goes next
                        break
                    if loop is None:
                        if not future.set_running_or_notify_cancel():  # type: ignore[union-attr]
                            continue
                    elif future.cancelled():
                        continue
                    try:
                        with self.store.write():  # a savepoint: a failure undoes this call's writes only
                            result = fn()
                    except BaseException as e:  # handed to the caller, who raises it
                        done.append((future, loop, False, e))
                    else:
                        done.append((future, loop, True, result))
                    if not conn.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O error)
                        raise StoreError(f"{self.store.db_path}: the write transaction was lost")
        except BaseException as e:  # the commit (or BEGIN) failed: nothing of the group was written
            logger.warning("a group of %d writes failed to commit: %s", len(done), e)
            self._settle([(future, loop, False, e) for future, loop, _ok, _value in done]
                         + [(future, loop, False, e) for _fn, future, loop, _urgent in rest])
            return []
        self.groups += 1
        self.calls += len(done)
        self._committed.set()
        self._settle(done)
        return rest

    @staticmethod
    def _settle(done: List[Tuple[_Waiter, Optional[asyncio.AbstractEventLoop], bool, Any]]) -> None:
        """Hand out results: thread futures at once, each event loop's futures in one call on that loop."""
        by_loop: Dict[asyncio.AbstractEventLoop, List[Tuple[_Waiter, bool, Any]]] = {}
        for future, loop, ok, value in done:
            if loop is None:
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            else:
                by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_on_loop, results)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass


def _settle_on_loop(results: List[Tuple[_Waiter, bool, Any]]) -> None:
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


__all__ = ["CHECKPOINT_S", "GroupWriter", "MAX_GROUP", "MAX_GROUP_S"]
