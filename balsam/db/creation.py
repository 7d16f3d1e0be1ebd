"""Job creation in the site store: new-job rows validated field by field (balsam.db.fields), inserted in bulk,
with parameters re-checked against each app as stored, parent links, initial states and creation events.

Runs inside the caller's write transaction: nothing is written if any job is refused.
"""

from __future__ import annotations

import posixpath
import sqlite3
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from balsam.db import doorbell
from balsam.db.codec import dumps, encode_parameters, loads, tags_json
from balsam.db.connection import chunks
from balsam.db.fields import MAX_TAG_CHARS, RESOURCE_FIELDS, check_fields, check_parameter_names
from balsam.db.ids import LOCAL_BITS
from balsam.db.states import JobState
from balsam.db.transitions import ids_param
from balsam.exceptions import ValidationError

S = JobState


def params_dict(params: Any, where: str) -> Dict[str, Any]:
    """Parameters as a dict (None is none); ValidationError for anything else."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValidationError(f"{where}parameters must be a dict, got {params!r}")
    return params


NEW_JOB_COLUMNS = (
    "workdir", "app_id", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
    "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids",
    "pending_file_cleanup", "parameters_pickled",
)
"""The layout of a new-job tuple: exactly the values bound to the INSERT (JSON columns as text)."""
_PARENTS = NEW_JOB_COLUMNS.index("parent_ids")
_LAUNCH_PARAMS = NEW_JOB_COLUMNS.index("launch_params")
_CREATION_FIELDS = frozenset({*RESOURCE_FIELDS, "workdir", "tags", "data", "launch_params", "parent_ids", "pending_file_cleanup"})
_STAGE_TABLE = (
    f"CREATE TEMP TABLE IF NOT EXISTS _new_job ({', '.join(NEW_JOB_COLUMNS)})"
)
"""The connection's scratch table for a creation (in memory: temp_store=MEMORY; untyped columns, so values keep
their types): rows go in with executemany, where each row is one statement that costs only its binding, then move
into ``job`` with one INSERT ... SELECT. One statement keeps the job table's cursors open, so its indexes (state,
app, last update: keys that only grow) take appends instead of a seek from the root per row, and the executemany
straight into ``job`` paid twice as much (measured on 100k jobs, bench/bench_store.py)."""
_DEFAULT_TAIL = ("{}", 1, 1, 1, 1, 0, 1, "{}", 0, "[]", 1, None)
"""The job table's defaults for NEW_JOB_COLUMNS[4:] (data, the resources, launch_params, wall_time_min, parent_ids,
pending_file_cleanup, parameters_pickled)."""
_STAGE_ROWS = f"INSERT INTO _new_job({', '.join(NEW_JOB_COLUMNS)}) VALUES ({','.join('?' * len(NEW_JOB_COLUMNS))})"
_INSERT_STAGED = (f"INSERT INTO job({', '.join(NEW_JOB_COLUMNS)}, state, last_update, created) "
                  f"SELECT {', '.join(NEW_JOB_COLUMNS)}, 'STAGED_IN', ?, ? FROM _new_job ORDER BY rowid")
_STAGE_SHORT = "INSERT INTO _new_job(workdir, tags, parameters) VALUES (?, ?, ?)"
"""The common batch (jobs of one app, every other column at the schema's default) binds three values a row: binding
a value costs more than SQLite's filling in a default, and bulk creation binds millions."""
_INSERT_SHORT = ("INSERT INTO job(workdir, app_id, tags, parameters, state, last_update, created) "
                 "SELECT workdir, ?, tags, parameters, 'STAGED_IN', ?, ? FROM _new_job ORDER BY rowid")


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
    params_text, params_pickled = encode_parameters(params_dict(parameters, where))
    return (
        f["workdir"], int(app_id), dumps(f["tags"]), params_text, dumps(f["data"]),
        f.get("num_nodes", 1), f.get("ranks_per_node", 1), f.get("threads_per_rank", 1),
        f.get("threads_per_core", 1), f.get("gpus_per_rank", 0.0), f.get("node_packing_count", 1),
        dumps(f["launch_params"]), f.get("wall_time_min", 0), dumps(f["parent_ids"]),
        1 if f["pending_file_cleanup"] else 0, params_pickled,
    )


_PLAIN_KEYS = frozenset({"workdir", "app_id", "tags", "parameters"})
_PLAIN_TAIL = ("{}", 1, 1, 1, 1, 0.0, 1, "{}", 0, "[]", 1, None)


def plain_job_row(item: Mapping[str, Any]) -> Optional[Tuple[Any, ...]]:
    """The new-job tuple of a job-create object (as the HTTP API gets it) that holds only a workdir, an app id, tags
    and parameters, each plainly valid: what :func:`new_job_row` gives for it, in a few cheap checks. None when the
    object needs :func:`new_job_row`'s full checks (which then refuse it with their message, or normalize it): a
    bulk creation from another host checks most of its jobs here."""
    if not item.keys() <= _PLAIN_KEYS:
        return None
    workdir, app_id, tags, params = item.get("workdir"), item.get("app_id"), item.get("tags"), item.get("parameters")
    if (type(workdir) is not str or not 0 < len(workdir) <= 255 or not workdir.isascii() or not workdir.isprintable()
            or workdir[0] in "/ " or workdir[-1] == " " or workdir[1:2] == ":" or "\\" in workdir
            or posixpath.normpath(workdir) != workdir or workdir in (".", "..") or workdir.startswith("../")):
        return None  # printable ASCII, relative, already normal, one component at most 255: normalize_workdir's own result
    if type(app_id) is not int or not 0 <= app_id < 2**63:
        return None
    if not tags:
        tags_text: Optional[str] = "{}" if tags is None or type(tags) is dict else None
    else:
        tags_text = tags_json(tags, MAX_TAG_CHARS) if type(tags) is dict else None
    if tags_text is None or (params is not None and type(params) is not dict):
        return None
    try:
        params_text, pickled = encode_parameters(params) if params else ("{}", None)
    except ValidationError:
        return None  # refused by new_job_row too, with the job named
    return (workdir, app_id, tags_text, params_text, *_PLAIN_TAIL[:-1], pickled)


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
    shell: Dict[int, str] = {}
    stale: Dict[int, bool] = {}
    for row in conn.execute(
        "SELECT id, name, parameters, transfers, var_keyword, version, kind FROM app WHERE id IN (SELECT value FROM json_each(?))",
        (ids_param(app_ids),),
    ):
        apps[row[0]] = (row[1], loads(row[2]), loads(row[3]))
        if row[6] == "shell":
            shell[row[0]] = row[1]
        if (checked_app_versions or {}).get(row[0]) != row[5]:
            stale[row[0]] = bool(row[4])
    missing_apps = app_ids - apps.keys()
    if missing_apps:
        raise ValidationError(f"no app with id {sorted(missing_apps)[0]} at this site")
    if stale:
        _check_parameters(rows, apps, stale)
    flagged = list(launch_params_of(rows))
    if flagged:
        from balsam.db.launch_flags import refuse_at_site

        for where, launch_params in flagged:
            refuse_at_site(conn, launch_params, where)
    if shell:
        for r in rows:
            if _NUL in r[3] and r[1] in shell:
                refuse_nul(f"job {r[0]!r}", shell[r[1]], r[3])
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='job'").fetchone()
    top = conn.execute("SELECT max(id) FROM job").fetchone()[0] or 0
    first = max(seq[0] if seq else 0, top) + 1
    last = first + len(rows) - 1
    _insert_job_rows(conn, rows, app_ids, now)
    span = (first, last)
    states: Dict[int, str] = {}
    if any([r[_PARENTS] != "[]" for r in rows]):  # the rows as inserted: no need to read them back
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
            conn.execute("UPDATE job SET state='READY' WHERE id IN (SELECT value FROM json_each(?))", (ids_param(ready),))
    conn.execute(
        "INSERT INTO job_tag(key, value, job_id) SELECT t.key, t.value, job.id FROM job, json_each(job.tags) t "
        "WHERE job.id BETWEEN ? AND ? AND job.tags != '{}'",
        span,
    )
    if any([st == S.FAILED.value for st in states.values()]):  # created FAILED: a parent had failed; say which
        conn.execute(
            "INSERT INTO event(job_id, timestamp, from_state, to_state, data) SELECT id, created, 'CREATED', state, "
            "CASE WHEN state = 'FAILED' THEN (SELECT json_object('message', 'parent job ' || pj.id || ' is ' || pj.state) "
            "FROM json_each(job.parent_ids) p JOIN job pj ON pj.id = p.value WHERE pj.state IN ('FAILED', 'USER_KILLED') LIMIT 1) END "
            "FROM job WHERE id BETWEEN ? AND ?",
            span,
        )
    else:
        conn.execute("INSERT INTO event(job_id, timestamp, from_state, to_state) SELECT id, created, 'CREATED', state FROM job "
                     "WHERE id BETWEEN ? AND ?", span)
    if len(states) < len(rows):
        doorbell.note_states([S.STAGED_IN.value])  # the agent's processing takes them on once this commits
    return first, states


_NUL = "\\u0000"
"""A NUL character as the JSON text of a parameter holds it (JSON always escapes control characters)."""


def refuse_nul(where: str, app: str, params_text: str) -> None:
    """ValidationError if a parameter of a shell app's job (its stored JSON text) is a string with a NUL character:
    the command line it goes into cannot carry one, so the job is refused when it is made, not when it runs."""
    if _NUL not in params_text:
        return
    for key, value in loads(params_text).items():
        if isinstance(value, str) and "\x00" in value:
            raise ValidationError(f"{where}: parameter {key!r} contains a NUL character, which no command line can carry "
                                  f"(app {app} runs a shell command)")


def _insert_job_rows(conn: sqlite3.Connection, rows: Sequence[Tuple[Any, ...]], app_ids: Set[int], now: float) -> None:
    """Insert the rows into ``job`` through the scratch table, in order: job ``i`` gets the ``i``-th next id."""
    tail = _DEFAULT_TAIL
    short = [(r[0], r[2], r[3]) for r in rows if r[4:] == tail] if len(app_ids) == 1 else []
    conn.execute(_STAGE_TABLE)
    conn.execute("DELETE FROM _new_job")
    try:
        if len(short) == len(rows):
            conn.executemany(_STAGE_SHORT, short)
            conn.execute(_INSERT_SHORT, (next(iter(app_ids)), now, now))
        else:
            conn.executemany(_STAGE_ROWS, rows)
            conn.execute(_INSERT_STAGED, (now, now))
    except sqlite3.IntegrityError:
        raise_duplicate_workdir(conn, [r[0] for r in rows])
        raise
    finally:
        conn.execute("DELETE FROM _new_job")


def _check_parameters(rows: Sequence[Tuple[Any, ...]], apps: Dict[int, Tuple[Any, ...]], var_keyword_of: Dict[int, bool]) -> None:
    """Each row's parameter names against its app's stored spec (required present, unknown refused); only rows of
    the apps in ``var_keyword_of`` (app id -> whether run() takes **kwargs)."""
    for r in rows:
        if r[1] not in var_keyword_of:
            continue
        name, spec, _transfers = apps[r[1]]
        var_keyword = var_keyword_of[r[1]]
        keys = loads(r[3]).keys()
        required = [k for k, v in spec.items() if v.get("required")]
        if not var_keyword or any(k not in keys for k in required):
            check_parameter_names(f"job {r[0]!r}", name, spec.keys(), required, keys, var_keyword)


def launch_params_of(rows: Sequence[Tuple[Any, ...]]) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(where, launch_params) of the new-job tuples (:data:`NEW_JOB_COLUMNS`) that name any: what the flags'
    checks look at (balsam.db.launch_flags), with the prefix of their error."""
    for r in rows:
        text = r[_LAUNCH_PARAMS]
        if text and text != "{}":
            yield f"job {r[0]!r}: ", loads(text)


def _link_parents(conn: sqlite3.Connection, first: int, last: int) -> Dict[int, str]:
    """Record parent links of jobs first..last and set their initial states; returns {index: state}."""
    from balsam.db import foreign

    span = (first, last)
    site_id = foreign.this_site(conn)
    missing = conn.execute(  # a parent of another site is foreign's to check (this site must be linked to a relay)
        "SELECT p.value FROM job c, json_each(c.parent_ids) p LEFT JOIN job pj ON pj.id = p.value "
        "WHERE c.id BETWEEN ? AND ? AND c.parent_ids != '[]' AND (pj.id IS NULL OR pj.id >= ?) AND (p.value >> ?) IN (0, ?) LIMIT 1",
        (first, last, first, LOCAL_BITS, site_id),
    ).fetchone()
    if missing:
        raise ValidationError(f"parent job {missing[0]} does not exist at this site")
    away = foreign.link_new_jobs(conn, first, last, site_id)
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
    for child in set(away) - {r[0] for r in rows}:
        rows.append((child, 0, 0))
    for child, failed, unfinished in rows:
        failed_away, unfinished_away = away.get(child, (0, 0))
        failed, unfinished = failed + failed_away, unfinished + unfinished_away
        if failed:
            out[child - first] = S.FAILED.value
        elif unfinished:
            out[child - first] = S.AWAITING_PARENTS.value
    for state in (S.FAILED.value, S.AWAITING_PARENTS.value):
        ids = [first + i for i, st in out.items() if st == state]
        if ids:
            conn.execute("UPDATE job SET state=? WHERE id IN (SELECT value FROM json_each(?))", (state, ids_param(ids)))
    return out


def raise_duplicate_workdir(conn: sqlite3.Connection, workdirs: List[str]) -> None:
    seen: Set[str] = set()
    for w in workdirs:
        if w in seen:
            raise ValidationError(f"workdir {w!r} is given to two new jobs; each job needs its own workdir")
        seen.add(w)
    for chunk in chunks(workdirs):
        hit = conn.execute("SELECT id, workdir FROM job WHERE workdir IN (SELECT value FROM json_each(?)) LIMIT 1", (dumps(list(chunk)),)).fetchone()
        if hit:
            raise ValidationError(f"workdir {hit[1]!r} is already used by job {hit[0]}; each job needs its own workdir")
