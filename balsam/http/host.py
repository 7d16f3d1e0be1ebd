"""HostBackend: every site of this host behind one :class:`balsam.db.backend.Backend`, for ``balsam ui``.

``balsam ui`` on a login node serves the dashboard of all the sites whose home host it is (DESIGN.md section 5:
"balsam ui (this host's sites, LocalStore)"). Each request is routed to the sites it concerns:

- a ``site_id`` filter narrows to those sites (:meth:`HostBackend.narrow`, as at the relay);
- an id names its site (:func:`balsam.db.ids.site_of`), so a read by ids (``id``, ``job_id``, ``app_id``,
  ``batch_job_id``, ``parent_id``) and every write by id go to the site holding the row; new jobs go to the site
  of their app;
- otherwise a read runs at every site and the answers merge: rows in the requested order (each site returns its
  first ``offset + limit`` rows in that order, the merge keeps the global page), counts added up.

The sites are asked of ``discover`` again every ``refresh_s`` seconds, so a site created (or removed) while the
server runs appears (or goes) without a restart. A write that spans several sites is one transaction per site.
One site whose DB cannot be read is left out of merged reads with a warning in the log, not an error for all.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

from balsam.db import query as q
from balsam.db.backend import Backend, Row, spec_for
from balsam.db.ids import site_of
from balsam.db.jobs import StateChange
from balsam.db.merge import Read
from balsam.db.once import Rejected
from balsam.exceptions import ObjectDoesNotExist, StoreError, ValidationError

logger = logging.getLogger("balsam.http")
T = TypeVar("T")
ROUTING_KEYS = ("id", "job_id", "app_id", "batch_job_id", "parent_id")
"""Filters whose ids name the sites a read can touch."""
MEMORY_ANSWERS = 10_000


@dataclass(frozen=True)
class HostSite:
    """One site served: its id and name, its directory (job output, agent health) and its backend."""

    id: int
    name: str
    root: Path
    backend: Backend


class HostSites:
    """The sites of this host, from ``discover`` (asked again at most every ``refresh_s`` seconds)."""

    def __init__(self, discover: Callable[[], Sequence[HostSite]], refresh_s: float = 2.0) -> None:
        self.discover = discover
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._sites: List[HostSite] = []
        self._at = -1e18

    def all(self) -> List[HostSite]:
        """The sites now, in discovery order."""
        with self._lock:
            if time.monotonic() - self._at >= self.refresh_s:
                try:
                    self._sites = list(self.discover())
                except Exception:  # keep serving the sites known so far
                    logger.exception("could not list this host's sites")
                self._at = time.monotonic()
            return list(self._sites)


def _sort_key(i: int) -> Callable[[Row], Tuple[bool, Any]]:
    """Column ``i`` as SQLite sorts it: NULL first when ascending."""
    return lambda r: (r[i] is not None, 0 if r[i] is None else r[i])


class HostBackend(Backend):
    """This host's sites (all, or those a ``site_id`` filter kept) as one backend."""

    kind = "local"

    def __init__(self, sites: HostSites, *, only: Optional[Sequence[int]] = None) -> None:
        self.sites = sites
        self.only = None if only is None else frozenset(int(s) for s in only)
        self._answers: "OrderedDict[str, Tuple[str, int, bytes]]" = OrderedDict()
        self._answers_lock = threading.Lock()

    # ------------------------------------------------------------------ scope
    def parts(self) -> List[HostSite]:
        """The sites in scope."""
        return [s for s in self.sites.all() if self.only is None or s.id in self.only]

    def part(self, site_id: int) -> HostSite:
        """One site in scope (ObjectDoesNotExist when it is not served here)."""
        for s in self.parts():
            if s.id == int(site_id):
                return s
        raise ObjectDoesNotExist(f"no site {site_id} on this host")

    def site_parts(self) -> List[Tuple[int, Backend]]:
        """(site id, backend) of each site in scope (the WebSocket hub follows them)."""
        return [(s.id, s.backend) for s in self.parts()]

    def narrow(self, site_ids: Sequence[int]) -> "HostBackend":
        """The same sites restricted to ``site_ids`` (a ``site_id`` filter); a site not served here gives no rows."""
        wanted = {int(s) for s in site_ids}
        keep = wanted if self.only is None else wanted & self.only
        narrowed = HostBackend(self.sites, only=sorted(keep))
        narrowed._answers, narrowed._answers_lock = self._answers, self._answers_lock
        return narrowed

    def _one(self, what: str) -> HostSite:
        parts = self.parts()
        if len(parts) != 1:
            raise ValidationError(f"site_id: name the site {what} (this server serves {len(parts)} sites)" if parts
                                  else "no site on this host is in scope")
        return parts[0]

    def _of(self, row_id: int, what: str) -> HostSite:
        try:
            return self.part(site_of(int(row_id)))
        except ObjectDoesNotExist:
            raise ObjectDoesNotExist(f"no {what} {row_id}") from None

    def _for_filters(self, filters: Dict[str, Any]) -> List[HostSite]:
        parts = self.parts()
        if len(parts) <= 1:
            return parts
        wanted: Optional[Set[int]] = None
        for key in ROUTING_KEYS:
            if key not in filters or filters[key] is None:
                continue
            value = filters[key]
            values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            try:
                sites = {site_of(int(v)) for v in values}
            except (TypeError, ValueError):
                continue  # the site's own query says what is wrong with it
            wanted = sites if wanted is None else wanted & sites
        return parts if wanted is None else [s for s in parts if s.id in wanted]

    def _each(self, parts: Sequence[HostSite], read: Callable[[HostSite], T]) -> List[T]:
        """``read`` at each site; with several, a site whose DB cannot be read is skipped (and logged)."""
        if len(parts) == 1:
            return [read(parts[0])]
        out = []
        for part in parts:
            try:
                out.append(read(part))
            except (sqlite3.DatabaseError, StoreError) as e:
                if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                    raise
                logger.warning("left site %s (%s) out: its DB cannot be read (%s)", part.name, part.root, e)
        return out

    def _group(self, ids: Sequence[int], what: str) -> Dict[int, Tuple[HostSite, List[int]]]:
        out: Dict[int, Tuple[HostSite, List[int]]] = {}
        for i in ids:
            site = self._of(int(i), what)
            out.setdefault(site.id, (site, []))[1].append(int(i))
        return out

    # ------------------------------------------------------------------ reads
    def site_row(self, columns: Sequence[str]) -> Row:
        return self._one("to read").backend.site_row(columns)

    def select(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
               limit: Optional[int] = None, offset: int = 0) -> List[Row]:
        parts = self._for_filters(filters)
        if len(parts) == 1:
            return parts[0].backend.select(table, filters, columns=columns, order_by=order_by, limit=limit, offset=offset)
        spec = spec_for(table)
        q.order_clause(spec, order_by)  # an unknown field is refused here, as a single site refuses it
        keys = list(order_by) or list(spec.default_order)
        if not any(k.lstrip("-+") == "id" for k in keys):
            keys.append(("-" if keys[-1].startswith("-") else "") + "id")
        sort_cols = [spec.order_fields[k.lstrip("-+")] for k in keys]
        wanted = list(columns) + [c for c in dict.fromkeys(sort_cols) if c not in columns]
        fetch = None if limit is None else offset + limit
        rows: List[Row] = []
        for part in self._each(parts, lambda p: p.backend.select(table, filters, columns=wanted, order_by=order_by, limit=fetch)):
            rows.extend(part)
        for key, col in reversed(list(zip(keys, sort_cols))):  # stable sorts, last key first: SQLite's order
            rows.sort(key=_sort_key(wanted.index(col)), reverse=key.startswith("-"))
        page = rows[offset:] if limit is None else rows[offset:offset + limit]
        n = len(columns)
        return [tuple(r[:n]) for r in page] if len(wanted) > n else page

    def count(self, table: str, filters: Dict[str, Any]) -> int:
        return sum(self._each(self._for_filters(filters), lambda p: p.backend.count(table, filters)))

    def count_by(self, table: str, filters: Dict[str, Any], column: str) -> Dict[Any, int]:
        out: Dict[Any, int] = {}
        for part in self._each(self._for_filters(filters), lambda p: p.backend.count_by(table, filters, column)):
            for k, v in part.items():
                out[k] = out.get(k, 0) + int(v)
        return out

    def ids(self, table: str, filters: Dict[str, Any]) -> List[int]:
        out: List[int] = []
        for part in self._each(self._for_filters(filters), lambda p: p.backend.ids(table, filters)):
            out.extend(part)
        return out

    def last_event_message(self, job_id: int) -> str:
        return self._of(job_id, "job").backend.last_event_message(job_id)

    def data_version(self) -> Optional[int]:
        versions = [p.backend.data_version() for p in self.parts()]
        return None if any(v is None for v in versions) else sum(int(v or 0) for v in versions)

    def index_step(self) -> int:
        """A step of each site's workdir indexing (:meth:`balsam.db.backend.LocalBackend.index_step`)."""
        n = 0
        for part in self.parts():
            step = getattr(part.backend, "index_step", None)
            if step is not None:
                try:
                    n += int(step())
                except (sqlite3.DatabaseError, StoreError) as e:
                    logger.warning("could not index workdirs of site %s: %s", part.name, e)
        return n

    def app_code(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for site, chunk in self._group(ids, "app").values():
            out.extend(site.backend.app_code(chunk))
        return out

    # ------------------------------------------------------------------ jobs
    def create_jobs(self, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                    checked_app_versions: Optional[Dict[int, int]] = None) -> Tuple[List[int], List[str], float]:
        groups: Dict[int, Tuple[HostSite, List[int]]] = {}
        for i, r in enumerate(rows):
            site = self._of(int(r[1]), "app")
            groups.setdefault(site.id, (site, []))[1].append(i)
        ids: List[int] = [0] * len(rows)
        states: List[str] = [""] * len(rows)
        created = time.time()
        for site, idx in groups.values():
            sub = {n: transfers[i] for n, i in enumerate(idx) if i in transfers}
            checked = None if checked_app_versions is None else {
                a: v for a, v in checked_app_versions.items() if site_of(a) == site.id}
            new_ids, new_states, created = site.backend.create_jobs([rows[i] for i in idx], sub, checked)
            for n, i in enumerate(idx):
                ids[i], states[i] = new_ids[n], new_states[n]
        return ids, states, created

    def update_jobs(self, updates: Sequence[Tuple[int, Dict[str, Any]]], parents: Sequence[Tuple[int, List[int]]] = (),
                    changes: Sequence[StateChange] = (), reads: Sequence[Read] = ()) -> None:
        per: Dict[int, Tuple[HostSite, List[Any], List[Any], List[StateChange], List[Read]]] = {}

        def slot(job_id: int) -> Tuple[HostSite, List[Any], List[Any], List[StateChange], List[Read]]:
            site = self._of(job_id, "job")
            return per.setdefault(site.id, (site, [], [], [], []))

        for u in updates:
            slot(u[0])[1].append(u)
        for p in parents:
            slot(p[0])[2].append(p)
        for ch in changes:
            slot(ch.job_id)[3].append(ch)
        for r in reads:
            slot(r.job_id)[4].append(r)
        for site, ups, pars, chs, rds in per.values():
            site.backend.update_jobs(ups, pars, chs, rds)

    def delete_jobs(self, ids: Sequence[int]) -> int:
        return sum(site.backend.delete_jobs(chunk) for site, chunk in self._group(ids, "job").values())

    def apply_changes(self, changes: Sequence[StateChange], session_id: Optional[int] = None) -> Rejected:
        if session_id is not None:
            return self._of(session_id, "session").backend.apply_changes(changes, session_id)
        per: Dict[int, Tuple[HostSite, List[int]]] = {}
        for n, ch in enumerate(changes):
            site = self._of(ch.job_id, "job")
            per.setdefault(site.id, (site, []))[1].append(n)
        rejected: Rejected = []
        for site, idx in per.values():
            rejected.extend((idx[i], why) for i, why in site.backend.apply_changes([changes[n] for n in idx]))
        return sorted(rejected)

    # ------------------------------------------------------------------ other rows
    def update_rows(self, table: str, updates: Sequence[Tuple[int, Dict[str, Any]]]) -> None:
        per: Dict[int, Tuple[HostSite, List[Tuple[int, Dict[str, Any]]]]] = {}
        for row_id, fields in updates:
            site = self.part(row_id) if table == "site" else self._of(row_id, table.replace("_", " "))
            per.setdefault(site.id, (site, []))[1].append((row_id, fields))
        for site, chunk in per.values():
            site.backend.update_rows(table, chunk)

    def create_batch_job(self, fields: Dict[str, Any]) -> int:
        return self._one("the BatchJob is for").backend.create_batch_job(fields)

    def delete_rows(self, table: str, ids: Sequence[int]) -> int:
        return sum(site.backend.delete_rows(table, chunk) for site, chunk in self._group(ids, table.replace("_", " ")).values())

    def sync_app(self, fields: Dict[str, Any], rename_from: Optional[str] = None) -> int:
        return self._one("the app is for").backend.sync_app(fields, rename_from)

    # ------------------------------------------------------------------ sessions
    def create_session(self, *, host: str, pid: int, batch_job_id: Optional[int], label: str) -> int:
        site = self._of(batch_job_id, "batch job") if batch_job_id is not None else self._one("the session is for")
        return site.backend.create_session(host=host, pid=pid, batch_job_id=batch_job_id, label=label)

    def tick(self, session_id: int) -> None:
        self._of(session_id, "session").backend.tick(session_id)

    def acquire(self, session_id: int, max_num_jobs: int, wait_s: float = 0.0, **constraints: Any) -> List[Dict[str, Any]]:
        return self._of(session_id, "session").backend.acquire(session_id, max_num_jobs, wait_s, **constraints)

    def release(self, session_id: int) -> int:
        return self._of(session_id, "session").backend.release(session_id)

    # ------------------------------------------------------------------ DAG templates
    def dag_save(self, name: str, description: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        return self._one("the DAG is for").backend.dag_save(name, description, spec)

    def dag_list(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        for part in self._each(self.parts(), lambda p: p.backend.dag_list()):
            out.extend(part)
        return out

    def dag_delete(self, name: str) -> int:
        return self._one("the DAG is at").backend.dag_delete(name)

    def dag_instantiate(self, name: str, records: Sequence[Dict[str, Any]]) -> List[int]:
        return self._one("the DAG is at").backend.dag_instantiate(name, records)

    def dag_instances(self, dag_id: int, *, ids: Optional[Sequence[int]] = None, state: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, offset: int = 0) -> List[Dict[str, Any]]:
        return self._of(dag_id, "DAG").backend.dag_instances(dag_id, ids=ids, state=state, limit=limit, offset=offset)

    def dag_counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        out: Dict[int, Dict[str, int]] = {}
        for site, chunk in self._group(instance_ids, "DAG instance").values():
            out.update(site.backend.dag_counts(chunk))
        return out

    def dag_retry(self, instance_id: int) -> int:
        return self._of(instance_id, "DAG instance").backend.dag_retry(instance_id)

    # ------------------------------------------------------------------ exactly-once answers (HTTP)
    def once(self, key: str, fingerprint: str, fn: Callable[[], Optional[Tuple[int, bytes]]]) -> Optional[Tuple[int, bytes, bool]]:
        """A mutating request with an Idempotency-Key runs once: in the site's DB when it concerns one site (as the
        agent keeps it), otherwise in this server's memory (the newest answers)."""
        parts = self.parts()
        if len(parts) == 1:
            once = getattr(parts[0].backend, "once", None)
            if once is not None:
                return once(key, fingerprint, fn)  # type: ignore[no-any-return]
        with self._answers_lock:
            hit = self._answers.get(key)
        if hit is not None:
            if hit[0] != fingerprint:
                raise ValidationError("Idempotency-Key was already used for a different request")
            return hit[1], hit[2], True
        answer = fn()
        if answer is None:
            return None
        with self._answers_lock:
            self._answers[key] = (fingerprint, answer[0], answer[1])
            while len(self._answers) > MEMORY_ANSWERS:
                self._answers.popitem(last=False)
        return answer[0], answer[1], False

