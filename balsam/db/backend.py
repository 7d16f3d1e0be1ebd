"""The Backend interface (DESIGN.md section 5) and its local implementation over one site's SQLite store.

Everything the Python API, the CLI, the launcher and the /v1 HTTP API do to a site goes through these
operations. Three implementations: :class:`LocalBackend` here (the home host opens SQLite), the HTTP client
(:class:`balsam.http.client.HttpBackend`, any other host, through the site agent), and later the relay.
Rows travel in the store's representation (JSON columns as text, times as epoch seconds) as tuples of the
columns asked for, so the API's models do not care which backend loaded them.

Each operation validates through the one writer of its fields in ``balsam.db`` (jobs, sessions, batch jobs,
transfers); the HTTP server adds only who may call what (a launcher's status batch may change states of
jobs its lease holds and write return codes and results, nothing else: DESIGN.md section 7).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from balsam.db import query as q
from balsam.db.connection import Store
from balsam.db.jobs import StateChange
from balsam.db.merge import Read
from balsam.db.once import ACQUIRE_CONSTRAINTS, ExactlyOnce, Rejected, launcher_changes
from balsam.db.states import JobState
from balsam.exceptions import ObjectDoesNotExist, ValidationError

Row = Tuple[Any, ...]
MAX_ACQUIRE_WAIT_S = 5.0
_SPECS: Dict[str, q.TableSpec] = dict(q.SPECS)
_BATCH_JSON = frozenset({"optional_params", "filter_tags", "partitions", "status_info"})
_WRITABLE = {
    "site": frozenset({"last_refresh", "globus_endpoint_id", "backfill_windows", "queued_jobs", "optional_batch_job_params",
                       "allowed_projects", "allowed_queues", "transfer_locations"}),
    "app": frozenset({"name", "description", "parameters", "var_keyword", "transfers"}),
    "batch_job": frozenset({"scheduler_id", "project", "queue", "num_nodes", "wall_time_min", "job_mode", "optional_params",
                            "filter_tags", "partitions", "state", "status_info", "start_time", "end_time"}),
}


def register_spec(spec: q.TableSpec) -> None:
    """Make another table (the API's Site) selectable through backends."""
    _SPECS[spec.table] = spec


def spec_for(table: str) -> q.TableSpec:
    try:
        return _SPECS[table]
    except KeyError:
        raise ValidationError(f"no table {table!r}") from None


class Backend(ABC):
    """One site's data, whichever way it is reached."""

    kind = ""
    """"local" or "http" (``balsam which`` shows it)."""

    # ------------------------------------------------------------------ reads
    @abstractmethod
    def site_row(self, columns: Sequence[str]) -> Row:
        """The site's own row."""

    @abstractmethod
    def select(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
               limit: Optional[int] = None, offset: int = 0) -> List[Row]:
        """Rows of ``columns`` matching Balsam filter keywords, ordered and paged."""

    def iterate(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
                limit: Optional[int] = None, offset: int = 0) -> Iterator[Row]:
        """:meth:`select`'s rows one by one: a backend that reads them over the network in pages gives the first
        rows while the rest are on their way."""
        return iter(self.select(table, filters, columns=columns, order_by=order_by, limit=limit, offset=offset))

    keyset = False
    """Whether :meth:`page` resumes from a row's order values (else listings page by offset)."""

    def page(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (), limit: int,
             after: Optional[Sequence[Any]] = None, offset: int = 0) -> Tuple[List[Row], Optional[List[Any]]]:
        """One page of ``limit`` rows in order, after the row whose order values (``balsam.db.query.order_terms``)
        are ``after``: (rows, the order values of the page's last row when more follow, else None)."""
        raise ValidationError(f"keyset paging is not available through a {self.kind} backend")

    @abstractmethod
    def count(self, table: str, filters: Dict[str, Any]) -> int:
        """How many rows match."""

    @abstractmethod
    def count_by(self, table: str, filters: Dict[str, Any], column: str) -> Dict[Any, int]:
        """Counts of the matching rows grouped by one column."""

    def ids(self, table: str, filters: Dict[str, Any]) -> List[int]:
        """Ids of the matching rows."""
        return [int(r[0]) for r in self.select(table, filters, columns=("id",))]

    @abstractmethod
    def last_event_message(self, job_id: int) -> str:
        """The message of a job's latest event that has one ("" if none)."""

    @abstractmethod
    def data_version(self) -> Optional[int]:
        """A number that changes when anything is committed (None when it cannot be had cheaply)."""

    def watch(self) -> Optional[Any]:
        """A stream of job state changes to wait on (``wait(timeout) -> (changes, gap)``, ``close()``), or None when
        this backend has none (waiting then polls; ``data_version`` makes that cheap on the home host)."""
        return None

    @abstractmethod
    def app_code(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        """Apps' stored code (id, name, kind, source_code, version): for launchers and the site's owner only."""

    # ------------------------------------------------------------------ jobs
    @abstractmethod
    def create_jobs(self, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                    checked_app_versions: Optional[Dict[int, int]] = None) -> Tuple[List[int], List[str], float]:
        """Insert new-job tuples (``NEW_JOB_COLUMNS``); (ids, initial states, creation time), in order.
        ``checked_app_versions``: apps whose parameters the caller checked at that version (others are re-checked)."""

    def stage_jobs(self, upload: str, part: int, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                   checked_app_versions: Optional[Dict[int, int]] = None) -> bool:
        """Keep one part (checked new-job tuples, transfers by index in the part) of a bulk creation sent in several
        requests, until :meth:`create_staged_jobs` creates them all; False when that upload was created already.
        ``checked_app_versions``: the apps (and versions) the rows' parameters were checked against, as for
        :meth:`create_jobs`."""
        raise ValidationError("this server does not take bulk creations in parts; send the jobs in requests of their own")

    def create_staged_jobs(self, upload: str, parts: int, again: bool = False, jobs: int = 0) -> Tuple[List[int], List[str], float]:
        """Create the jobs of parts ``0 .. parts-1`` of ``upload`` in one transaction, as :meth:`create_jobs` does.
        ``again``: an upload applied already is answered with what it created (a relay's command sent twice), instead
        of being refused. ``jobs``: how many the parts hold, as the client counts them (a relay waits for its site in
        proportion)."""
        raise ValidationError("this server does not take bulk creations in parts; send the jobs in requests of their own")

    def drop_upload(self, upload: str) -> int:
        """Forget the parts of an upload that will not be created; how many there were."""
        raise ValidationError("this server does not take bulk creations in parts")

    @abstractmethod
    def update_jobs(self, updates: Sequence[Tuple[int, Dict[str, Any]]], parents: Sequence[Tuple[int, List[int]]] = (),
                    changes: Sequence[StateChange] = (), reads: Sequence[Read] = ()) -> None:
        """Write fields (stored form), add parents and apply state changes (strict), in one transaction. ``reads``:
        what each save was made on; a save that conflicts with what moved since is refused (balsam.db.merge)."""

    @abstractmethod
    def delete_jobs(self, ids: Sequence[int]) -> int:
        """Delete jobs (refused while a live launcher holds any); how many were deleted."""

    @abstractmethod
    def apply_changes(self, changes: Sequence[StateChange], session_id: Optional[int] = None) -> Rejected:
        """A batch of state changes applied leniently (the refused ones returned). With ``session_id`` (a launcher's
        status batch), every change must be for a job that lease holds and may carry only LAUNCHER_FIELDS."""

    # ------------------------------------------------------------------ other rows
    @abstractmethod
    def update_rows(self, table: str, updates: Sequence[Tuple[int, Dict[str, Any]]]) -> None:
        """Write fields (stored form) of site, app, batch_job or transfer_item rows."""

    @abstractmethod
    def create_batch_job(self, fields: Dict[str, Any]) -> int:
        """A new BatchJob, validated against the site's policies; its id."""

    @abstractmethod
    def delete_rows(self, table: str, ids: Sequence[int]) -> int:
        """Delete apps (with their jobs) or inactive batch jobs."""

    @abstractmethod
    def sync_app(self, fields: Dict[str, Any], rename_from: Optional[str] = None) -> int:
        """Create or update the app of this name (site owner only); its id."""

    # ------------------------------------------------------------------ sessions
    @abstractmethod
    def create_session(self, *, host: str, pid: int, batch_job_id: Optional[int], label: str) -> int:
        """A new lease; its id."""

    @abstractmethod
    def tick(self, session_id: int) -> None:
        """Renew a lease (SessionExpired if it is gone)."""

    @abstractmethod
    def acquire(self, session_id: int, max_num_jobs: int, wait_s: float = 0.0, **constraints: Any) -> List[Dict[str, Any]]:
        """Lock up to ``max_num_jobs`` runnable jobs to the lease; waits up to ``wait_s`` when none are runnable."""

    @abstractmethod
    def release(self, session_id: int) -> int:
        """End a lease: its running jobs time out, the rest unlock; how many timed out."""

    # ------------------------------------------------------------------ DAG templates (balsam.db.dags)
    def dag_save(self, name: str, description: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        """Store (or replace) a DAG template, checked; its row (id, name, description, spec, version, ...)."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def dag_list(self) -> List[Dict[str, Any]]:
        """Every DAG of the site, with ``num_instances``."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def dag_delete(self, name: str) -> int:
        """Forget a DAG and its instance records (its jobs stay)."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def dag_instantiate(self, name: str, records: Sequence[Dict[str, Any]]) -> List[int]:
        """One instance per record of placeholder values, in one transaction; the instance ids."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def dag_instances(self, dag_id: int, *, ids: Optional[Sequence[int]] = None, state: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, offset: int = 0) -> List[Dict[str, Any]]:
        """A DAG's instances (id, dag_id, params, created), optionally those with a job in ``state``."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def dag_counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        """Jobs by state for each instance."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def dag_retry(self, instance_id: int) -> int:
        """Reset an instance's failed and killed jobs; how many."""
        raise ValidationError(f"DAGs cannot be reached through a {self.kind} backend")

    def queued_command(self, command_id: int) -> Dict[str, Any]:
        """A write the relay queued for its site: {"state": "pending" | "applied" | "rejected", "result", and for a
        rejection "error" (the site's refusal as a BalsamError)}. Only a relay queues writes."""
        raise ObjectDoesNotExist(f"no queued command {command_id}: only writes made through a relay are queued")

    # ------------------------------------------------------------------ maintenance (balsam.db.maintenance)
    def db_check(self, fix: bool = False) -> Dict[str, Any]:
        """SQLite integrity and the store's consistency: {"db", "problems", "fixed", "remaining"} (lists of
        {name, count, description, fixable}); with ``fix``, what can be repaired is, in one transaction."""
        raise ValidationError(f"the DB cannot be checked through a {self.kind} backend")

    def db_backup(self, dest: str, force: bool = False) -> Dict[str, Any]:
        """An online copy of the DB at ``dest`` (a file, or a directory to name it in): {"path", "bytes"}."""
        raise ValidationError(f"the DB cannot be backed up through a {self.kind} backend")

    def db_vacuum(self) -> Dict[str, Any]:
        """Compact the DB: {"db", "before", "after"} in bytes."""
        raise ValidationError(f"the DB cannot be compacted through a {self.kind} backend")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def _initial_states(n: int, states: Dict[Any, str]) -> List[str]:
    """The initial state of each of ``n`` new jobs: STAGED_IN but those ``states`` names by index."""
    initial = [JobState.STAGED_IN.value] * n
    for i, state in states.items():
        initial[int(i)] = state
    return initial


class LocalBackend(ExactlyOnce, Backend):
    """The site's SQLite store on its home host."""

    kind = "local"

    def __init__(self, store: Store, *, host: str = "", expiry_s: float = 300.0) -> None:
        self.store = store
        self.host = host or store.host
        self.expiry_s = expiry_s

    # ------------------------------------------------------------------ reads
    def site_row(self, columns: Sequence[str]) -> Row:
        row = self.store.conn.execute(f"SELECT {', '.join(columns)} FROM site LIMIT 1").fetchone()
        if row is None:
            raise ObjectDoesNotExist(f"{self.store.db_path}: the site DB has no site row")
        return tuple(row)

    def select(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
               limit: Optional[int] = None, offset: int = 0) -> List[Row]:
        return q.select(self.store.conn, spec_for(table), filters, columns=columns, order_by=order_by, limit=limit, offset=offset)

    keyset = True

    def page(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (), limit: int,
             after: Optional[Sequence[Any]] = None, offset: int = 0) -> Tuple[List[Row], Optional[List[Any]]]:
        return q.page(self.store.conn, spec_for(table), filters, columns=columns, order_by=order_by, limit=limit, after=after,
                      offset=offset)

    def count(self, table: str, filters: Dict[str, Any]) -> int:
        return q.count(self.store.conn, spec_for(table), filters)

    def count_by(self, table: str, filters: Dict[str, Any], column: str) -> Dict[Any, int]:
        spec = spec_for(table)
        columns = {r[1] for r in self.store.conn.execute(f"PRAGMA table_info({spec.table})")}
        if column not in columns:
            raise ValidationError(f"cannot group {spec.noun} by {column!r}")
        return q.count_by(self.store.conn, spec, filters, column)

    def ids(self, table: str, filters: Dict[str, Any]) -> List[int]:
        return q.ids(self.store.conn, spec_for(table), filters)

    def last_event_message(self, job_id: int) -> str:
        from balsam.db.jobs import last_event_message

        return last_event_message(self.store.conn, job_id)

    def data_version(self) -> Optional[int]:
        return self.store.data_version()

    def index_step(self) -> int:
        """Index a few more jobs' workdirs for substring filters (balsam.db.search); how many (0: up to date)."""
        from balsam.db import search

        if self.store.read_only or not search.pending(self.store.conn):
            return 0
        with self.store.write() as conn:
            return search.catch_up(conn)

    def events_since(self, after: Optional[int], limit: int) -> Tuple[Optional[int], List[Row]]:
        """Events with ids above ``after`` (None: none yet, just the newest id) for the change stream: (last id, rows)."""
        if after is None:
            row = self.store.conn.execute("SELECT max(id) FROM event").fetchone()
            return (int(row[0]) if row and row[0] is not None else 0), []
        rows = self.store.conn.execute("SELECT id, job_id, timestamp, from_state, to_state FROM event WHERE id > ? ORDER BY id LIMIT ?",
                                       (after, limit)).fetchall()
        return (int(rows[-1][0]) if rows else after), rows

    def app_code(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        from balsam.db.apps import app_code

        return app_code(self.store.conn, ids)

    # ------------------------------------------------------------------ DAG templates
    def dag_save(self, name: str, description: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        from balsam.db import dags

        with self.store.write() as conn:
            return dags.save_dag(conn, name, description, spec)

    def dag_list(self) -> List[Dict[str, Any]]:
        from balsam.db import dags

        with self.store.read() as conn:
            return dags.list_dags(conn)

    def dag_delete(self, name: str) -> int:
        from balsam.db import dags

        with self.store.write() as conn:
            return dags.delete_dag(conn, name)

    def dag_instantiate(self, name: str, records: Sequence[Dict[str, Any]]) -> List[int]:
        from balsam.db import dags

        with self.store.write() as conn:
            return dags.instantiate(conn, name, records)

    def dag_instances(self, dag_id: int, *, ids: Optional[Sequence[int]] = None, state: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, offset: int = 0) -> List[Dict[str, Any]]:
        from balsam.db import dags

        with self.store.read() as conn:
            return dags.instances(conn, dag_id, ids=ids, state=state, limit=limit, offset=offset)

    def dag_counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        from balsam.db import dags

        with self.store.read() as conn:
            return dags.instance_counts(conn, instance_ids)

    def dag_retry(self, instance_id: int) -> int:
        from balsam.db import dags

        with self.store.write() as conn:
            return dags.retry_instance(conn, instance_id)

    # ------------------------------------------------------------------ jobs
    def create_jobs(self, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                    checked_app_versions: Optional[Dict[int, int]] = None) -> Tuple[List[int], List[str], float]:
        from balsam.db import jobs as job_db

        now = time.time()
        with self.store.write() as conn:
            first, states = job_db.insert_jobs(conn, rows, transfers, now=now, checked_app_versions=checked_app_versions)
        n = len(rows)
        initial = [JobState.STAGED_IN.value] * n
        for i, state in states.items():
            initial[i] = state
        return list(range(first, first + n)), initial, now

    def stage_jobs(self, upload: str, part: int, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                   checked_app_versions: Optional[Dict[int, int]] = None) -> bool:
        from balsam.db import uploads
        from balsam.db.codec import dumps

        staged: Dict[str, Any] = {"rows": [r[:-1] for r in rows], "transfers": {str(i): t for i, t in transfers.items()},
                                  "versions": [[a, v] for a, v in (checked_app_versions or {}).items()]}
        if any(r[-1] is not None for r in rows):  # run() arguments JSON cannot hold (the handler checked who sent them)
            import base64

            staged["pickled"] = [None if r[-1] is None else base64.b64encode(bytes(r[-1])).decode() for r in rows]
        body = dumps(staged).encode()
        with self.store.write() as conn:
            return uploads.stage_part(conn, upload, part, len(rows), body)

    def create_staged_jobs(self, upload: str, parts: int, again: bool = False, jobs: int = 0) -> Tuple[List[int], List[str], float]:
        import base64

        from balsam.db import jobs as job_db
        from balsam.db import uploads
        from balsam.db.codec import dumps, loads_body

        now = time.time()
        with self.store.write() as conn:
            done = uploads.applied_result(conn, upload) if again else None
            if done is not None:
                kept = loads_body(done)
                return list(range(kept["first"], kept["first"] + kept["n"])), _initial_states(kept["n"], kept["states"]), kept["created"]
            rows: List[Row] = []
            transfers: Dict[int, Dict[str, Any]] = {}
            checked: Dict[int, int] = {}
            conflicting: Set[int] = set()
            for body in uploads.take_parts(conn, upload, parts, now=now):
                part = loads_body(body)
                base = len(rows)
                transfers.update((base + int(i), t) for i, t in part["transfers"].items())
                pickled = part.get("pickled")
                if pickled:
                    rows.extend((*r, None if pk is None else base64.b64decode(pk)) for r, pk in zip(part["rows"], pickled))
                else:
                    rows.extend([(*r, None) for r in part["rows"]])
                # An app whose parts were checked against different versions (re-synced between parts) is checked again.
                for a, v in part.get("versions") or ():
                    if checked.setdefault(int(a), int(v)) != int(v):
                        conflicting.add(int(a))
            for a in conflicting:
                del checked[a]
            first, states = job_db.insert_jobs(conn, rows, transfers, now=now, checked_app_versions=checked)
            uploads.record_result(conn, upload, dumps({"first": first, "n": len(rows), "states": states, "created": now}).encode())
        return list(range(first, first + len(rows))), _initial_states(len(rows), states), now

    def drop_upload(self, upload: str) -> int:
        from balsam.db import uploads

        with self.store.write() as conn:
            return uploads.drop_upload(conn, upload)

    def update_jobs(self, updates: Sequence[Tuple[int, Dict[str, Any]]], parents: Sequence[Tuple[int, List[int]]] = (),
                    changes: Sequence[StateChange] = (), reads: Sequence[Read] = ()) -> None:
        from balsam.db import jobs as job_db
        from balsam.db.merge import check_reads

        with self.store.write() as conn:
            check_reads(conn, reads, updates, [(ch.job_id, ch.state) for ch in changes])
            if updates:
                job_db.update_job_fields(conn, updates)
            for child, new in parents:
                job_db.add_parents(conn, child, new)
            if changes:
                job_db.apply_state_changes(conn, changes, strict=True)

    def delete_jobs(self, ids: Sequence[int]) -> int:
        from balsam.db import jobs as job_db

        with self.store.write() as conn:
            return job_db.delete_jobs(conn, list(ids))

    def apply_changes(self, changes: Sequence[StateChange], session_id: Optional[int] = None) -> Rejected:
        from balsam.db.jobs import apply_state_changes

        changes = launcher_changes(changes, session_id)
        index = {id(ch): i for i, ch in enumerate(changes)}
        with self.store.write() as conn:
            rejected = apply_state_changes(conn, changes, strict=False).rejected
        return [(index[id(ch)], why) for ch, why in rejected if id(ch) in index]

    # ------------------------------------------------------------------ other rows
    def update_rows(self, table: str, updates: Sequence[Tuple[int, Dict[str, Any]]]) -> None:
        if table == "transfer_item":
            from balsam.db import transfers as transfer_db

            with self.store.write() as conn:
                transfer_db.update_items(conn, list(updates))
            return
        allowed = _WRITABLE.get(table)
        if allowed is None:
            raise ValidationError(f"{table} rows cannot be updated")
        with self.store.write() as conn:
            for row_id, fields in updates:
                bad = set(fields) - allowed
                if bad:
                    raise ValidationError(f"{table} field {sorted(bad)[0]!r} cannot be updated")
                if not fields:
                    continue
                if table == "batch_job":  # its one checked writer (fields, the state table, leases when it ends)
                    from balsam.db import batch_jobs as batch_db

                    given = {k: (json.loads(v) if k in _BATCH_JSON and isinstance(v, str) else v) for k, v in fields.items()}
                    state = given.pop("state", None)
                    if not conn.execute("SELECT 1 FROM batch_job WHERE id=?", (row_id,)).fetchone():
                        raise ObjectDoesNotExist(f"no batch_job {row_id}")
                    batch_db.update_batch_job(conn, row_id, state=state, **given)
                    continue
                cols = list(fields)
                stamp = ", last_update=?" if table in ("app", "batch_job") else ""
                params = [fields[c] for c in cols] + ([time.time()] if stamp else []) + [row_id]
                cur = conn.execute(f"UPDATE {table} SET {', '.join(f'{c}=?' for c in cols)}{stamp}, version=version+1 WHERE id=?",
                                   params)
                if cur.rowcount == 0:
                    raise ObjectDoesNotExist(f"no {table} {row_id}")

    def create_batch_job(self, fields: Dict[str, Any]) -> int:
        from balsam.db import batch_jobs as batch_db

        known = {"num_nodes", "wall_time_min", "job_mode", "queue", "project", "optional_params", "filter_tags", "partitions"}
        bad = set(fields) - known
        if bad:
            raise ValidationError(f"unknown BatchJob field {sorted(bad)[0]!r}")
        with self.store.write() as conn:
            return int(batch_db.create_batch_job(conn, **fields))

    def delete_rows(self, table: str, ids: Sequence[int]) -> int:
        from balsam.db import batch_jobs as batch_db
        from balsam.db import jobs as job_db

        n = 0
        with self.store.write() as conn:
            for row_id in ids:
                if table == "app":
                    job_ids = [r[0] for r in conn.execute("SELECT id FROM job WHERE app_id=?", (row_id,))]
                    job_db.delete_jobs(conn, job_ids)
                    n += conn.execute("DELETE FROM app WHERE id=?", (row_id,)).rowcount
                elif table == "batch_job":  # never submitted or ended: gone now; queued or running: cancelled, then gone
                    from balsam.db import batch_jobs as batch_db

                    n += batch_db.delete_batch_job(conn, row_id) != "missing"
                else:
                    raise ValidationError(f"{table} rows cannot be deleted")
        return n

    def sync_app(self, fields: Dict[str, Any], rename_from: Optional[str] = None) -> int:
        from balsam.exceptions import AppError

        now = time.time()
        name = str(fields["name"])
        site_id = int(self.site_row(("id",))[0])
        with self.store.write() as conn:
            if rename_from and rename_from != name:
                if conn.execute("UPDATE app SET name=? WHERE name=?", (name, rename_from)).rowcount == 0:
                    raise AppError(f"no app named {rename_from!r} at this site to rename")
            conn.execute(
                "INSERT INTO app(site_id, name, description, kind, serialized_class, source_code, parameters, var_keyword, "
                "transfers, created, last_update) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                "description=excluded.description, kind=excluded.kind, serialized_class=excluded.serialized_class, "
                "source_code=excluded.source_code, parameters=excluded.parameters, var_keyword=excluded.var_keyword, "
                "transfers=excluded.transfers, last_update=excluded.last_update, version=version+1",
                (site_id, name, str(fields.get("description") or ""), str(fields["kind"]), str(fields["serialized_class"]),
                 str(fields["source_code"]), str(fields.get("parameters") or "{}"), 1 if fields.get("var_keyword") else 0,
                 str(fields.get("transfers") or "{}"), now, now),
            )
            return int(conn.execute("SELECT id FROM app WHERE name=?", (name,)).fetchone()[0])

    # ------------------------------------------------------------------ sessions
    def create_session(self, *, host: str, pid: int, batch_job_id: Optional[int], label: str) -> int:
        from balsam.db import sessions

        with self.store.write() as conn:
            sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
            sid = sessions.create_session(conn, host=host, pid=pid, batch_job_id=batch_job_id, label=label)
            if host != self.host:
                conn.execute("UPDATE session SET pid_start=NULL WHERE id=?", (sid,))  # not a process of this host
        return int(sid)

    def tick(self, session_id: int) -> None:
        from balsam.db import sessions

        with self.store.write() as conn:
            sessions.tick(conn, session_id)

    def acquire(self, session_id: int, max_num_jobs: int, wait_s: float = 0.0, *, json_text: bool = False,
                **constraints: Any) -> List[Dict[str, Any]]:
        """(``json_text``: the JSON columns as stored text, for a server that passes them on as they are.)"""
        from balsam.db import sessions

        unknown = set(constraints) - ACQUIRE_CONSTRAINTS
        if unknown:
            raise ValidationError(f"unknown acquire constraint {sorted(unknown)[0]!r}")
        deadline = time.monotonic() + min(MAX_ACQUIRE_WAIT_S, max(0.0, float(wait_s)))
        while True:
            with self.store.write() as conn:
                sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host)
                jobs = sessions.acquire(conn, session_id, max_num_jobs=max_num_jobs, json_text=json_text, **constraints)
            if jobs or time.monotonic() >= deadline:
                return jobs
            version = self.store.data_version()
            while time.monotonic() < deadline and self.store.data_version() == version:
                time.sleep(0.01)

    def release(self, session_id: int) -> int:
        from balsam.db import sessions

        with self.store.write() as conn:
            return int(sessions.release(conn, session_id))

    # ------------------------------------------------------------------ maintenance
    def db_check(self, fix: bool = False) -> Dict[str, Any]:
        from balsam.db import maintenance

        problems = maintenance.check(self.store.conn)
        damaged = any(p.name == "integrity" for p in problems)
        fixed = maintenance.repair(self.store) if fix and not damaged and any(p.fixable for p in problems) else []
        remaining = maintenance.check(self.store.conn) if fixed else problems
        return {"db": str(self.store.db_path), "problems": [vars(p) for p in problems], "fixed": [vars(p) for p in fixed],
                "remaining": [vars(p) for p in remaining]}

    def db_backup(self, dest: str, force: bool = False) -> Dict[str, Any]:
        from pathlib import Path

        from balsam.db import maintenance

        target = Path(dest)
        if not target.is_absolute():
            raise ValidationError(f"dest: {dest!r} must be an absolute path (it is written by the site's agent)")
        if target.is_dir():
            name = self.store.get_meta("site_name") or "site"
            target = target / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.db"
        if target.exists() and not force:
            raise ValidationError(f"{target} exists; pass force to overwrite it")
        if not target.parent.is_dir():
            raise ValidationError(f"{target.parent}: no such directory")
        return {"path": str(target), "bytes": maintenance.backup(self.store, target)}

    def db_vacuum(self) -> Dict[str, Any]:
        from balsam.db import maintenance

        before, after = maintenance.vacuum(self.store)
        return {"db": str(self.store.db_path), "before": before, "after": after}
