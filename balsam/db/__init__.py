"""The site store: one SQLite DB per site (WAL, a file lock for writers, the home-host rule).

Modules: ``schema`` (DDL and migrations), ``connection`` (Store: connections and transactions),
``states`` (job states and the transition table), ``jobs`` (creation, state changes and cascades),
``sessions`` (leases and acquisition), ``transfers`` (transfer items), ``query`` (filters and ordering),
``updater`` (the bulk StatusUpdater), ``jobsource`` (JobSource, acquisition under a lease).
"""

from __future__ import annotations

from pathlib import Path

from balsam.db.connection import Store

__all__ = ["Store", "open_store"]


def open_store(site_root: Path, host: str) -> Store:
    """The store of the site at ``site_root``, opened lazily on first use by ``host``."""
    state = Path(site_root) / ".balsam"
    return Store(state / "site.db", state / "db.lock", state / "host", host)
