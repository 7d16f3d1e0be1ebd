"""JobSource: how a launcher or processing worker acquires jobs under a lease.

This is the direct implementation, for processes on the site's home host. The site agent's HTTP API offers
the same interface to launchers elsewhere (DESIGN.md section 3). A heartbeat thread renews the lease every
``heartbeat_period_s``; if the lease is found gone, :attr:`expired` is set and the owner must stop running
the jobs it held (they were unlocked or timed out).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional

from balsam.db import sessions
from balsam.db.connection import Store
from balsam.exceptions import SessionExpired

logger = logging.getLogger(__name__)


class Heartbeat:
    """The lease heartbeat both JobSources share: a thread calls :meth:`heartbeat` every period; if the lease is
    found gone, :attr:`expired` is set and the thread stops. Subclasses implement :meth:`heartbeat`."""

    heartbeat_period_s: float
    session_id: Optional[int]

    def _init_heartbeat(self, period_s: float) -> None:
        self.heartbeat_period_s = period_s
        self.expired = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="balsam-heartbeat", daemon=True)
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_period_s):
            try:
                self.heartbeat()
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
        with self.store.write() as conn:
            sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
            try:
                return sessions.acquire(conn, self.session_id, max_num_jobs=max_num_jobs, **constraints)
            except SessionExpired:
                self.expired.set()
                raise

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
