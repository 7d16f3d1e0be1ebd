"""The site store: one SQLite DB per site (WAL, a file lock for writers, the home-host rule).

Modules: ``schema`` (DDL and migrations), ``connection`` (Store: connections and transactions),
``states`` (job states and the transition table), ``fields`` (the one validator of each job field),
``codec`` (JSON columns, parameters with out-of-band pickled values), ``creation`` (new jobs), ``transitions``
(state changes and cascades), ``jobs`` (edits and deletion; re-exports creation and transitions),
``batch_jobs`` (BatchJob creation and its one checked writer), ``site_row`` (the site row's reader and writer),
``sessions`` (leases and acquisition), ``transfers`` (transfer items), ``query`` (filters and ordering),
``updater`` (the bulk StatusUpdater), ``jobsource`` (JobSource, acquisition under a lease), ``job_reads`` (one
job's fields, states by id, counts), ``apps`` (stored code, names), ``meta`` (the store's key/value notes).

All of the site store's SQL is here (tests/test_architecture.py checks it): every other layer calls a function
of this package, one per table and operation, which validates what it is given.
"""

from __future__ import annotations

from pathlib import Path

from balsam.db.connection import Store

__all__ = ["Store", "open_store"]


def open_store(site_root: Path, host: str) -> Store:
    """The store of the site at ``site_root``, opened lazily on first use by ``host``."""
    state = Path(site_root) / ".balsam"
    return Store(state / "site.db", state / "db.lock", state / "host", host)
