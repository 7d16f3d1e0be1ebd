"""The one service loop every site-agent service shares (the agent's PID file is :mod:`balsam.pidfile`).

A service implements :meth:`Service.run_cycle` (one pass of its work) and optionally :meth:`Service.cleanup`.
:class:`ServiceThread` calls ``run_cycle`` every ``period_s`` until the stop event is set, records each
cycle's time and any error (a failing cycle is logged and retried, never fatal: after consecutive failures
the wait doubles, up to ``MAX_BACKOFF_S``, so an outage of the scheduler or a full disk is not hammered), and
calls ``cleanup`` once at the end. Health is what ``balsam site status`` shows.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Dict, Optional

from balsam.db.doorbell import Doorbell

logger = logging.getLogger(__name__)
MAX_BACKOFF_S = 300.0
STOP_CHECK_S = 0.25


class Service:
    """Base class of the agent's services."""

    name = "service"
    wake_gap_s = 0.05
    """With a doorbell: the least time from one cycle's start to the next one a ring starts. Work that arrives
    in a stream of small commits (a launcher's status batches) is then taken in batches, not a cycle per commit
    (each cycle has fixed costs), at the price of at most this much latency."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.backlog: Optional[int] = None
        """What is waiting for this service (shown by ``balsam site status``), if it can tell."""
        self.stopping = threading.Event()
        """Set when the agent stops (its service thread's stop event): a cycle that waits on slow work (app hooks)
        checks it, so a stop finishes or hands back that work within seconds."""

    def run_cycle(self) -> None:
        """Do one pass of work."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what the service holds (leases, child processes) when the agent stops."""

    def doorbell(self) -> Optional[Doorbell]:
        """An open doorbell (:mod:`balsam.db.doorbell`) rung when work for this service appears, or None (the
        default): with one, a cycle starts as soon as it rings instead of at the end of the period."""
        return None


class ServiceThread(threading.Thread):
    """Runs one service's cycles on a thread until ``stop`` is set."""

    def __init__(self, service: Service, stop: threading.Event) -> None:
        super().__init__(name=f"balsam-{service.name}", daemon=True)
        self.service = service
        self.stop = stop
        service.stopping = stop
        self.cycles = 0
        self.errors = 0
        self.last_cycle: Optional[float] = None
        self.last_cycle_s: Optional[float] = None
        self.last_error: Optional[str] = None
        self.last_error_time: Optional[float] = None
        self.failures_in_a_row = 0
        self.failing_since: Optional[float] = None

    def next_wait_s(self) -> float:
        """The wait before the next cycle: the period, doubled per failure in a row (capped)."""
        if not self.failures_in_a_row:
            return self.service.period_s
        period = self.service.period_s
        cap = min(MAX_BACKOFF_S, max(period * 16, 5.0))  # a recovered disk or scheduler is noticed soon
        return float(max(period, min(cap, period * 2.0 ** min(self.failures_in_a_row, 20))))

    def run_one(self) -> None:
        """One cycle, with its time and error recorded."""
        start = time.time()
        try:
            self.service.run_cycle()
            self.last_error = None
            self.failures_in_a_row = 0
            self.failing_since = None
        except Exception as exc:  # a failing cycle must not kill the agent
            self.errors += 1
            self.failures_in_a_row += 1
            self.failing_since = self.failing_since or start
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.last_error_time = time.time()
            logger.error("%s: cycle failed (%d in a row; next try in %.0f s): %s\n%s", self.service.name, self.failures_in_a_row,
                         self.next_wait_s(), self.last_error, traceback.format_exc(limit=-3))
        self.cycles += 1
        self.last_cycle = start
        self.last_cycle_s = time.time() - start

    def run(self) -> None:
        logger.info("%s: started (period %.1f s)", self.service.name, self.service.period_s)
        bell = self.service.doorbell()
        try:
            while not self.stop.is_set():
                self.run_one()
                self._sleep(self.next_wait_s(), bell if not self.failures_in_a_row else None)
        finally:
            if bell is not None:
                bell.close()
        try:
            self.service.cleanup()
        except Exception:
            logger.exception("%s: cleanup failed", self.service.name)
        logger.info("%s: stopped", self.service.name)

    def _sleep(self, seconds: float, bell: Optional[Doorbell]) -> None:
        """Wait ``seconds``, or until ``bell`` rings; a stop is noticed within STOP_CHECK_S either way."""
        if bell is None:
            self.stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if bell.wait(min(left, STOP_CHECK_S)):
                since = time.time() - (self.last_cycle or 0.0)
                if since < self.service.wake_gap_s:  # coalesce a stream of rings into one cycle
                    self.stop.wait(min(self.service.wake_gap_s - since, max(0.0, deadline - time.monotonic())))
                return

    def health(self) -> Dict[str, Any]:
        """The service's state for ``balsam site status``."""
        return {
            "alive": self.is_alive(),
            "period_s": self.service.period_s,
            "cycles": self.cycles,
            "errors": self.errors,
            "last_cycle": self.last_cycle,
            "last_cycle_s": self.last_cycle_s,
            "last_error": self.last_error,
            "last_error_time": self.last_error_time,
            "backlog": self.service.backlog,
            "failures_in_a_row": self.failures_in_a_row,
            "failing_since": self.failing_since,
            "retry_in_s": self.next_wait_s() if self.failures_in_a_row else None,
        }
