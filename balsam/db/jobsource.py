"""JobSource: how a launcher or processing worker acquires jobs under a lease.

This is the direct implementation, for processes on the site's home host. The site agent's HTTP API offers
the same interface to launchers elsewhere (DESIGN.md section 3). A heartbeat thread renews the lease every
``heartbeat_period_s``; if the lease is found gone, :attr:`expired` is set and the owner must stop running
the jobs it held (they were unlocked or timed out).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List, Optional

from balsam.db import sessions
from balsam.db.connection import Store
from balsam.exceptions import SessionExpired

logger = logging.getLogger(__name__)


ASK_AGAIN_S = 1.0
"""A lease that cannot be confirmed (the site does not answer) is asked about again after this long, not at once."""


class Heartbeat:
    """The lease heartbeat both JobSources share: a thread calls :meth:`heartbeat` every period; if the lease is
    found gone, :attr:`expired` is set and the thread stops. Subclasses implement :meth:`heartbeat`.

    :meth:`fresh` tells an owner about to start jobs whether the lease was confirmed recently enough: a process
    that did not run for a while (stopped with SIGSTOP or Ctrl-Z, a frozen VM) may have lost its lease meanwhile,
    and another launcher may be running its jobs already."""

    heartbeat_period_s: float
    session_id: Optional[int]

    def _init_heartbeat(self, period_s: float) -> None:
        self.heartbeat_period_s = period_s
        self.expired = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.renewed_at = time.monotonic()
        """When the site last confirmed the lease (opened, renewed, or jobs acquired under it)."""
        self._asked_at = 0.0

    def renewed(self, sent: Optional[float] = None) -> None:
        """The site confirmed the lease in answer to a request sent at ``sent`` (monotonic seconds; None: now). The
        time the request left, not when its answer was read: a process stopped in between (SIGSTOP, a frozen VM) must
        not count a confirmation from before the stop as a fresh one, while the site expired the lease meanwhile."""
        at = time.monotonic() if sent is None else sent
        if at > self.renewed_at:
            self.renewed_at = at

    def fresh(self, max_age_s: float) -> bool:
        """True if the site confirmed the lease within ``max_age_s``. Otherwise False, and the heartbeat thread
        renews it at once (it sets :attr:`expired` if the lease is gone): jobs held under it wait until then."""
        if self.expired.is_set():
            return False
        now = time.monotonic()
        if now - self.renewed_at <= max_age_s:
            return True
        if now - self._asked_at >= ASK_AGAIN_S:
            self._asked_at = now
            self._wake.set()
        return False

    def start_by(self, max_age_s: float) -> float:
        """The last moment (``time.monotonic()``) a job held under the lease may still be started: ``max_age_s``
        after the site's last confirmation; already past once the lease is found gone. Checked right before each
        spawn, so that a process stopped between :meth:`fresh` and the spawn does not start the job after all."""
        return 0.0 if self.expired.is_set() else self.renewed_at + max_age_s

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="balsam-heartbeat", daemon=True)
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        while True:
            self._wake.wait(self.heartbeat_period_s)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                sent = time.monotonic()
                self.heartbeat()
                self.renewed(sent)
            except SessionExpired:
                logger.error("lease %s expired; its jobs were released", self.session_id)
                self.expired.set()
                return
            except Exception as exc:  # a missed beat is retried; expiry is long enough for several
                logger.warning("heartbeat failed; will retry: %s", exc)

    def heartbeat(self) -> None:
        """Renew the lease now."""
        raise NotImplementedError


class JobSource(Heartbeat):
    """Acquire jobs under a lease held by this process."""

    def __init__(
        self,
        store: Store,
        *,
        host: str,
        batch_job_id: Optional[int] = None,
        label: str = "launcher",
        heartbeat_period_s: float = 30.0,
        expiry_s: float = 300.0,
    ) -> None:
        self.store = store
        self.host = host
        self.batch_job_id = batch_job_id
        self.label = label
        self.expiry_s = expiry_s
        self.session_id: Optional[int] = None
        self._init_heartbeat(heartbeat_period_s)

    def start(self) -> "JobSource":
        """Open the lease and start its heartbeat."""
        with self.store.write() as conn:
            sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
            self.session_id = sessions.create_session(conn, host=self.host, batch_job_id=self.batch_job_id, label=self.label)
        self.renewed()
        self._start_heartbeat()
        return self

    def heartbeat(self) -> None:
        """Renew the lease now."""
        assert self.session_id is not None, "start() first"
        with self.store.write() as conn:
            sessions.tick(conn, self.session_id)

    def acquire(self, max_num_jobs: int, **constraints: Any) -> List[Dict[str, Any]]:
        """Lock up to ``max_num_jobs`` runnable jobs to this lease (see :func:`balsam.db.sessions.acquire`)."""
        assert self.session_id is not None, "start() first"
        sent = time.monotonic()
        with self.store.write() as conn:
            sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
            try:
                jobs = sessions.acquire(conn, self.session_id, max_num_jobs=max_num_jobs, **constraints)
            except SessionExpired:
                self.expired.set()
                raise
        self.renewed(sent)  # acquiring renews the lease
        return jobs

    def release(self) -> None:
        """End the lease: running jobs become RUN_TIMEOUT, the rest are unlocked."""
        self._stop_heartbeat()
        if self.session_id is not None:
            with self.store.write() as conn:
                sessions.release(conn, self.session_id)
            self.session_id = None

    def __enter__(self) -> "JobSource":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.release()
