"""The bulk-update queue: job state changes collected in memory and written in batched transactions.

A launcher puts thousands of changes per second (RUNNING, RUN_DONE, ...); one transaction per change would
cap it near the commit rate, so :class:`StatusUpdater` writes whatever accumulated every ``period_s`` (or as
soon as ``max_batch`` changes wait) in one transaction. Several changes of one job in a batch apply in the
order they were put. A transient failure (a lock, the disk, the network) keeps the batch and retries with
backoff; a change the store refuses is dropped, logged and recorded on its job, and the rest of the batch goes
through; ``close()`` drains the queue before returning, so an orderly exit loses nothing.

Where changes go is a *sink*: :func:`store_sink` writes to the site DB directly; the site agent's HTTP API
provides another for launchers on other hosts. Either way the launcher sees the same interface.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from balsam.db.connection import Store
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.states import JobState
from balsam.exceptions import BalsamError, SchemaError, ServiceError, StoreError, ValidationError
from balsam.runtime import paused_gc

logger = logging.getLogger(__name__)

Rejected = List[Tuple[StateChange, str]]
Sink = Callable[[Sequence[StateChange]], Rejected]


TRANSIENT_ERRORS = (StoreError, ServiceError, OSError, TimeoutError, sqlite3.OperationalError)
"""Errors that may pass if the write is tried again (a lock, I/O, the network, the agent restarting)."""


def is_transient(exc: BaseException) -> bool:
    """True for a failure worth retrying; False for a write the store refuses (retrying changes nothing)."""
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, (SchemaError, ValidationError))


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
        max_retry_period_s: float = 30.0,
    ) -> None:
        self._sink = sink
        self.period_s = period_s
        self.max_batch = max_batch
        self._on_rejected = on_rejected
        self.retry_period_s = retry_period_s
        self.max_retry_period_s = max_retry_period_s
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

    def put_together(self, changes: Sequence[Tuple[int, str, float, Optional[Dict[str, Any]], Optional[Dict[str, Any]], Optional[int]]]) -> None:
        """Queue changes (job_id, state, timestamp, data, fields, session_id) that must reach the store in one batch,
        in this order: a launcher's RUN_DONE and the POSTPROCESSED that follows it under the same lease (applied in
        separate batches, the second would find the job released by the first)."""
        with self._lock:
            if self._closed:
                raise BalsamError("the status updater is closed")
            queue = self._queue
            was_empty = not queue
            queue.extend(changes)
            self._put_seq += len(changes)
            if was_empty or len(queue) >= self.max_batch:
                self._cond.notify_all()

    def pending(self) -> int:
        """Changes not yet written."""
        with self._cond:
            return self._put_seq - self._done_seq

    def _take(self) -> List[StateChange]:
        queue = self._queue
        if len(queue) <= self.max_batch:
            raw, self._queue = queue, []
        else:
            cut = self.max_batch
            while cut < len(queue) and queue[cut][0] == queue[cut - 1][0]:
                cut += 1  # a job's consecutive changes stay in one batch (see put_together)
            raw = queue[:cut]
            del queue[:cut]
        with paused_gc():
            return list(map(StateChange._make, raw))

    def _write(self, batch: List[StateChange]) -> List[StateChange]:
        """Write a batch; returns what is left to retry (empty when done).

        A transient failure (a lock, I/O, the network) leaves the unwritten part for a retry with backoff. A
        write the store refuses as a whole is split in halves until the change that causes it is found; that
        change is dropped and recorded (see :meth:`_refused`), and everything else goes through.
        """
        todo: List[List[StateChange]] = [batch]
        while todo:
            part = todo.pop(0)
            try:
                rejected = self._sink(part)
            except Exception as exc:
                if is_transient(exc):
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("status update of %d jobs failed, will retry: %s", len(part), self.last_error)
                    return part + [c for p in todo for c in p]
                if len(part) > 1:
                    mid = len(part) // 2
                    todo[:0] = [part[:mid], part[mid:]]
                    continue
                rejected = [(part[0], f"{type(exc).__name__}: {exc}")]
            self.last_error = None
            self.written_total += len(part) - len(rejected)
            if rejected:
                self._refused(rejected)
        return []

    def _refused(self, rejected: Rejected) -> None:
        """Log refused changes, report them, and record on the job why its run's outcome was refused: a RUN_DONE
        or RUN_ERROR whose results the store refused becomes RUN_ERROR with the reason (handle_error decides)."""
        self.rejected_total += len(rejected)
        for change, why in rejected[:5]:
            logger.warning("status update refused: job %s -> %s: %s", change.job_id, change.state, why)
        if len(rejected) > 5:
            logger.warning("... and %d more status updates refused", len(rejected) - 5)
        fallbacks = [
            StateChange(c.job_id, JobState.RUN_ERROR, c.timestamp, {"error": f"the launcher's update was refused: {why}"[:2000]},
                        None, c.session_id)
            for c, why in rejected if c.state in (JobState.RUN_DONE, JobState.RUN_ERROR) and (c.fields or c.data)
        ]
        if fallbacks:
            try:
                again = self._sink(fallbacks)
            except Exception as exc:  # the record is best effort: the refusal is logged above
                logger.warning("could not record %d refused updates on their jobs: %s", len(fallbacks), exc)
            else:
                self.written_total += len(fallbacks) - len(again)
        if self._on_rejected is not None:
            self._on_rejected(rejected)

    def kick(self) -> None:
        """Have the thread write what is queued now instead of at the end of its period, without waiting for it:
        for a caller with nothing more to add soon (a launcher whose jobs all ended), whose last changes would
        otherwise wait up to ``period_s`` for company."""
        with self._cond:
            if self._put_seq > self._flush_target and self._put_seq > self._done_seq:
                self._flush_target = self._put_seq
                self._cond.notify_all()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Write everything queued so far; returns False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is None:
            while True:
                with self._cond:
                    batch = self._take()
                if not batch:
                    return True
                delay = self.retry_period_s
                size = len(batch)
                while True:
                    batch = self._write(batch)
                    if not batch:
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        with self._cond:
                            self._queue[:0] = [tuple(c) for c in batch]
                            self._done_seq += size - len(batch)
                        return False
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_retry_period_s)
                with self._cond:
                    self._done_seq += size
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
        delay = self.retry_period_s
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()  # idle: no wakeups until something is put
                if not self._queue:
                    return
                if not self._stopping and len(self._queue) < self.max_batch and self._flush_target <= self._done_seq:
                    self._cond.wait(self.period_s)  # let a burst accumulate; flush/close/max_batch cut it short
                batch = self._take()
            left = self._write(batch)
            with self._cond:
                self._done_seq += len(batch) - len(left)
                self._cond.notify_all()
                if left:
                    self._queue[:0] = [tuple(c) for c in left]
            if left:
                with self._cond:  # transient: back off, doubling up to max_retry_period_s; a flush() retries now
                    if self._closed:  # close() gave up waiting: its caller keeps them elsewhere (the journal)
                        logger.error("%d status updates not written before the updater closed", len(self._queue))
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, self.max_retry_period_s)
            else:
                delay = self.retry_period_s

    def close(self, timeout: Optional[float] = None) -> bool:
        """Drain the queue and stop the thread. Returns False if changes are still unwritten at ``timeout``
        (the thread then tries once more and stops: whoever closes it keeps them, as a launcher's journal does)."""
        done = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        return done
