"""BatchJobs in the site store: creation checked against the site's queue and project policies.

The policies (allowed queues with max nodes / wall time / queued jobs, allowed projects, optional
parameters) are the site row's copy of settings.yml. The API and the site agent's autoscalers create
BatchJobs through :func:`create_batch_job`, and every later write (the API, the scheduler service, the elastic
queue) goes through :func:`update_batch_job`, so all get the same checks, the state table and one-line errors.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from balsam.db import fields as fields_db
from balsam.db import sessions
from balsam.db.codec import dumps, loads
from balsam.db.states import BatchJobState, check_batch_transition, to_batch_state
from balsam.exceptions import IllegalTransition, ValidationError

JOB_MODES = ("mpi", "serial")


def parse_partition(text: str) -> Dict[str, Any]:
    """``mode:nodes[:k=v,...]`` (``-p`` of ``queue submit`` and of the launcher) as a partition dict; tags may be
    separated by ``,`` or ``:``."""
    parts = text.split(":", 2)
    mode = parts[0].strip()
    count = parts[1].strip() if len(parts) > 1 else ""
    if len(parts) < 2:
        raise ValidationError(f"partition {text!r}: expected MODE:NODES[:key=value,...], e.g. serial:4:role=worker")
    if mode not in JOB_MODES:
        raise ValidationError(f"partition {text!r}: job mode must be mpi or serial, not {mode!r}")
    if not count.isdigit() or int(count) < 1:
        raise ValidationError(f"partition {text!r}: the node count must be a positive integer, not {count!r}")
    tags: Dict[str, str] = {}
    for item in (parts[2] if len(parts) == 3 else "").replace(":", ",").split(","):
        if item.strip():
            k, sep, v = item.partition("=")
            if not sep or not k.strip():
                raise ValidationError(f"partition {text!r}: tag {item!r} must be key=value")
            tags[k.strip()] = v.strip()
    return {"job_mode": mode, "num_nodes": int(count), "filter_tags": tags}


def check_batch_values(fields: Dict[str, Any]) -> Dict[str, Any]:
    """The checks of a BatchJob's values that need no site policy (types, ranges, job mode): the Python API runs
    them before a BatchJob leaves for any backend, so a bad value is the same error on every host."""
    d = dict(fields)
    for name in ("queue", "project"):
        if d.get(name) is not None:
            d[name] = fields_db.check_text(name, d[name], max_chars=fields_db.MAX_TAG_CHARS, empty=False)
    if d.get("optional_params") is not None:
        d["optional_params"] = fields_db.check_str_dict("optional_params", d["optional_params"])
    d["partitions"] = check_partitions(d.get("partitions"))
    d["num_nodes"] = fields_db.check_count("num_nodes", d.get("num_nodes"))
    d["wall_time_min"] = fields_db.check_count("wall_time_min", d.get("wall_time_min"), maximum=fields_db.MAX_WALL_TIME_MIN)
    if d.get("job_mode") not in JOB_MODES:
        raise ValidationError(f"job_mode must be one of {', '.join(JOB_MODES)}, got {d.get('job_mode')!r}")
    return d


def check_batch_job(conn: sqlite3.Connection, fields: Dict[str, Any], *, new: bool = True) -> Dict[str, Any]:
    """Check a BatchJob against the site's policies; fills a missing queue or project when the site allows
    exactly one. Returns the (completed) fields. (The site's defaults of optional parameters fill the job template's
    ``optional_params`` when the script is rendered: :func:`balsam.site.submission.render_script`.)"""
    d = check_batch_values(fields)
    row = conn.execute("SELECT allowed_queues, allowed_projects, optional_batch_job_params, name FROM site LIMIT 1").fetchone()
    d = check_policies(d, loads(row[0]), loads(row[1]), loads(row[2]), f"at site {row[3]}")
    policy = loads(row[0]).get(d["queue"], {})
    if new and "max_queued_jobs" in policy:
        queued = conn.execute(
            "SELECT count(*) FROM batch_job WHERE queue=? AND state IN ('pending_submission', 'queued')", (d["queue"],)
        ).fetchone()[0]
        if queued >= policy["max_queued_jobs"]:
            raise ValidationError(f"queue {d['queue']!r} already has {queued} batch jobs waiting (max_queued_jobs {policy['max_queued_jobs']})")
    return d


def check_policies(d: Dict[str, Any], queues: Dict[str, Any], projects: List[str], optional: Dict[str, Any],
                   where: str) -> Dict[str, Any]:
    """Check BatchJob values (already through :func:`check_batch_values`) against queue policies (name -> {max_nodes,
    max_wall_time_min, ...}), allowed projects and optional template parameters; ``where`` says whose they are in
    errors ("at site polaris"). Fills a missing queue or project when exactly one is allowed; returns the fields.
    Empty queues or projects mean any."""
    d = dict(d)
    if d.get("queue") is None and len(queues) == 1:
        d["queue"] = next(iter(queues))
    if d.get("project") is None and len(projects) == 1:
        d["project"] = projects[0]
    if d.get("queue") is None:
        raise ValidationError(f"a queue is required (allowed {where}: {', '.join(sorted(queues)) or 'none configured'})")
    if d.get("project") is None:
        raise ValidationError(f"a project is required (allowed {where}: {', '.join(projects) or 'any'})")
    if queues and d["queue"] not in queues:
        raise ValidationError(f"queue {d['queue']!r} is not allowed {where} (allowed: {', '.join(sorted(queues))})")
    policy = queues.get(d["queue"], {})
    if "max_nodes" in policy and d["num_nodes"] > policy["max_nodes"]:
        raise ValidationError(f"queue {d['queue']!r} allows at most {policy['max_nodes']} nodes, asked for {d['num_nodes']}")
    if "max_wall_time_min" in policy and d["wall_time_min"] > policy["max_wall_time_min"]:
        raise ValidationError(f"queue {d['queue']!r} allows at most {policy['max_wall_time_min']} minutes, asked for {d['wall_time_min']}")
    if projects and d["project"] not in projects:
        raise ValidationError(f"project {d['project']!r} is not allowed {where} (allowed: {', '.join(projects)})")
    bad = sorted(set(d.get("optional_params") or {}) - set(optional))
    if bad:
        raise ValidationError(f"unknown optional parameter {bad[0]!r} (allowed {where}: {', '.join(sorted(optional)) or 'none'})")
    partitions = d.get("partitions")
    if partitions:
        total = sum(int(p.get("num_nodes", 0)) for p in partitions)
        if total != d["num_nodes"]:
            raise ValidationError(f"partitions add up to {total} nodes, but the batch job has {d['num_nodes']}")
        for p in partitions:
            if p.get("job_mode") not in JOB_MODES:
                raise ValidationError(f"partition job_mode must be mpi or serial, got {p.get('job_mode')!r}")
    return d


def check_partitions(partitions: Any) -> Optional[List[Dict[str, Any]]]:
    """Partitions as a list of dicts (``"mode:nodes[:k=v]"`` text parsed), each with a job mode, a node count and tags."""
    if not partitions:
        return None
    if not isinstance(partitions, (list, tuple)):
        raise ValidationError(f"partitions must be a list, got {partitions!r}")
    out = []
    for p in partitions:
        if isinstance(p, str):
            p = parse_partition(p)
        if not isinstance(p, Mapping):
            raise ValidationError(f"a partition must be 'MODE:NODES[:key=value,...]' or an object, got {p!r}")
        p = dict(p)
        p["num_nodes"] = fields_db.check_count("partition num_nodes", p.get("num_nodes"))
        p["filter_tags"] = fields_db.check_tags(p.get("filter_tags") or {}, name="partition filter_tags")
        out.append(p)
    return out


def create_batch_job(
    conn: sqlite3.Connection,
    *,
    num_nodes: int,
    wall_time_min: int,
    job_mode: str = "mpi",
    queue: Optional[str] = None,
    project: Optional[str] = None,
    optional_params: Optional[Mapping[str, str]] = None,
    filter_tags: Optional[Mapping[str, str]] = None,
    partitions: Optional[List[Any]] = None,
    status_info: Optional[Mapping[str, str]] = None,
) -> int:
    """Insert a checked BatchJob in ``pending_submission``; returns its id."""
    if status_info is not None and not isinstance(status_info, Mapping):
        raise ValidationError(f"status_info must be an object, got {status_info!r}")
    d = check_batch_job(conn, {"num_nodes": num_nodes, "wall_time_min": wall_time_min, "job_mode": job_mode, "queue": queue,
                               "project": project, "optional_params": optional_params or {}, "partitions": partitions})
    parts = d["partitions"]
    filter_tags = fields_db.check_tags(filter_tags or {}, name="filter_tags")
    now = time.time()
    cur = conn.execute(
        "INSERT INTO batch_job(project, queue, num_nodes, wall_time_min, job_mode, optional_params, filter_tags, partitions, "
        "state, status_info, created, last_update) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (d["project"], d["queue"], d["num_nodes"], d["wall_time_min"], job_mode, dumps(d["optional_params"]), dumps(filter_tags),
         None if not parts else dumps(parts), "pending_submission", dumps(dict(status_info or {})), now, now),
    )
    return int(cur.lastrowid or 0)


REMOVE_FLAG = "remove_when_done"  # status_info key: the record is deleted once the scheduler reports the end


def _check_time(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value < 1e11:
        raise ValidationError(f"{name} must be a time in seconds since the epoch, got {value!r}")
    return float(value)


def _check_str_dict(name: str, value: Any, multiline: bool = False) -> str:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValidationError(f"{name} must be a dict of strings, got {value!r}")
    return dumps({k: fields_db.check_text(f"{name}[{k!r}]", v, multiline=multiline) for k, v in value.items()})


_BATCH_CHECKERS: Dict[str, Any] = {
    "scheduler_id": lambda v: None if v is None else fields_db.check_count("scheduler_id", v, "", 0, fields_db.MAX_ID),
    "num_nodes": lambda v: fields_db.check_count("num_nodes", v),
    "wall_time_min": lambda v: fields_db.check_count("wall_time_min", v, maximum=fields_db.MAX_WALL_TIME_MIN),
    "project": lambda v: fields_db.check_text("project", v),
    "queue": lambda v: fields_db.check_text("queue", v),
    "job_mode": lambda v: v if v in JOB_MODES else _refuse(f"job_mode must be one of {', '.join(JOB_MODES)}, got {v!r}"),
    "optional_params": lambda v: _check_str_dict("optional_params", v),
    "filter_tags": lambda v: dumps(fields_db.check_tags(v, name="filter_tags")),
    "status_info": lambda v: _check_str_dict("status_info", v, multiline=True),  # a scheduler's errors span lines
    "start_time": lambda v: _check_time("start_time", v),
    "end_time": lambda v: _check_time("end_time", v),
    "partitions": lambda v: None if not v else dumps([parse_partition(p) if isinstance(p, str) else dict(p) for p in v]),
}
"""The BatchJob fields that may be written after creation, each with its checker (value -> stored form)."""


def _refuse(message: str) -> Any:
    raise ValidationError(message)


def update_batch_job(
    conn: sqlite3.Connection,
    batch_job_id: int,
    *,
    state: Optional[str] = None,
    info: Optional[Mapping[str, Any]] = None,
    only_from: Optional[Sequence[str]] = None,
    strict: bool = True,
    now: Optional[float] = None,
    **fields: Any,
) -> bool:
    """The one writer of a BatchJob after creation (the API, the scheduler service, the elastic queue).

    Fields are checked (unknown ones refused by name); ``state`` goes through the BatchJob state table (and,
    with ``only_from``, only from those states); ``info`` is merged into ``status_info`` (None removes a key). When the BatchJob
    ends, the leases of its launchers are released. Returns whether anything was written; a refused state
    change raises (IllegalTransition) when ``strict``, else it is logged by the caller's choice and False returned.
    """
    row = conn.execute("SELECT state, status_info FROM batch_job WHERE id=?", (batch_job_id,)).fetchone()
    if row is None:
        if strict:
            raise ValidationError(f"batch job {batch_job_id} does not exist")
        return False
    current, status_info = row[0], loads(row[1])
    sets: Dict[str, Any] = {}
    for name, value in fields.items():
        checker = _BATCH_CHECKERS.get(name)
        if checker is None:
            raise ValidationError(f"batch job field {name!r} cannot be written (writable: {', '.join(sorted(_BATCH_CHECKERS))})")
        sets[name] = checker(value)
    if state is not None and state != current:
        new = to_batch_state(state).value
        if only_from is not None and current not in only_from:
            return False
        try:
            check_batch_transition(current, new, batch_job_id)
        except IllegalTransition:
            if strict:
                raise
            return False
        sets["state"] = new
    if info:
        for key, value in info.items():  # merged: a value of None removes its key
            if value is None:
                status_info.pop(str(key), None)
            else:  # the agent's notes quote tools (a submit command's stderr): kept as they said it, escapes shown
                status_info[str(key)] = fields_db.escape_control(str(value))
        sets["status_info"] = _check_str_dict("status_info", status_info, multiline=True)
    if not sets:
        return False
    conn.execute(f"UPDATE batch_job SET {', '.join(f'{k}=?' for k in sets)}, last_update=?, version=version+1 WHERE id=?",
                 (*sets.values(), time.time() if now is None else now, batch_job_id))
    if sets.get("state") == BatchJobState.finished.value:
        for (sid,) in conn.execute("SELECT id FROM session WHERE batch_job_id=?", (batch_job_id,)).fetchall():
            sessions.release(conn, sid, message=f"batch job {batch_job_id} ended while the job was running")
        if REMOVE_FLAG in status_info:  # its owner deleted it while it was active: it is gone now that it ended
            conn.execute("DELETE FROM batch_job WHERE id=?", (batch_job_id,))
    return True


SUBMITTING = "submitting"
"""The ``status_info`` key of a submission under way (its start time); the scheduler service writes and clears it."""


def delete_batch_job(conn: sqlite3.Connection, batch_job_id: int, now: Optional[float] = None) -> str:
    """Delete a BatchJob as a user means it; returns what happened:

    ``deleted``: it was never submitted (``pending_submission``, no scheduler id, no submission under way) or has
    ended, and its record is gone. ``cancelling``: it is queued or running (or its submission is under way), so it is marked ``pending_deletion`` for the site agent to
    cancel at the scheduler, and its record is removed once the scheduler reports it ended. ``missing``: no such
    BatchJob. A BatchJob the agent submits at the same moment is cancelled by the agent (it finds the record gone).
    """
    import datetime as dt

    row = conn.execute("SELECT state, scheduler_id, status_info FROM batch_job WHERE id=?", (batch_job_id,)).fetchone()
    if row is None:
        return "missing"
    state, scheduler_id, info = row
    # A submission under way (its agent may have been killed in it) may have reached the scheduler: the agent looks
    # it up and cancels it before the record goes (services.scheduler.SUBMITTING).
    unsubmitted = state == "pending_submission" and scheduler_id is None and SUBMITTING not in (loads(info) if info else {})
    if unsubmitted or state in ("finished", "submit_failed"):
        conn.execute("DELETE FROM batch_job WHERE id=?", (batch_job_id,))
        return "deleted"
    update_batch_job(conn, batch_job_id, state=BatchJobState.pending_deletion.value, now=now,
                     info={REMOVE_FLAG: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    return "cancelling"


BATCH_JOB_COLUMNS = ("id", "scheduler_id", "project", "queue", "num_nodes", "wall_time_min", "job_mode", "optional_params",
                     "filter_tags", "partitions", "state", "status_info", "created")
_BATCH_JSON_COLUMNS = ("optional_params", "filter_tags", "status_info")


def batch_jobs_in(conn: sqlite3.Connection, states: Sequence[str], queue: Optional[str] = None) -> List[Dict[str, Any]]:
    """BatchJobs in ``states`` (and ``queue``), oldest first, as dicts with their JSON columns decoded."""
    names = [to_batch_state(s).value for s in states]
    sql = f"SELECT {', '.join(BATCH_JOB_COLUMNS)} FROM batch_job WHERE state IN (SELECT value FROM json_each(?))"
    params: List[Any] = [dumps(names)]
    if queue is not None:
        sql += " AND queue=?"
        params.append(queue)
    out = []
    for row in conn.execute(sql + " ORDER BY id", params):
        d = dict(zip(BATCH_JOB_COLUMNS, row))
        for k in _BATCH_JSON_COLUMNS:
            d[k] = loads(d[k])
        d["partitions"] = loads(d["partitions"]) if d["partitions"] else None
        out.append(d)
    return out


def running_footprint(conn: sqlite3.Connection, batch_job_id: int) -> float:
    """The nodes a BatchJob's RUNNING jobs occupy (``num_nodes / node_packing_count`` summed)."""
    row = conn.execute("SELECT coalesce(sum(CAST(num_nodes AS REAL) / node_packing_count), 0) FROM job "
                       "WHERE batch_job_id=? AND state='RUNNING'", (batch_job_id,)).fetchone()
    return float(row[0])


def waiting_demand(conn: sqlite3.Connection, states: Sequence[str], filter_tags: Mapping[str, str],
                   max_num_nodes: Optional[int] = None) -> Tuple[float, int, int]:
    """What unlocked jobs in ``states`` with ``filter_tags`` (and at most ``max_num_nodes`` nodes: larger ones no
    BatchJob of the caller's could run) ask for: (summed node footprint, largest num_nodes, longest wall_time_min);
    the elastic queue sizes BatchJobs from it."""
    sql = ("SELECT coalesce(sum(CAST(num_nodes AS REAL) / node_packing_count), 0), coalesce(max(num_nodes), 0), "
           "coalesce(max(wall_time_min), 0) FROM job WHERE state IN (SELECT value FROM json_each(?)) AND session_id IS NULL")
    params: List[Any] = [dumps(list(states))]
    if max_num_nodes is not None:
        sql += " AND num_nodes <= ?"
        params.append(int(max_num_nodes))
    for k, v in fields_db.check_tags(dict(filter_tags), name="filter_tags").items():
        sql += " AND id IN (SELECT job_id FROM job_tag WHERE key=? AND value=?)"
        params.extend((k, v))
    row = conn.execute(sql, params).fetchone()
    return float(row[0]), int(row[1]), int(row[2])


def batch_job_state(conn: sqlite3.Connection, batch_job_id: int) -> Optional[str]:
    """A BatchJob's state (one look-up by its id), or None when its record is gone."""
    row = conn.execute("SELECT state FROM batch_job WHERE id=?", (int(batch_job_id),)).fetchone()
    return None if row is None else str(row[0])


def batch_job_exists(conn: sqlite3.Connection, batch_job_id: int) -> bool:
    """True while the BatchJob's record exists (its owner may have deleted it)."""
    return conn.execute("SELECT 1 FROM batch_job WHERE id=?", (int(batch_job_id),)).fetchone() is not None


def largest_num_nodes(conn: sqlite3.Connection) -> int:
    """The most nodes any BatchJob of the site asked for (0 when there are none)."""
    return int(conn.execute("SELECT coalesce(max(num_nodes), 0) FROM batch_job").fetchone()[0])


def next_batch_job_id(conn: sqlite3.Connection) -> int:
    """The id the next new BatchJob will get (for previews such as ``queue submit --dry-run``)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='batch_job'").fetchone()
    top = conn.execute("SELECT max(id) FROM batch_job").fetchone()[0] or 0
    return max(int(row[0]) if row else 0, int(top)) + 1
