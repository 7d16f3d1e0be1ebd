"""How a launcher reaches its site's DB: directly, or through the site agent's HTTP API (DESIGN.md section 3).

The rule: a launcher on the site's home host (``.balsam/host``) opens the SQLite store itself; a launcher on
any other host (a compute node) must not, and talks to the site agent's /v1 API (address in
``.balsam/api.json``, secret in ``.balsam/api.secret``). Either way the launcher gets the same things:

- a **JobSource** (start, heartbeat, acquire, release, ``expired``) for its lease;
- a **sink** for the StatusUpdater (bulk state changes, returning the refused ones);
- the apps' stored code, the current states of jobs it runs (to notice kills), and a cheap "did anything
  change?" signal (SQLite's ``data_version`` directly; a server-side wait over HTTP).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Sequence

from balsam.db.updater import Sink
from balsam.exceptions import LauncherError, ServiceError
from balsam.site import SiteLayout

if TYPE_CHECKING:
    from balsam.db.doorbell import Doorbell

logger = logging.getLogger(__name__)


class JobSourceLike(Protocol):
    """What :class:`balsam.db.jobsource.JobSource` offers; the HTTP client offers the same."""

    session_id: Optional[int]
    expired: threading.Event

    def start(self) -> Any: ...

    def acquire(self, max_num_jobs: int, **constraints: Any) -> List[Dict[str, Any]]: ...

    def fresh(self, max_age_s: float) -> bool: ...

    def start_by(self, max_age_s: float) -> float: ...

    def release(self) -> None: ...


class Transport(ABC):
    """A launcher's way to its site. Building one does no I/O; :meth:`connect` checks that the site answers."""

    name = ""
    site_id = 0
    site_name = ""

    @abstractmethod
    def connect(self) -> "Transport":
        """Reach the site and learn its id and name; returns self."""

    @abstractmethod
    def job_source(self, *, batch_job_id: Optional[int], label: str, heartbeat_period_s: float, expiry_s: float) -> JobSourceLike:
        """A lease (not yet started)."""

    @abstractmethod
    def sink(self) -> Sink:
        """Where the StatusUpdater writes."""

    @abstractmethod
    def app_rows(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        """Stored apps by id."""

    @abstractmethod
    def job_states(self, ids: Sequence[int]) -> Dict[int, str]:
        """Current states of jobs."""

    def data_version(self) -> Optional[int]:
        """A number that changes when anything is committed, or None when it cannot be had cheaply."""
        return None

    def doorbell(self) -> Optional["Doorbell"]:
        """An open doorbell rung when jobs become runnable (:mod:`balsam.db.doorbell`), or None: then poll."""
        return None

    @property
    def acquire_wait_s(self) -> float:
        """How long an idle acquire may wait at the far end for new jobs (0 where data_version works)."""
        return 0.0

    def describe(self) -> str:
        return self.name

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class DirectTransport(Transport):
    """SQLite on this host: JobSource and ``store_sink`` from balsam.db."""

    name = "direct"

    def __init__(self, root: Path, host: str) -> None:
        from balsam.db import open_store

        self.root = root
        self.host = host
        self.store = open_store(root, host)

    def connect(self) -> "DirectTransport":
        from balsam.db.site_row import site_identity

        with self.store.read() as conn:
            identity = site_identity(conn)
        if identity is None:
            raise LauncherError(f"{self.root}: the site DB has no site row")
        self.site_id, self.site_name = identity
        return self

    def job_source(self, *, batch_job_id: Optional[int], label: str, heartbeat_period_s: float, expiry_s: float) -> JobSourceLike:
        from balsam.db.jobsource import JobSource

        return JobSource(self.store, host=self.host, batch_job_id=batch_job_id, label=label,
                         heartbeat_period_s=heartbeat_period_s, expiry_s=expiry_s)

    def sink(self) -> Sink:
        from balsam.db.updater import store_sink

        return store_sink(self.store)

    def app_rows(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        from balsam.db.apps import app_code

        with self.store.read() as conn:
            return app_code(conn, ids)

    def job_states(self, ids: Sequence[int]) -> Dict[int, str]:
        if not ids:
            return {}
        from balsam.db.job_reads import job_states

        with self.store.read() as conn:
            return job_states(conn, ids)

    def data_version(self) -> Optional[int]:
        return self.store.data_version()

    def doorbell(self) -> Optional["Doorbell"]:
        from balsam.db.doorbell import RUNNABLE, Doorbell

        try:
            return Doorbell(self.store.db_path.parent, RUNNABLE).open()
        except OSError as exc:
            logger.info("no doorbell for runnable jobs (%s): polling instead", exc)
            return None

    def describe(self) -> str:
        return f"direct (SQLite at {self.store.db_path} on home host {self.host})"

    def close(self) -> None:
        self.store.close()


def home_host(layout: SiteLayout) -> str:
    """The site's home host, from ``.balsam/host``."""
    try:
        return layout.host_path.read_text().strip()
    except OSError as exc:
        raise LauncherError(f"{layout.host_path}: cannot read the site's home host: {exc.strerror or exc}") from None


def choose_transport(root: Path, host: str) -> Transport:
    """Direct on the home host, the agent's HTTP API elsewhere (see the module docstring)."""
    layout = SiteLayout(root)
    owner = home_host(layout)
    if not owner or owner == host:
        return DirectTransport(root, host).connect()
    from balsam.launcher.remote import RemoteTransport

    try:
        return RemoteTransport.from_site(layout, host).connect()
    except ServiceError as exc:
        raise LauncherError(
            f"this host ({host}) is not the site's home host ({owner}), so the launcher must go through the site "
            f"agent's API, and: {exc}"
        ) from None
