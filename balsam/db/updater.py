"""The bulk-update queue: job state changes collected in memory and written in batched transactions.

A launcher puts thousands of changes per second (RUNNING, RUN_DONE, ...); one transaction per change would
cap it near the commit rate, so :class:`StatusUpdater` writes whatever accumulated every ``period_s`` (or as
soon as ``max_batch`` changes wait) in one transaction. Several changes of one job in a batch apply in the
order they were put. A failed write (the disk, say) keeps the batch and retries; ``close()`` drains the
queue before returning, so an orderly exit loses nothing.

Where changes go is a *sink*: :func:`store_sink` writes to the site DB directly; the site agent's HTTP API
provides another for launchers on other hosts. Either way the launcher sees the same interface.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from balsam.db.connection import Store
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.exceptions import BalsamError
from balsam.runtime import paused_gc

logger = logging.getLogger(__name__)

Rejected = List[Tuple[StateChange, str]]
Sink = Callable[[Sequence[StateChange]], Rejected]


def store_sink(store: Store) -> Sink:
    """A sink that applies changes to the site DB in one transaction and returns the refused ones."""

    def write(changes: Sequence[StateChange]) -> Rejected:
        with paused_gc(), store.write() as conn:
            return apply_state_changes(conn, changes, strict=False).rejected

    return write


class StatusUpdater:
    """Collects job state changes and flushes them in bulk from a background thread."""

    def __init__(
        self,
        sink: Sink,
        *,
        period_s: float = 0.25,
        max_batch: int = 10_000,
        on_rejected: Optional[Callable[[Rejected], None]] = None,
        retry_period_s: float = 1.0,
    ) -> None:
        self._sink = sink
        self.period_s = period_s
        self.max_batch = max_batch
        self._on_rejected = on_rejected
        self.retry_period_s = retry_period_s
        self._queue: List[Tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._put_seq = 0
        self._done_seq = 0
        self._flush_target = 0
        self._stopping = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.rejected_total = 0
        self.written_total = 0
        self.last_error: Optional[str] = None

    def start(self) -> "StatusUpdater":
        """Start the flushing thread (without it, call :meth:`flush` yourself)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="balsam-status-updater", daemon=True)
            self._thread.start()
        return self

    def put(
        self,
        job_id: int,
        state: str,
        *,
        timestamp: Optional[float] = None,
        data: Optional[Dict[str, Any]] = None,
        fields: Optional[Dict[str, Any]] = None,
        session_id: Optional[int] = None,
    ) -> None:
        """Queue one state change (``timestamp`` defaults to now: when it happened, not when it is written).

        Cheap on purpose (a tuple appended under a plain lock): a launcher calls it twice per job.
        """
        item = (job_id, state, time.time() if timestamp is None else timestamp, data, fields, session_id)
        with self._lock:
            if self._closed:
                raise BalsamError("the status updater is closed")
            queue = self._queue
            queue.append(item)
            self._put_seq += 1
            if len(queue) == 1 or len(queue) >= self.max_batch:
                self._cond.notify_all()

    def pending(self) -> int:
        """Changes not yet written."""
        with self._cond:
            return self._put_seq - self._done_seq

    def _take(self) -> List[StateChange]:
        if len(self._queue) <= self.max_batch:
            raw, self._queue = self._queue, []
        else:
            raw = self._queue[: self.max_batch]
            del self._queue[: len(raw)]
        with paused_gc():
            return list(map(StateChange._make, raw))

    def _write(self, batch: List[StateChange]) -> bool:
        try:
            rejected = self._sink(batch)
        except BalsamError as exc:
            self.last_error = str(exc)
            logger.warning("status update of %d jobs failed, will retry: %s", len(batch), exc)
            return False
        except Exception as exc:  # a transient I/O error must not lose the batch
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("status update of %d jobs failed, will retry", len(batch))
            return False
        self.last_error = None
        self.written_total += len(batch) - len(rejected)
        if rejected:
            self.rejected_total += len(rejected)
            for change, why in rejected[:5]:
                logger.info("status update refused: job %s -> %s: %s", change.job_id, change.state, why)
            if self._on_rejected is not None:
                self._on_rejected(rejected)
        return True

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Write everything queued so far; returns False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None:
            while True:
                with self._cond:
                    batch = self._take()
                if not batch:
                    return True
                while not self._write(batch):
                    if deadline is not None and time.monotonic() > deadline:
                        with self._cond:
                            self._queue[:0] = [tuple(c) for c in batch]
                        return False
                    time.sleep(self.retry_period_s)
                with self._cond:
                    self._done_seq += len(batch)
        with self._cond:
            target = self._put_seq
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            while self._done_seq < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()  # idle: no wakeups until something is put
                if not self._queue:
                    return
                if not self._stopping and len(self._queue) < self.max_batch and self._flush_target <= self._done_seq:
                    self._cond.wait(self.period_s)  # let a burst accumulate; flush/close/max_batch cut it short
                batch = self._take()
            ok = self._write(batch)
            with self._cond:
                if ok:
                    self._done_seq += len(batch)
                    self._cond.notify_all()
                else:
                    self._queue[:0] = [tuple(c) for c in batch]
            if not ok:
                time.sleep(self.retry_period_s)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Drain the queue and stop the thread. Returns False if changes are still unwritten at ``timeout``."""
        done = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        return done
