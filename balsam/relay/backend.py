"""RelayBackend: the Backend interface (DESIGN.md section 5) for one caller of the relay.

Reads come from the mirrors of the caller's sites (a user token: every site of that user; a site token: its
own site only), so another user's rows simply do not exist for the caller. Writes never touch the mirrors:
each becomes a command for the site that owns the row (``site_of(id)``; new jobs go to the site of their
app). The call then waits a bounded time for the site to apply it (the site's sync service long-polls for
commands, applies them through its LocalBackend, pushes the resulting rows and answers): an applied command
answers with the site's result, a refused one raises the site's error, and a site that does not answer in
time gets :class:`balsam.exceptions.CommandPending` naming the queued command (the provisional handle); the
write happens when the site next syncs.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from balsam import exceptions as exc
from balsam.db import launch_flags
from balsam.db.backend import Backend, Row
from balsam.db.batch_jobs import check_batch_values, check_policies
from balsam.db.creation import launch_params_of
from balsam.db.ids import site_of
from balsam.db.jobs import StateChange
from balsam.db.merge import Read, read_to_wire
from balsam.db.once import Rejected
from balsam.relay import mirror
from balsam.relay.store import Caller, RelayStore
from balsam.sync import encode_change as change_to_wire
from balsam.sync import encode_fields as _plain

DEFAULT_WAIT_S = 20.0
"""How long a write waits for its site to apply it before answering with the queued command."""
OFFLINE_AFTER_S = 60.0
"""A site not seen for this long is offline (an online agent long-polls for commands every 20 s)."""
OFFLINE_WAIT_S = 0.5
"""How long a write for an offline site waits (it may be coming back) before answering with the queued command."""
COMMIT_JOBS_PER_S = 1000.0
"""A commit of a bulk creation in parts waits for its (online) site at least a second per this many jobs: the site
creates them and pushes their rows before it answers (a 100,000-job commit: 100 s)."""
ANSWER_LOOK_S = 0.25
"""A write waiting for its site's answer looks at the database this often besides being woken."""
_KINDS = {name: getattr(exc, name) for name in dir(exc) if isinstance(getattr(exc, name), type)
          and issubclass(getattr(exc, name), exc.BalsamError)}


def site_error(result: Any) -> exc.BalsamError:
    """The Balsam exception a site's rejection names (only classes of balsam.exceptions are built)."""
    info = result if isinstance(result, dict) else {}
    message = str(info.get("message") or "the site refused the command")
    cls = _KINDS.get(str(info.get("kind") or ""), exc.ValidationError)
    try:
        return cls(message)  # type: ignore[no-any-return]
    except TypeError:
        return exc.ValidationError(message)


def pending_reason(site: Dict[str, Any]) -> str:
    """Why a write waits for a site: "queued for site NAME (offline since TIME)", or not answering yet."""
    last_seen = site.get("last_seen")
    if last_seen is None:
        return f"queued for site {site['name']} (never seen online)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(last_seen)))
    if time.time() - float(last_seen) > OFFLINE_AFTER_S:
        return f"queued for site {site['name']} (offline since {since})"
    return f"queued for site {site['name']} (online, last seen {since}, busy)"


class RelayBackend(Backend):
    """The caller's sites at the relay (``caller`` None: nobody's, for routes that need no credentials)."""

    kind = "relay"

    def __init__(self, store: RelayStore, caller: Optional[Caller], *, site_ids: Optional[Sequence[int]] = None,
                 wait_s: float = DEFAULT_WAIT_S, stopping: Optional[threading.Event] = None) -> None:
        self.store = store
        self.caller = caller
        self.wait_s = wait_s
        self.stopping = stopping or threading.Event()
        """Set when the relay's server stops: waits (long polls, writes waiting for their site) end at their next look."""
        self._site_ids: Optional[List[int]] = None if site_ids is None else [int(s) for s in site_ids]

    # ------------------------------------------------------------------ scope
    @property
    def site_ids(self) -> List[int]:
        """The sites this caller may read and write (computed once per request)."""
        if self._site_ids is None:
            caller = self.caller
            self._site_ids = [] if caller is None else [int(s["id"]) for s in self.store.sites(caller)]
        return self._site_ids

    def narrow(self, site_ids: Sequence[int]) -> "RelayBackend":
        """The same caller restricted to some of its sites (a ``site_id`` filter); others' sites give no rows."""
        wanted = {int(s) for s in site_ids}
        return RelayBackend(self.store, self.caller, site_ids=[s for s in self.site_ids if s in wanted], wait_s=self.wait_s,
                            stopping=self.stopping)

    def _need_caller(self) -> Caller:
        if self.caller is None:
            raise exc.ServiceError("this needs a relay token")
        return self.caller

    def _owner(self, row_id: int, what: str) -> int:
        site = site_of(int(row_id))
        if site not in self.site_ids:
            raise exc.ObjectDoesNotExist(f"no {what} {row_id}")
        return site

    # ------------------------------------------------------------------ reads
    def site_row(self, columns: Sequence[str]) -> Row:
        sites = [s for s in self.store.sites(self._need_caller()) if s["id"] in self.site_ids]
        if len(sites) != 1:
            raise exc.ValidationError("several sites are in scope: choose one (site_id)" if sites else "no site in scope")
        return site_tuple(sites[0], columns)

    def select(self, table: str, filters: Dict[str, Any], *, columns: Sequence[str], order_by: Sequence[str] = (),
               limit: Optional[int] = None, offset: int = 0) -> List[Row]:
        with self.store.connect() as c:
            return mirror.select(c, table, self.site_ids, filters, columns, order_by, limit, offset)

    def count(self, table: str, filters: Dict[str, Any]) -> int:
        with self.store.connect() as c:
            return mirror.count(c, table, self.site_ids, filters)

    def count_by(self, table: str, filters: Dict[str, Any], column: str) -> Dict[Any, int]:
        with self.store.connect() as c:
            return mirror.count_by(c, table, self.site_ids, filters, column)

    def last_event_message(self, job_id: int) -> str:
        if not self.ids("job", {"id": [int(job_id)]}):
            raise exc.ObjectDoesNotExist(f"no job {job_id}")
        rows = self.select("event", {"job_id": [int(job_id)]}, columns=("data",), order_by=("-timestamp", "-id"), limit=50)
        for (data,) in rows:
            try:
                parsed = json.loads(data) if isinstance(data, str) else data
            except ValueError:
                continue
            if isinstance(parsed, dict) and parsed.get("message"):
                return str(parsed["message"])
        return ""

    def why(self, job_id: int) -> List[str]:
        """Why one of the caller's jobs is in its state, as the relay's mirrors tell (``GET /v1/jobs/{id}/why``):
        the parents it waits for, where and in what state, or those that will never finish."""
        return self.store.why(self._need_caller(), job_id)

    def data_version(self) -> Optional[int]:
        return None

    def site_parts(self) -> List[Tuple[int, "RelayBackend"]]:
        """Each of the caller's sites as a backend of its own, for the change stream (asked again on every poll:
        a site linked since joins it; another user's never does)."""
        self._site_ids = None
        return [(site, self.narrow([site])) for site in self.site_ids]

    def events_since(self, after: Optional[int], limit: int) -> Tuple[int, List[Row]]:
        """The events the one site in scope pushed with ids above ``after`` (None: none yet, just its newest id), for
        the change stream: (the last id, rows of id, job_id, timestamp, from_state, to_state)."""
        if len(self.site_ids) != 1:
            return int(after or 0), []
        with self.store.connect() as c:
            return mirror.events_since(c, self.site_ids[0], after, limit)

    def app_code(self, ids: Sequence[int]) -> List[Dict[str, Any]]:
        raise exc.ServiceError("app code stays at its site: the relay never holds it")

    # ------------------------------------------------------------------ commands
    def run_command(self, site_id: int, kind: str, body: Dict[str, Any], wait_s: Optional[float] = None) -> Any:
        """Queue a command for a site and wait (bounded: ``wait_s``, the relay's setting by default) for its answer:
        the site's result, its refusal raised, or CommandPending naming the queued command."""
        caller = self._need_caller()
        if site_id not in self.site_ids:
            raise exc.ObjectDoesNotExist(f"no site {site_id}")
        site = self.store.site_for(caller, site_id)
        command_id = self.store.add_command(caller, site_id, kind, body)
        last_seen = site.get("last_seen")
        offline = last_seen is None or time.time() - float(last_seen) > OFFLINE_AFTER_S
        # A site that has not polled for a while is offline: the write is queued at once instead of waiting.
        wait_s = self.wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + (min(wait_s, OFFLINE_WAIT_S) if offline else wait_s)
        while True:
            seen = self.store.generation()
            row = self.store.command(caller, command_id)
            if row["state"] == "applied":
                return row["result"]
            if row["state"] == "rejected":
                raise site_error(row["result"])
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():  # a stopping relay answers at once: the command stays queued
                raise exc.CommandPending(f"{pending_reason(site)} as command {command_id}: applied when the site's agent next "
                                         "syncs", command_id)
            # Woken when the site's answer arrives at this relay process; a look every ANSWER_LOOK_S finds one that
            # arrived at another process over the same database.
            self.store.wait_change(seen, min(left, ANSWER_LOOK_S))

    def _site(self, site_id: int) -> Optional[Dict[str, Any]]:
        """One of the caller's sites as the relay last heard of it (None: not one of them)."""
        return next((s for s in self.store.sites(self._need_caller()) if int(s["id"]) == int(site_id)), None)

    def _refuse_flags(self, site_id: int, rows: Sequence[Row]) -> None:
        """ValidationError unless the new jobs' launch_params name flags their site allows (:func:`_refuse_flags_of`)."""
        site: Optional[Dict[str, Any]] = None
        for where, launch_params in launch_params_of(rows):
            site = site or self._site(site_id)
            _refuse_flags_of(launch_params, where, site)

    def _by_site(self, ids: Sequence[int], what: str) -> Dict[int, List[int]]:
        out: Dict[int, List[int]] = {}
        for i in ids:
            out.setdefault(self._owner(int(i), what), []).append(int(i))
        return out

    # ------------------------------------------------------------------ jobs
    def create_jobs(self, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                    checked_app_versions: Optional[Dict[int, int]] = None) -> Tuple[List[int], List[str], float]:
        # The site applying the command checks parameters against its own app versions.
        groups: Dict[int, List[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(self._owner(int(r[1]), "app"), []).append(i)
        for site, idx in groups.items():
            self._refuse_flags(site, [rows[i] for i in idx])
        ids: List[int] = [0] * len(rows)
        states: List[str] = [""] * len(rows)
        created = time.time()
        for site, idx in groups.items():
            body = {"rows": [list(rows[i]) for i in idx], "transfers": {str(n): transfers[i] for n, i in enumerate(idx) if i in transfers}}
            result = self.run_command(site, "create_jobs", body)
            for n, i in enumerate(idx):
                ids[i] = int(result["ids"][n])
                states[i] = str(result["states"][n])
            created = float(result.get("created") or created)
        return ids, states, created

    # A bulk creation in parts goes to its one site as commands: each part is kept in the site's DB (as from any
    # other host), then one command creates them all in one transaction there (all or none). The site applies each
    # command once, and answers a commit it gets again (a user's retry) with what the first one created.
    def _upload_site(self, rows: Sequence[Row] = ()) -> int:
        sites = sorted({self._owner(int(r[1]), "app") for r in rows}) or self.site_ids
        if len(sites) != 1 or sites[0] not in self.site_ids:
            raise exc.ValidationError("site_id: a bulk creation in parts goes to one site: name it (site_id), and give "
                                      "each site's jobs an upload of their own")
        return int(sites[0])

    def stage_jobs(self, upload: str, part: int, rows: Sequence[Row], transfers: Dict[int, Dict[str, Any]],
                   checked_app_versions: Optional[Dict[int, int]] = None) -> bool:
        self._refuse_flags(self._upload_site(rows), rows)
        body = {"upload": upload, "part": int(part), "rows": [list(r) for r in rows],
                "transfers": {str(i): t for i, t in transfers.items()}}
        return bool(self.run_command(self._upload_site(rows), "stage_jobs", body))

    def create_staged_jobs(self, upload: str, parts: int, again: bool = False, jobs: int = 0) -> Tuple[List[int], List[str], float]:
        # An online site creates the jobs and pushes their rows before it answers: a big commit is waited for longer.
        wait_s = max(self.wait_s, jobs / COMMIT_JOBS_PER_S) if self.wait_s > OFFLINE_WAIT_S else self.wait_s
        result = self.run_command(self._upload_site(), "commit_jobs", {"upload": upload, "parts": int(parts)}, wait_s=wait_s)
        return [int(i) for i in result["ids"]], [str(s) for s in result["states"]], float(result.get("created") or time.time())

    def drop_upload(self, upload: str) -> int:
        return int(self.run_command(self._upload_site(), "drop_upload", {"upload": upload}) or 0)

    def update_jobs(self, updates: Sequence[Tuple[int, Dict[str, Any]]], parents: Sequence[Tuple[int, List[int]]] = (),
                    changes: Sequence[StateChange] = (), reads: Sequence[Read] = ()) -> None:
        per: Dict[int, Dict[str, List[Any]]] = {}
        sites: Dict[int, Dict[str, Any]] = {}  # the caller's sites, read once for all the updates that need them
        for job_id, fields in updates:
            if fields.get("launch_params"):
                sites = sites or {int(s["id"]): s for s in self.store.sites(self._need_caller())}
                _refuse_flags_of(fields["launch_params"], f"job {job_id}: ", sites.get(self._owner(job_id, "job")))
            per.setdefault(self._owner(job_id, "job"), {"updates": [], "parents": [], "changes": []})["updates"].append(
                [int(job_id), _plain(fields)])
        for job_id, new in parents:
            per.setdefault(self._owner(job_id, "job"), {"updates": [], "parents": [], "changes": []})["parents"].append(
                [int(job_id), [int(p) for p in new]])
        for ch in changes:
            if ch.session_id is not None:
                raise exc.ValidationError("a state change made through the relay cannot name a launcher's lease")
            per.setdefault(self._owner(ch.job_id, "job"), {"updates": [], "parents": [], "changes": []})["changes"].append(
                change_to_wire(ch))
        read_by_id = {int(r.job_id): r for r in reads}
        for site, body in per.items():
            ids = sorted({int(u[0]) for u in body["updates"]} | {int(p[0]) for p in body["parents"]}
                         | {int(c["job_id"]) for c in body["changes"]})
            # What each save was made on goes to the site, which merges it with what moved there since (or refuses
            # it). A caller that says nothing of its read (an older client) gets the version of the relay's copy:
            # the site refuses the edit if its row moved on since.
            body["reads"] = [[i, read_to_wire(read_by_id[i])] for i in ids if i in read_by_id]
            unread = [i for i in ids if i not in read_by_id]
            body["versions"] = [[int(i), int(v)] for i, v in self.select("job", {"id": unread}, columns=("id", "version"))] if unread else []
            self.run_command(site, "update_jobs", body)

    def delete_jobs(self, ids: Sequence[int]) -> int:
        n = 0
        for site, chunk in self._by_site(ids, "job").items():
            n += int(self.run_command(site, "delete_jobs", {"ids": chunk}) or 0)
        return n

    def apply_changes(self, changes: Sequence[StateChange], session_id: Optional[int] = None) -> Rejected:
        if session_id is not None:
            raise exc.ServiceError("launchers report to their site, not to the relay")
        per: Dict[int, List[int]] = {}
        for i, ch in enumerate(changes):
            per.setdefault(self._owner(ch.job_id, "job"), []).append(i)
        rejected: Rejected = []
        for site, idx in per.items():
            result = self.run_command(site, "apply_changes", {"changes": [change_to_wire(changes[i]) for i in idx]})
            rejected.extend((idx[int(n)], str(why)) for n, why in result or [])
        return sorted(rejected)

    # ------------------------------------------------------------------ other rows
    def update_rows(self, table: str, updates: Sequence[Tuple[int, Dict[str, Any]]]) -> None:
        if table not in ("app", "batch_job", "transfer_item"):
            raise exc.ValidationError(f"{table} rows cannot be changed through the relay")
        per: Dict[int, List[Any]] = {}
        for row_id, fields in updates:
            per.setdefault(self._owner(row_id, table.replace("_", " ")), []).append([int(row_id), _plain(fields)])
        for site, items in per.items():
            self.run_command(site, "update_rows", {"table": table, "updates": items})

    def create_batch_job(self, fields: Dict[str, Any]) -> int:
        fields = dict(fields)
        site = fields.pop("site_id", None)
        if site is None:
            if len(self.site_ids) != 1:
                raise exc.ValidationError("site_id: name the site the BatchJob is for")
            site = self.site_ids[0]
        if int(site) not in self.site_ids:
            raise exc.ObjectDoesNotExist(f"no site {site}")
        # Refused here, at once, as the site would refuse it (a bad value, or its queue's policies as the site last
        # reported them), instead of queued for the site and rejected only after its next sync; the site still judges.
        checked = check_batch_values(fields)
        known = self._site(int(site)) or {}
        queues, projects, optional = (_reported(known, name) for name in ("allowed_queues", "allowed_projects", "optional_batch_job_params"))
        if isinstance(queues, dict) and isinstance(projects, list):
            check_policies(checked, queues, projects, optional if isinstance(optional, dict) else {}, f"at site {known.get('name') or site}")
        return int(self.run_command(int(site), "create_batch_job", {"fields": fields}))

    def delete_rows(self, table: str, ids: Sequence[int]) -> int:
        if table not in ("app", "batch_job"):
            raise exc.ValidationError(f"{table} rows cannot be deleted")
        n = 0
        for site, chunk in self._by_site(ids, table.replace("_", " ")).items():
            n += int(self.run_command(site, "delete_rows", {"table": table, "ids": chunk}) or 0)
        return n

    def sync_app(self, fields: Dict[str, Any], rename_from: Optional[str] = None) -> int:
        raise exc.ServiceError("apps are registered at their site ('balsam app sync' there): app code never travels through the relay")

    # ------------------------------------------------------------------ DAG templates: read from the mirror, written by the site
    def _one_site(self, what: str) -> int:
        if len(self.site_ids) != 1:
            raise exc.ValidationError(f"{what}: name the site (site_id)" if self.site_ids else "no site in scope")
        return self.site_ids[0]

    def dag_save(self, name: str, description: str, spec: Dict[str, Any]) -> Dict[str, Any]:
        site = self._one_site("save a DAG")
        return dict(self.run_command(site, "dag_save", {"name": name, "description": description, "spec": spec}))

    def dag_list(self) -> List[Dict[str, Any]]:
        with self.store.connect() as c:
            return mirror.dags(c, self.site_ids)

    def dag_delete(self, name: str) -> int:
        return int(self.run_command(self._one_site("delete a DAG"), "dag_delete", {"name": name}) or 0)

    def dag_instantiate(self, name: str, records: Sequence[Dict[str, Any]]) -> List[int]:
        site = self._one_site("instantiate a DAG")
        return [int(i) for i in self.run_command(site, "dag_instantiate", {"name": name, "records": list(records)}) or []]

    def dag_instances(self, dag_id: int, *, ids: Optional[Sequence[int]] = None, state: Optional[Sequence[str]] = None,
                      limit: Optional[int] = None, offset: int = 0) -> List[Dict[str, Any]]:
        with self.store.connect() as c:
            return mirror.dag_instances(c, self.site_ids, dag_id, ids, state, limit, offset)

    def dag_counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        with self.store.connect() as c:
            return mirror.dag_counts(c, self.site_ids, instance_ids)

    def dag_retry(self, instance_id: int) -> int:
        site = self._owner(int(instance_id), "DAG instance")
        return int(self.run_command(site, "dag_retry", {"instance_id": int(instance_id)}) or 0)

    # ------------------------------------------------------------------ sessions: launchers talk to their site
    def create_session(self, *, host: str, pid: int, batch_job_id: Optional[int], label: str) -> int:
        raise exc.ServiceError("launchers talk to their site's agent, not to the relay")

    def tick(self, session_id: int) -> None:
        raise exc.ServiceError("launchers talk to their site's agent, not to the relay")

    def acquire(self, session_id: int, max_num_jobs: int, wait_s: float = 0.0, **constraints: Any) -> List[Dict[str, Any]]:
        raise exc.ServiceError("launchers talk to their site's agent, not to the relay")

    def release(self, session_id: int) -> int:
        raise exc.ServiceError("launchers talk to their site's agent, not to the relay")


def site_tuple(site: Dict[str, Any], columns: Sequence[str]) -> Row:
    """A relay site as a tuple of the site table's columns (the site's own row, as it last pushed it)."""
    row = dict(site.get("row") or {})
    row.update(id=site["id"], name=site["name"])
    return tuple(row.get(c) for c in columns)


def _reported(site: Dict[str, Any], name: str) -> Any:
    """A JSON column of the site's row as the site last pushed it (JSON text), decoded; None if absent or not JSON."""
    value = (site.get("row") or {}).get(name)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _refuse_flags_of(launch_params: Any, where: str, site: Optional[Dict[str, Any]]) -> None:
    """At the relay, a job's launch_params may name the flags of any MPI launcher (balsam.db.launch_flags.ANY) and
    those its site's owner added (settings.yml, as the site reported them when it last synced): the relay does not
    know which launcher the site runs, which the site checks when it applies the command (the final judge)."""
    if launch_params and isinstance(launch_params, dict):
        row = (site or {}).get("row") or {}
        launch_flags.refuse(launch_params, launch_flags.ANY | launch_flags.extra_flags(row.get("allowed_launch_params")),
                            where, launcher=f"MPI launchers at site {site['name']}" if site else "MPI launchers")


