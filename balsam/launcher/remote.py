"""The launcher on another host than the site's home host: JobSource and StatusUpdater sink over the site
agent's /v1 HTTP API (:mod:`balsam.http.client`).

The client retries transient failures with backoff for ``retry_s`` (re-reading ``.balsam/api.json``, so an
agent restarted on another port is found again), and every mutating request keeps its idempotency key across
retries: a retried acquire returns the same jobs, a retried status batch is applied once. A launcher rides
through an agent restart of a few minutes without losing a status update.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from balsam.db.jobs import StateChange
from balsam.db.jobsource import Heartbeat
from balsam.db.updater import Rejected, Sink
from balsam.exceptions import SessionExpired
from balsam.http.client import HttpBackend
from balsam.launcher.transport import JobSourceLike, Transport
from balsam.site import SiteLayout

logger = logging.getLogger("balsam.launcher")

REMOTE_ACQUIRE_WAIT_S = 2.0
"""An idle launcher's long poll for jobs: the agent answers at once when jobs become runnable (its doorbell), so
a longer wait costs no latency, only fewer requests (one every two seconds from an idle launcher)."""
RIDE_THROUGH_S = 900.0
"""How long a launcher keeps retrying while the site agent is unreachable (an agent restart, a network blip)."""


class RemoteJobSource(Heartbeat):
    """A lease held through the API; same interface as :class:`balsam.db.jobsource.JobSource`."""

    def __init__(self, backend: HttpBackend, *, host: str, batch_job_id: Optional[int], label: str,
                 heartbeat_period_s: float) -> None:
        self.backend = backend
        self.host = host
        self.batch_job_id = batch_job_id
        self.label = label
        self.session_id: Optional[int] = None
        self._init_heartbeat(heartbeat_period_s)

    def start(self) -> "RemoteJobSource":
        self.session_id = self.backend.create_session(host=self.host, pid=os.getpid(), batch_job_id=self.batch_job_id,
                                                      label=self.label)
        self.renewed()
        self._start_heartbeat()
        return self

    def heartbeat(self) -> None:
        assert self.session_id is not None
        self.backend.tick(self.session_id)

    def acquire(self, max_num_jobs: int, wait_s: float = 0.0, **constraints: Any) -> List[Dict[str, Any]]:
        assert self.session_id is not None, "start() first"
        sent = time.monotonic()
        try:
            jobs = self.backend.acquire(self.session_id, max_num_jobs, wait_s, **constraints)
        except SessionExpired:
            self.expired.set()
            raise
        # acquiring renews the lease: as of the request's start (a long poll confirms it when jobs come: then)
        self.renewed(None if wait_s else sent)
        return jobs

    def release(self) -> None:
        self._stop_heartbeat()
        if self.session_id is not None:
            try:
                self.backend.release(self.session_id)
            except SessionExpired:
                pass
            self.session_id = None


def api_sink(backend: HttpBackend, source: Optional[RemoteJobSource] = None) -> Sink:
    """A StatusUpdater sink that posts each batch as one status batch (applied once, even if retried)."""

    def write(changes: Sequence[StateChange]) -> Rejected:
        session_id = source.session_id if source is not None else None
        rejected = backend.apply_changes(changes, session_id=session_id)
        return [(changes[i], why) for i, why in rejected]

    return write


class RemoteTransport(Transport):
    """The site agent's /v1 HTTP API."""

    name = "http"

    def __init__(self, backend: HttpBackend, host: str) -> None:
        self.backend = backend
        self.host = host

    def connect(self) -> "RemoteTransport":
        row = self.backend.site_row(("id", "name"))
        self.site_id = int(row[0])
        self.site_name = str(row[1])
        return self

    @classmethod
    def from_site(cls, layout: SiteLayout, host: str) -> "RemoteTransport":
        return cls(HttpBackend.for_site(layout.root, retry_s=RIDE_THROUGH_S), host)

    def job_source(self, *, batch_job_id: Optional[int], label: str, heartbeat_period_s: float, expiry_s: float) -> JobSourceLike:
        return RemoteJobSource(self.backend, host=self.host, batch_job_id=batch_job_id, label=label,
                               heartbeat_period_s=heartbeat_period_s)

    def sink(self) -> Sink:
        return api_sink(self.backend)

    def app_rows(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        return self.backend.app_code(ids)

    def job_states(self, ids: Sequence[int]) -> Dict[int, str]:
        if not ids:
            return {}
        return {int(i): str(s) for i, s in self.backend.select("job", {"id": list(ids)}, columns=("id", "state"))}

    @property
    def acquire_wait_s(self) -> float:
        return REMOTE_ACQUIRE_WAIT_S

    def describe(self) -> str:
        return f"http (the site agent's API at {self.backend.client.address})"

    def close(self) -> None:
        self.backend.close()
