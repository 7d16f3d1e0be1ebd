"""Jobs in the site store: creation, state changes with their cascades, field updates, deletion.

Every function here runs inside the caller's write transaction (``with store.write() as conn``), so a
batch is all-or-nothing and cascades see a consistent DB. State changes go through
:func:`apply_state_changes`, the only writer of ``job.state``:

- each change is checked against the transition table (balsam.db.states) and writes one ``event`` row;
- only the lease holding a job may mark it RUNNING (the change names its session), so a RUNNING job always
  has a launcher whose expiry or release will time it out if it dies;
- leaving RUNNING (or any change but to RUNNING) clears the job's session lock;
- a RUNNING event records the node footprint (``num_nodes / node_packing_count``);
- cascades run in the same transaction, for every path that moves a job: JOB_FINISHED releases children
  whose parents are all finished; FAILED and USER_KILLED fail the children waiting on them (with the
  reason); READY with no pending stage-in becomes STAGED_IN; POSTPROCESSED with no pending stage-out
  becomes JOB_FINISHED.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from balsam.db.codec import dumps, encode_parameters, loads
from balsam.db.connection import chunks
from balsam.db.fields import LAUNCHER_FIELDS, RESOURCE_FIELDS, UPDATABLE_FIELDS, check_fields
from balsam.db.states import FAILED_STATES, LEGAL, JobState, check_transition
from balsam.exceptions import IllegalTransition, JobLockedError, ValidationError

S = JobState
_RUNNING = S.RUNNING.value
_FINISHED = S.JOB_FINISHED.value
_FAILED_NAMES = frozenset(s.value for s in FAILED_STATES)
_CASCADES = {"JOB_FINISHED": 0, "FAILED": 1, "USER_KILLED": 1, "READY": 2, "POSTPROCESSED": 3}
"""States whose arrival triggers a cascade: 0 release children, 1 fail children, 2 skip stage-in, 3 skip stage-out."""

JOB_COLUMNS = (
    "id", "workdir", "app_id", "tags", "parameters", "data", "return_code", "num_nodes", "ranks_per_node",
    "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params",
    "wall_time_min", "parent_ids", "batch_job_id", "session_id", "state", "last_update", "created",
    "pending_file_cleanup", "serialized_return_value", "serialized_exception", "version", "parameters_pickled",
)
JSON_COLUMNS = frozenset({"tags", "data", "launch_params", "parent_ids"})


class StateChange(NamedTuple):
    """One requested job state change, with its event data and any fields written along with it.

    A named tuple: launchers queue hundreds of thousands of these, and the StatusUpdater builds them in bulk.
    """

    job_id: int
    state: str
    timestamp: Optional[float] = None
    data: Optional[Dict[str, Any]] = None
    fields: Optional[Dict[str, Any]] = None
    session_id: Optional[int] = None
    """The lease that must hold the job: required for a change to RUNNING, checked for any other."""


class ChangeResult:
    """What a batch of state changes did: applied changes (cascades included) and refused ones."""

    __slots__ = ("applied", "rejected")

    def __init__(self) -> None:
        self.applied = 0
        """How many changes were applied (cascades included)."""
        self.rejected: List[Tuple[StateChange, str]] = []


def _ids_param(ids: Iterable[int]) -> str:
    return dumps(list(ids))


def _params_dict(params: Any, where: str) -> Dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValidationError(f"{where}parameters must be a dict, got {params!r}")
    return params


# --------------------------------------------------------------------------------------------- creation
NEW_JOB_COLUMNS = (
    "workdir", "app_id", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
    "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids",
    "pending_file_cleanup", "parameters_pickled",
)
"""The layout of a new-job tuple: exactly the values bound to the INSERT (JSON columns as text)."""
_CREATION_FIELDS = frozenset({*RESOURCE_FIELDS, "workdir", "tags", "data", "launch_params", "parent_ids", "pending_file_cleanup"})
_INSERT_JOB = (
    f"INSERT INTO job({', '.join(NEW_JOB_COLUMNS)}, state, last_update, created) "
    f"VALUES ({','.join('?' * len(NEW_JOB_COLUMNS))}, 'STAGED_IN', {{now}}, {{now}})"
)


def new_job_row(
    workdir: str,
    app_id: int,
    *,
    tags: Optional[Dict[str, str]] = None,
    parameters: Optional[Dict[str, Any]] = None,
    data: Optional[Dict[str, Any]] = None,
    launch_params: Optional[Dict[str, str]] = None,
    parent_ids: Sequence[int] = (),
    pending_file_cleanup: bool = True,
    **resources: Any,
) -> Tuple[Any, ...]:
    """A validated new-job tuple for :func:`insert_jobs` (the API builds these on its own fast path)."""
    where = f"job {workdir!r}: "
    unknown = set(resources) - set(RESOURCE_FIELDS)
    if unknown:
        raise ValidationError(f"{where}unknown job field {sorted(unknown)[0]!r}")
    f = check_fields(dict(resources, workdir=workdir, tags=tags, data=data, launch_params=launch_params, parent_ids=parent_ids,
                          pending_file_cleanup=pending_file_cleanup), where, _CREATION_FIELDS)
    params_text, params_pickled = encode_parameters(_params_dict(parameters, where))
    return (
        f["workdir"], int(app_id), dumps(f["tags"]), params_text, dumps(f["data"]),
        f.get("num_nodes", 1), f.get("ranks_per_node", 1), f.get("threads_per_rank", 1),
        f.get("threads_per_core", 1), f.get("gpus_per_rank", 0.0), f.get("node_packing_count", 1),
        dumps(f["launch_params"]), f.get("wall_time_min", 0), dumps(f["parent_ids"]),
        1 if f["pending_file_cleanup"] else 0, params_pickled,
    )


def insert_jobs(
    conn: sqlite3.Connection,
    rows: Sequence[Tuple[Any, ...]],
    transfers: Optional[Dict[int, Dict[str, Any]]] = None,
    now: Optional[float] = None,
    checked_app_versions: Optional[Mapping[int, int]] = None,
) -> Tuple[int, Dict[int, str]]:
    """Insert new jobs (tuples laid out as NEW_JOB_COLUMNS); returns (first id, {index: state} for the jobs
    whose initial state is not STAGED_IN). Job ``i`` gets id ``first + i``.

    ``transfers`` maps a row index to that job's transfers. Apps, parameters (against each app as stored now),
    parents, transfer slots and workdir uniqueness are checked; nothing is written if any job is refused.
    ``checked_app_versions`` ({app id: version}) names apps whose parameters the caller already checked the rows
    against at that version (the API's fast path); rows of any other app, or of an app re-synced since, are
    checked here. Tags, parent links and creation
    events are derived inside SQLite from the rows just inserted.
    """
    if not rows:
        return 0, {}
    from balsam.db import transfers as transfer_db

    now = time.time() if now is None else now
    transfers = transfers or {}
    app_ids = {r[1] for r in rows}
    apps = {}
    stale: Dict[int, bool] = {}
    for row in conn.execute(
        "SELECT id, name, parameters, transfers, var_keyword, version FROM app WHERE id IN (SELECT value FROM json_each(?))",
        (_ids_param(app_ids),),
    ):
        apps[row[0]] = (row[1], loads(row[2]), loads(row[3]))
        if (checked_app_versions or {}).get(row[0]) != row[5]:
            stale[row[0]] = bool(row[4])
    missing_apps = app_ids - apps.keys()
    if missing_apps:
        raise ValidationError(f"no app with id {sorted(missing_apps)[0]} at this site")
    if stale:
        _check_parameters(rows, apps, stale)
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='job'").fetchone()
    top = conn.execute("SELECT max(id) FROM job").fetchone()[0] or 0
    first = max(seq[0] if seq else 0, top) + 1
    last = first + len(rows) - 1
    try:
        conn.executemany(_INSERT_JOB.format(now=repr(float(now))), rows)
    except sqlite3.IntegrityError:
        _raise_duplicate_workdir(conn, [r[0] for r in rows])
        raise
    span = (first, last)
    states: Dict[int, str] = {}
    has_parents = conn.execute("SELECT 1 FROM job WHERE id BETWEEN ? AND ? AND parent_ids != '[]' LIMIT 1", span).fetchone()
    if has_parents:
        states.update(_link_parents(conn, first, last))
    slotted = {a for a, info in apps.items() if info[2]}
    if transfers or slotted:
        site_row = conn.execute("SELECT transfer_locations FROM site LIMIT 1").fetchone()
        locations = loads(site_row[0]) if site_row else {}
        specs: List[Tuple[int, List[Dict[str, Any]]]] = []
        for i, r in enumerate(rows):
            if i in transfers or r[1] in slotted:
                items = transfer_db.job_transfer_items(apps[r[1]], transfers.get(i) or {}, locations, r[0])
                specs.append((first + i, items))
                if i not in states and any(item["direction"] == "in" for item in items):
                    states[i] = S.READY.value
        transfer_db.insert_items(conn, specs, now)
        ready = [first + i for i, st in states.items() if st == S.READY.value]
        if ready:
            conn.execute("UPDATE job SET state='READY' WHERE id IN (SELECT value FROM json_each(?))", (_ids_param(ready),))
    conn.execute(
        "INSERT INTO job_tag(key, value, job_id) SELECT t.key, t.value, job.id FROM job, json_each(job.tags) t "
        "WHERE job.id BETWEEN ? AND ? AND job.tags != '{}'",
        span,
    )
    conn.execute(
        "INSERT INTO event(job_id, timestamp, from_state, to_state, data) SELECT id, created, 'CREATED', state, "
        "CASE WHEN state = 'FAILED' THEN (SELECT json_object('message', 'parent job ' || pj.id || ' is ' || pj.state) "
        "FROM json_each(job.parent_ids) p JOIN job pj ON pj.id = p.value WHERE pj.state IN ('FAILED', 'USER_KILLED') LIMIT 1) END "
        "FROM job WHERE id BETWEEN ? AND ?",
        span,
    )
    return first, states


def _check_parameters(rows: Sequence[Tuple[Any, ...]], apps: Dict[int, Tuple[Any, ...]], var_keyword_of: Dict[int, bool]) -> None:
    """Each row's parameter names against its app's stored spec (required present, unknown refused); only rows of
    the apps in ``var_keyword_of`` (app id -> whether run() takes **kwargs)."""
    for r in rows:
        if r[1] not in var_keyword_of:
            continue
        name, spec, _transfers = apps[r[1]]
        var_keyword = var_keyword_of[r[1]]
        keys = loads(r[3]).keys()
        missing = [k for k, v in spec.items() if v.get("required") and k not in keys]
        if missing:
            raise ValidationError(f"job {r[0]!r}: app {name} needs parameter {sorted(missing)[0]!r}")
        if not var_keyword:
            unknown = sorted(k for k in keys if k not in spec)
            if unknown:
                raise ValidationError(f"job {r[0]!r}: app {name} has no parameter {unknown[0]!r} (parameters: "
                                      f"{', '.join(sorted(spec)) or 'none'})")


def _link_parents(conn: sqlite3.Connection, first: int, last: int) -> Dict[int, str]:
    """Record parent links of jobs first..last and set their initial states; returns {index: state}."""
    span = (first, last)
    missing = conn.execute(
        "SELECT p.value FROM job c, json_each(c.parent_ids) p LEFT JOIN job pj ON pj.id = p.value "
        "WHERE c.id BETWEEN ? AND ? AND c.parent_ids != '[]' AND (pj.id IS NULL OR pj.id >= ?) LIMIT 1",
        (first, last, first),
    ).fetchone()
    if missing:
        raise ValidationError(f"parent job {missing[0]} does not exist at this site")
    conn.execute(
        "INSERT OR IGNORE INTO job_parent(parent_id, child_id) SELECT p.value, c.id FROM job c, json_each(c.parent_ids) p "
        "WHERE c.id BETWEEN ? AND ? AND c.parent_ids != '[]'",
        span,
    )
    out: Dict[int, str] = {}
    rows = conn.execute(
        "SELECT c.id, sum(pj.state IN ('FAILED', 'USER_KILLED')), sum(pj.state != 'JOB_FINISHED') "
        "FROM job c, json_each(c.parent_ids) p JOIN job pj ON pj.id = p.value "
        "WHERE c.id BETWEEN ? AND ? AND c.parent_ids != '[]' GROUP BY c.id",
        span,
    ).fetchall()
    for child, failed, unfinished in rows:
        if failed:
            out[child - first] = S.FAILED.value
        elif unfinished:
            out[child - first] = S.AWAITING_PARENTS.value
    for state in (S.FAILED.value, S.AWAITING_PARENTS.value):
        ids = [first + i for i, st in out.items() if st == state]
        if ids:
            conn.execute("UPDATE job SET state=? WHERE id IN (SELECT value FROM json_each(?))", (state, _ids_param(ids)))
    return out


def _raise_duplicate_workdir(conn: sqlite3.Connection, workdirs: List[str]) -> None:
    seen: Set[str] = set()
    for w in workdirs:
        if w in seen:
            raise ValidationError(f"workdir {w!r} is given to two new jobs; each job needs its own workdir")
        seen.add(w)
    for chunk in chunks(workdirs):
        hit = conn.execute("SELECT id, workdir FROM job WHERE workdir IN (SELECT value FROM json_each(?)) LIMIT 1", (dumps(list(chunk)),)).fetchone()
        if hit:
            raise ValidationError(f"workdir {hit[1]!r} is already used by job {hit[0]}; each job needs its own workdir")


# --------------------------------------------------------------------------------------------- state changes
def _rounds(changes: Sequence[StateChange]) -> List[List[StateChange]]:
    """Split changes so each round has at most one change per job, keeping each job's order."""
    if len({ch.job_id for ch in changes}) == len(changes):
        return [list(changes)]
    rounds: List[List[StateChange]] = []
    depth: Dict[int, int] = {}
    for ch in changes:
        k = depth.get(ch.job_id, 0)
        depth[ch.job_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(ch)
    return rounds


def apply_state_changes(
    conn: sqlite3.Connection,
    changes: Sequence[StateChange],
    *,
    strict: bool = True,
    now: Optional[float] = None,
) -> ChangeResult:
    """Apply job state changes in bulk, with events and cascades.

    ``strict``: raise IllegalTransition (nothing written by the caller's transaction) on the first illegal
    change or missing job. Otherwise refused changes are returned in ``result.rejected`` and the rest apply:
    the launcher's status updater uses this, since a user may kill a job while it runs.
    """
    result = ChangeResult()
    now = time.time() if now is None else now
    pending: Sequence[StateChange] = changes
    while pending:
        cascade: List[StateChange] = []
        for round_ in _rounds(pending):
            _apply_round(conn, round_, strict, now, result, cascade)
        pending = cascade
        strict = False  # cascades are computed from current states; a race only means "already moved"
    return result


_TEMP_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS _legal (src TEXT NOT NULL, dst TEXT NOT NULL, PRIMARY KEY (src, dst)) WITHOUT ROWID",
    "CREATE TEMP TABLE IF NOT EXISTS _chg (job_id INTEGER PRIMARY KEY, dst TEXT NOT NULL, ts REAL NOT NULL, data TEXT, "
    "sid INTEGER, src TEXT, holder INTEGER, nodes REAL)",
)
_LEGAL_ROWS = [(src, dst) for src, dsts in LEGAL.items() for dst in dsts]
_REFUSED = (
    "src IS NULL OR NOT EXISTS (SELECT 1 FROM _legal l WHERE l.src = _chg.src AND l.dst = _chg.dst) "
    "OR (sid IS NOT NULL AND holder IS NOT sid) OR (dst = 'RUNNING' AND sid IS NULL)"
)


def _prepare_temp(conn: sqlite3.Connection) -> None:
    """The connection's scratch tables (in memory: temp_store=MEMORY): the legal transitions and a batch."""
    for ddl in _TEMP_TABLES:
        conn.execute(ddl)
    if conn.execute("SELECT count(*) FROM _legal").fetchone()[0] != len(_LEGAL_ROWS):
        conn.execute("DELETE FROM _legal")
        conn.executemany("INSERT INTO _legal(src, dst) VALUES (?, ?)", _LEGAL_ROWS)
    conn.execute("DELETE FROM _chg")


def _apply_round(
    conn: sqlite3.Connection,
    round_: List[StateChange],
    strict: bool,
    now: float,
    result: ChangeResult,
    cascade: List[StateChange],
) -> None:
    """Apply changes to distinct jobs, set-based: the batch goes into a scratch table, SQLite checks every change
    against the transition table and the holding lease, then writes the events and the new states."""
    if any([ch.fields for ch in round_]):
        round_ = _checked_launcher_fields(round_, strict, result)
        if not round_:
            return
    _prepare_temp(conn)
    conn.executemany(
        "INSERT INTO _chg(job_id, dst, ts, data, sid) VALUES (?, ?, ?, ?, ?)",
        [(ch.job_id, ch.state, now if ch.timestamp is None else ch.timestamp, None if not ch.data else dumps(ch.data), ch.session_id)
         for ch in round_],
    )
    conn.execute(
        "UPDATE _chg SET (src, holder, nodes) = (SELECT state, session_id, CAST(num_nodes AS REAL) / node_packing_count "
        "FROM job WHERE job.id = _chg.job_id)"
    )
    refused = conn.execute(f"SELECT job_id, dst, src, sid, holder FROM _chg WHERE {_REFUSED}").fetchall()
    if refused:
        by_id = {ch.job_id: ch for ch in round_}
        for job_id, dst, src, sid, _holder in refused:
            if src is None:
                reason = "no such job"
                if strict:
                    raise IllegalTransition(f"job {job_id} does not exist", job_id)
            elif dst not in LEGAL.get(src, ()):
                reason = f"{src} -> {dst} is not allowed"
                if strict:
                    check_transition(src, dst, job_id)
            elif sid is None:
                reason = (f"job {job_id}: only a launcher holding the job can mark it RUNNING "
                          "(acquire it through a Session first)")
                if strict:
                    raise IllegalTransition(reason, job_id)
            else:
                reason = f"job {job_id} is not held by session {sid} (its lease expired or it was released)"
                if strict:
                    raise IllegalTransition(reason, job_id)
            result.rejected.append((by_id[job_id], reason))
        conn.execute(f"DELETE FROM _chg WHERE {_REFUSED}")
    applied = len(round_) - len(refused)
    if not applied:
        return
    result.applied += applied
    conn.execute(
        "INSERT INTO event(job_id, timestamp, from_state, to_state, data) SELECT job_id, ts, src, dst, "
        "CASE WHEN dst = 'RUNNING' AND src = 'RESTART_READY' THEN json_insert(coalesce(data, '{}'), '$.num_nodes', nodes, "
        "'$.run', (SELECT count(*) + 1 FROM event e WHERE e.job_id = _chg.job_id AND e.to_state = 'RUNNING')) "
        "WHEN dst = 'RUNNING' THEN json_insert(coalesce(data, '{}'), '$.num_nodes', nodes) ELSE data END FROM _chg"
    )
    conn.execute(
        "UPDATE job SET state = 'RUNNING', last_update = ?, version = version + 1 "
        "WHERE id IN (SELECT job_id FROM _chg WHERE dst = 'RUNNING')",
        (now,),
    )
    conn.execute(
        "UPDATE job SET state = (SELECT dst FROM _chg WHERE _chg.job_id = job.id), last_update = ?, session_id = NULL, "
        "version = version + 1 WHERE id IN (SELECT job_id FROM _chg WHERE dst != 'RUNNING')",
        (now,),
    )
    with_fields = [ch for ch in round_ if ch.fields]
    if with_fields:
        refused_ids = {r[0] for r in refused}
        groups: Dict[Tuple[str, ...], List[Tuple[Any, ...]]] = {}
        for ch in with_fields:
            if ch.job_id not in refused_ids and ch.fields is not None:
                keys = tuple(sorted(ch.fields))
                groups.setdefault(keys, []).append(
                    tuple(dumps(ch.fields[k]) if k in JSON_COLUMNS else ch.fields[k] for k in keys) + (ch.job_id,))
        for keys, rows in groups.items():
            conn.executemany(f"UPDATE job SET {', '.join(f'{k}=?' for k in keys)} WHERE id=?", rows)
    to_finished: List[int] = []
    to_failed: List[Tuple[int, str]] = []
    to_ready: List[int] = []
    to_postprocessed: List[int] = []
    for job_id, dst in conn.execute(
        "SELECT job_id, dst FROM _chg WHERE dst IN ('JOB_FINISHED', 'FAILED', 'USER_KILLED', 'READY', 'POSTPROCESSED')"
    ):
        kind = _CASCADES[dst]
        if kind == 0:
            to_finished.append(job_id)
        elif kind == 1:
            to_failed.append((job_id, dst))
        elif kind == 2:
            to_ready.append(job_id)
        else:
            to_postprocessed.append(job_id)
    if to_finished:
        cascade.extend(_release_children(conn, to_finished))
    if to_failed:
        cascade.extend(_fail_children(conn, to_failed))
    if to_ready:
        cascade.extend(_skip_stage_in(conn, to_ready))
    if to_postprocessed:
        cascade.extend(_skip_stage_out(conn, to_postprocessed))


def _checked_launcher_fields(round_: List[StateChange], strict: bool, result: ChangeResult) -> List[StateChange]:
    """The round with each change's fields validated: only what a launcher may write (LAUNCHER_FIELDS), only by
    the lease that holds the job (the SQL check then verifies the holder). A refused change raises when
    ``strict``, else it is returned in ``result.rejected`` and the rest go on."""
    out: List[StateChange] = []
    for ch in round_:
        if ch.fields:
            where = f"job {ch.job_id}: "
            try:
                if ch.session_id is None:
                    raise ValidationError(f"{where}only the launcher holding the job may write {', '.join(sorted(ch.fields))} "
                                          "(the change names no session)")
                ch = ch._replace(fields=check_fields(ch.fields, where, LAUNCHER_FIELDS))
            except ValidationError as exc:
                if strict:
                    raise
                result.rejected.append((ch, str(exc)))
                continue
        out.append(ch)
    return out


def _has_any(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None


def _children(conn: sqlite3.Connection, parent_ids: List[int]) -> List[Tuple[int, int]]:
    """(parent_id, child_id) pairs for children now AWAITING_PARENTS."""
    if not _has_any(conn, "job_parent"):
        return []
    out: List[Tuple[int, int]] = []
    for chunk in chunks(parent_ids, 20000):
        out.extend(conn.execute(
            "SELECT jp.parent_id, jp.child_id FROM job_parent jp JOIN job c ON c.id = jp.child_id "
            "WHERE jp.parent_id IN (SELECT value FROM json_each(?)) AND c.state = 'AWAITING_PARENTS'",
            (_ids_param(chunk),),
        ))
    return out


def _release_children(conn: sqlite3.Connection, finished: List[int]) -> List[StateChange]:
    pairs = _children(conn, finished)
    if not pairs:
        return []
    child_ids = sorted({c for _, c in pairs})
    ready = [
        row[0]
        for row in conn.execute(
            "SELECT c.id FROM job c WHERE c.id IN (SELECT value FROM json_each(?)) AND NOT EXISTS ("
            " SELECT 1 FROM json_each(c.parent_ids) p JOIN job pj ON pj.id = p.value WHERE pj.state != 'JOB_FINISHED')",
            (_ids_param(child_ids),),
        )
    ]
    return [StateChange(c, "READY", data={"message": "all parents finished"}) for c in ready]


def _fail_children(conn: sqlite3.Connection, failed: List[Tuple[int, str]]) -> List[StateChange]:
    states = dict(failed)
    out: Dict[int, StateChange] = {}
    for parent, child in _children(conn, list(states)):
        if child not in out:
            out[child] = StateChange(child, "FAILED", data={"message": f"parent job {parent} is {states[parent]}", "parent_id": parent})
    return list(out.values())


def _pending_transfer_jobs(conn: sqlite3.Connection, job_ids: List[int], direction: str) -> Set[int]:
    if not _has_any(conn, "transfer_item"):
        return set()
    pending: Set[int] = set()
    for chunk in chunks(job_ids, 20000):
        pending.update(row[0] for row in conn.execute(
            "SELECT DISTINCT job_id FROM transfer_item WHERE job_id IN (SELECT value FROM json_each(?)) "
            "AND direction=? AND state != 'done'",
            (_ids_param(chunk), direction),
        ))
    return pending


def _retry_failed_items(conn: sqlite3.Connection, job_ids: List[int], direction: str, states: str) -> None:
    """A job that comes back to READY or POSTPROCESSED (a reset, a re-run) gets its failed (and for stage-out,
    already sent) items of that direction pending again, so it is never left waiting on an old error."""
    if not job_ids or not _has_any(conn, "transfer_item"):
        return
    for chunk in chunks(job_ids, 20000):
        conn.execute(
            f"UPDATE transfer_item SET state='pending', task_id='', transfer_info='{{}}', last_update=? WHERE direction=? "
            f"AND state IN ({states}) AND job_id IN (SELECT value FROM json_each(?))",
            (time.time(), direction, _ids_param(chunk)),
        )


def _skip_stage_in(conn: sqlite3.Connection, ready: List[int]) -> List[StateChange]:
    _retry_failed_items(conn, ready, "in", "'error'")
    pending = _pending_transfer_jobs(conn, ready, "in")
    return [StateChange(j, "STAGED_IN", data={"message": "no stage-in pending"}) for j in ready if j not in pending]


def _skip_stage_out(conn: sqlite3.Connection, done: List[int]) -> List[StateChange]:
    _retry_failed_items(conn, done, "out", "'error', 'done'")  # a re-run's output goes out again
    pending = _pending_transfer_jobs(conn, done, "out")
    if pending:
        conn.execute(
            "UPDATE transfer_item SET state='pending', last_update=? WHERE direction='out' AND state='awaiting_job' "
            "AND job_id IN (SELECT value FROM json_each(?))",
            (time.time(), _ids_param(pending)),
        )
    return [StateChange(j, "JOB_FINISHED", data={"message": "no stage-out pending"}) for j in done if j not in pending]


# --------------------------------------------------------------------------------------------- field updates
def update_job_fields(conn: sqlite3.Connection, updates: Sequence[Tuple[int, Dict[str, Any]]], now: Optional[float] = None) -> None:
    """Write non-state fields of jobs (tags keep their index in step). Values are in Python form."""
    now = time.time() if now is None else now
    groups: Dict[Tuple[str, ...], List[Tuple[Any, ...]]] = {}
    tag_changes: Dict[int, Dict[str, str]] = {}
    for job_id, fields in updates:
        if not fields:
            continue
        fields = check_fields(fields, f"job {job_id}: ", UPDATABLE_FIELDS)
        if "tags" in fields:
            tag_changes[job_id] = fields["tags"]
        if "parameters" in fields:
            text, pickled = encode_parameters(_params_dict(fields["parameters"], f"job {job_id}: "))
            fields = dict(fields, parameters=text, parameters_pickled=pickled)
        keys = tuple(sorted(fields))
        groups.setdefault(keys, []).append(
            tuple(dumps(fields[k]) if k in JSON_COLUMNS else fields[k] for k in keys) + (now, job_id)
        )
    if tag_changes:
        old: Dict[int, Dict[str, str]] = {}
        for chunk in chunks(list(tag_changes), 20000):
            old.update((row[0], loads(row[1])) for row in conn.execute(
                "SELECT id, tags FROM job WHERE id IN (SELECT value FROM json_each(?))", (_ids_param(chunk),)))
        conn.executemany("DELETE FROM job_tag WHERE key=? AND value=? AND job_id=?",
                         [(k, v, j) for j, tags in old.items() for k, v in tags.items()])
        conn.executemany("INSERT OR IGNORE INTO job_tag(key, value, job_id) VALUES (?,?,?)",
                         sorted((k, v, j) for j, tags in tag_changes.items() if j in old for k, v in tags.items()))
    for keys, rows in groups.items():
        sets = ", ".join(f"{k}=?" for k in keys)
        try:
            conn.executemany(f"UPDATE job SET {sets}, last_update=?, version=version+1 WHERE id=?", rows)
        except sqlite3.IntegrityError:
            if "workdir" in keys:
                _raise_duplicate_workdir(conn, [r[keys.index("workdir")] for r in rows])
            raise


def add_parents(conn: sqlite3.Connection, child_id: int, parent_ids: Sequence[int]) -> str:
    """Make ``child_id`` depend on more parents; returns the child's state afterwards.

    Only a job that has not started may gain parents. If a new parent is unfinished, the child goes back
    to AWAITING_PARENTS (an event records why); a failed parent fails it.
    """
    row = conn.execute("SELECT state, parent_ids FROM job WHERE id=?", (child_id,)).fetchone()
    if row is None:
        raise ValidationError(f"job {child_id} does not exist")
    state, current = row[0], loads(row[1])
    if state not in ("AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED"):
        raise IllegalTransition(f"job {child_id} is {state}: only a job that has not started can gain parents", child_id)
    new = [p for p in parent_ids if p not in current]
    if child_id in new:
        raise ValidationError(f"job {child_id} cannot depend on itself")
    parents = dict(conn.execute("SELECT id, state FROM job WHERE id IN (SELECT value FROM json_each(?))", (_ids_param(new),)).fetchall())
    for p in new:
        if p not in parents:
            raise ValidationError(f"parent job {p} does not exist at this site")
    if new and _creates_cycle(conn, child_id, new):
        raise ValidationError(f"making job {child_id} depend on {new} would create a cycle")
    conn.execute("UPDATE job SET parent_ids=?, last_update=?, version=version+1 WHERE id=?", (dumps(current + new), time.time(), child_id))
    conn.executemany("INSERT OR IGNORE INTO job_parent(parent_id, child_id) VALUES (?,?)", [(p, child_id) for p in new])
    failed = [p for p in new if parents[p] in _FAILED_NAMES]
    unfinished = [p for p in new if parents[p] != _FINISHED]
    now = time.time()
    if failed:
        apply_state_changes(conn, [StateChange(child_id, "FAILED", data={"message": f"parent job {failed[0]} is {parents[failed[0]]}"})], strict=False)
        return "FAILED"
    if unfinished and state != "AWAITING_PARENTS":
        conn.execute("UPDATE job SET state='AWAITING_PARENTS', last_update=?, version=version+1 WHERE id=?", (now, child_id))
        conn.execute(
            "INSERT INTO event(job_id, timestamp, from_state, to_state, data) VALUES (?,?,?,?,?)",
            (child_id, now, state, "AWAITING_PARENTS", dumps({"message": f"now depends on unfinished job {unfinished[0]}"})),
        )
        return "AWAITING_PARENTS"
    return str(state)


def _creates_cycle(conn: sqlite3.Connection, child_id: int, new_parents: List[int]) -> bool:
    """True if ``child_id`` is an ancestor of any new parent."""
    row = conn.execute(
        "WITH RECURSIVE anc(id) AS (SELECT value FROM json_each(?) UNION "
        "SELECT p.value FROM anc JOIN job j ON j.id = anc.id, json_each(j.parent_ids) p) "
        "SELECT 1 FROM anc WHERE id = ? LIMIT 1",
        (_ids_param(new_parents), child_id),
    ).fetchone()
    return row is not None


# --------------------------------------------------------------------------------------------- deletion
def live_locked(conn: sqlite3.Connection, job_ids: Sequence[int]) -> List[int]:
    """Jobs among ``job_ids`` held by a session."""
    out: List[int] = []
    for chunk in chunks(list(job_ids), 20000):
        out.extend(row[0] for row in conn.execute(
            "SELECT id FROM job WHERE id IN (SELECT value FROM json_each(?)) AND session_id IS NOT NULL", (_ids_param(chunk),)))
    return out


def delete_jobs(conn: sqlite3.Connection, job_ids: Sequence[int]) -> int:
    """Delete jobs, their tags, parent links, transfers and events; returns how many were deleted.

    Jobs held by a launcher session are refused (nothing is deleted): kill them first. Children waiting
    on a deleted job fail, with the reason in their event.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return 0
    locked = live_locked(conn, ids)
    if locked:
        raise JobLockedError(
            f"{len(locked)} of these jobs are held by a running launcher (e.g. job {locked[0]}); "
            "kill them first ('balsam job kill') or wait for them to finish",
            locked,
        )
    waiting = _children(conn, ids)
    id_set = set(ids)
    orphans: Dict[int, StateChange] = {}
    for parent, child in waiting:
        if child not in id_set and child not in orphans:
            orphans[child] = StateChange(child, "FAILED", data={"message": f"parent job {parent} was deleted", "parent_id": parent})
    deleted = 0
    for chunk in chunks(ids, 20000):
        param = (_ids_param(chunk),)
        rows = conn.execute("SELECT id, tags, parent_ids FROM job WHERE id IN (SELECT value FROM json_each(?))", param).fetchall()
        conn.executemany("DELETE FROM job_tag WHERE key=? AND value=? AND job_id=?",
                         [(k, v, j) for j, t, _ in rows for k, v in loads(t).items()])
        conn.executemany("DELETE FROM job_parent WHERE parent_id=? AND child_id=?", [(p, j) for j, _, ps in rows for p in loads(ps)])
        conn.execute("DELETE FROM job_parent WHERE parent_id IN (SELECT value FROM json_each(?))", param)
        conn.execute("DELETE FROM event WHERE job_id IN (SELECT value FROM json_each(?))", param)
        conn.execute("DELETE FROM transfer_item WHERE job_id IN (SELECT value FROM json_each(?))", param)
        deleted += conn.execute("DELETE FROM job WHERE id IN (SELECT value FROM json_each(?))", param).rowcount
    if orphans:
        apply_state_changes(conn, list(orphans.values()), strict=False)
    return deleted


def last_event_message(conn: sqlite3.Connection, job_id: int) -> str:
    """The last line of the most recent message or error among a job's last five events with data ('' if none)."""
    for (data,) in conn.execute("SELECT data FROM event WHERE job_id=? AND data IS NOT NULL ORDER BY id DESC LIMIT 5", (job_id,)):
        d = loads(data) or {}
        msg = d.get("message") or d.get("error")
        if msg:
            return str(msg).strip().splitlines()[-1][:300]
    return ""


def jobs_to_clean(conn: sqlite3.Connection, limit: int) -> List[Tuple[int, int, str]]:
    """(id, app_id, workdir) of up to ``limit`` finished jobs whose workdirs await the file cleaner."""
    rows = conn.execute("SELECT id, app_id, workdir FROM job WHERE state='JOB_FINISHED' AND pending_file_cleanup=1 LIMIT ?",
                        (int(limit),)).fetchall()
    return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]


def mark_cleaned(conn: sqlite3.Connection, job_ids: Sequence[int]) -> None:
    """Record that the file cleaner is done with these jobs' workdirs."""
    for chunk in chunks(list(job_ids), 20000):
        conn.execute("UPDATE job SET pending_file_cleanup=0 WHERE id IN (SELECT value FROM json_each(?))", (_ids_param(chunk),))
