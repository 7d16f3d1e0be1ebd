"""BatchJobs in the site store: creation checked against the site's queue and project policies.

The policies (allowed queues with max nodes / wall time / queued jobs, allowed projects, optional
parameters) are the site row's copy of settings.yml. The API and the site agent's autoscalers create
BatchJobs through :func:`create_batch_job`, so both get the same checks and one-line errors.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, List, Mapping, Optional

from balsam.db import fields as fields_db
from balsam.db.codec import dumps, loads
from balsam.exceptions import ValidationError

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


def check_batch_job(conn: sqlite3.Connection, fields: Dict[str, Any], *, new: bool = True) -> Dict[str, Any]:
    """Check a BatchJob against the site's policies; fills a missing queue or project when the site allows
    exactly one. Returns the (completed) fields."""
    row = conn.execute("SELECT allowed_queues, allowed_projects, optional_batch_job_params, name FROM site LIMIT 1").fetchone()
    queues, projects, optional, site_name = loads(row[0]), loads(row[1]), loads(row[2]), row[3]
    d = dict(fields)
    if d.get("queue") is None and len(queues) == 1:
        d["queue"] = next(iter(queues))
    if d.get("project") is None and len(projects) == 1:
        d["project"] = projects[0]
    if d.get("queue") is None:
        raise ValidationError(f"a queue is required (site {site_name} allows: {', '.join(sorted(queues)) or 'none configured'})")
    if d.get("project") is None:
        raise ValidationError(f"a project is required (site {site_name} allows: {', '.join(projects) or 'any'})")
    d["num_nodes"] = fields_db.check_count("num_nodes", d.get("num_nodes"))
    d["wall_time_min"] = fields_db.check_count("wall_time_min", d.get("wall_time_min"), maximum=fields_db.MAX_WALL_TIME_MIN)
    if d.get("job_mode") not in JOB_MODES:
        raise ValidationError(f"job_mode must be one of {', '.join(JOB_MODES)}, got {d.get('job_mode')!r}")
    if queues and d["queue"] not in queues:
        raise ValidationError(f"queue {d['queue']!r} is not allowed at site {site_name} (allowed: {', '.join(sorted(queues))})")
    policy = queues.get(d["queue"], {})
    if "max_nodes" in policy and d["num_nodes"] > policy["max_nodes"]:
        raise ValidationError(f"queue {d['queue']!r} allows at most {policy['max_nodes']} nodes, asked for {d['num_nodes']}")
    if "max_wall_time_min" in policy and d["wall_time_min"] > policy["max_wall_time_min"]:
        raise ValidationError(f"queue {d['queue']!r} allows at most {policy['max_wall_time_min']} minutes, asked for {d['wall_time_min']}")
    if projects and d["project"] not in projects:
        raise ValidationError(f"project {d['project']!r} is not allowed at site {site_name} (allowed: {', '.join(projects)})")
    bad = sorted(set(d.get("optional_params") or {}) - set(optional))
    if bad:
        raise ValidationError(f"unknown optional parameter {bad[0]!r} (site {site_name} allows: {', '.join(sorted(optional)) or 'none'})")
    partitions = d.get("partitions")
    if partitions:
        total = sum(int(p.get("num_nodes", 0)) for p in partitions)
        if total != d["num_nodes"]:
            raise ValidationError(f"partitions add up to {total} nodes, but the batch job has {d['num_nodes']}")
        for p in partitions:
            if p.get("job_mode") not in JOB_MODES:
                raise ValidationError(f"partition job_mode must be mpi or serial, got {p.get('job_mode')!r}")
    if new and "max_queued_jobs" in policy:
        queued = conn.execute(
            "SELECT count(*) FROM batch_job WHERE queue=? AND state IN ('pending_submission', 'queued')", (d["queue"],)
        ).fetchone()[0]
        if queued >= policy["max_queued_jobs"]:
            raise ValidationError(f"queue {d['queue']!r} already has {queued} batch jobs waiting (max_queued_jobs {policy['max_queued_jobs']})")
    return d


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
    parts = [parse_partition(p) if isinstance(p, str) else dict(p) for p in partitions] if partitions else None
    d = check_batch_job(conn, {"num_nodes": num_nodes, "wall_time_min": wall_time_min, "job_mode": job_mode, "queue": queue,
                               "project": project, "optional_params": dict(optional_params or {}), "partitions": parts})
    now = time.time()
    cur = conn.execute(
        "INSERT INTO batch_job(project, queue, num_nodes, wall_time_min, job_mode, optional_params, filter_tags, partitions, "
        "state, status_info, created, last_update) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (d["project"], d["queue"], num_nodes, wall_time_min, job_mode, dumps(d["optional_params"]), dumps(dict(filter_tags or {})),
         None if not parts else dumps(parts), "pending_submission", dumps(dict(status_info or {})), now, now),
    )
    return int(cur.lastrowid or 0)
