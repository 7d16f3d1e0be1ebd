"""The SQL behind ``balsam.analytics``: event times, node footprints, time in state, failure reasons.

Each function takes the filters of an API query (Balsam's keywords, planned by :mod:`balsam.db.query`) and
returns plain rows in time order; the API layer turns them into Balsam's (times, values) shapes. The work
that grows with the event count (filtering, matching a run's end to its start, time in state) stays in
SQLite; Python sees one row per point it returns.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from balsam.db import query as q
from balsam.db.codec import dumps, loads

__all__ = ["PHASES", "event_times", "failure_rows", "node_time_rows", "phase_durations", "state_counts", "state_deltas",
           "batch_job_windows"]

PHASES: Dict[str, Tuple[str, ...]] = {
    "queue_wait": ("PREPROCESSED", "RESTART_READY"),
    "run": ("RUNNING",),
    "postprocess": ("RUN_DONE", "POSTPROCESSED", "STAGED_OUT"),
}
"""The phases whose durations are reported, each the time jobs spent in these states: waiting for a launcher
(runnable), running, and from the end of the run to finishing (postprocess hook and stage-out)."""


def _events_where(conn: sqlite3.Connection, filters: Dict[str, Any]) -> Tuple[str, List[Any]]:
    _, where, params = q.plan(q.EVENT, filters, conn)
    return where, params


def event_times(conn: sqlite3.Connection, filters: Dict[str, Any], to_state: str) -> List[float]:
    """Timestamps of the matching events that entered ``to_state``, ascending (every arrival counts)."""
    where, params = _events_where(conn, filters)
    rows = conn.execute(f"SELECT timestamp FROM event WHERE ({where}) AND to_state = ? ORDER BY timestamp, id", [*params, to_state])
    return [r[0] for r in rows]


def node_time_rows(conn: sqlite3.Connection, filters: Dict[str, Any], node_weighting: bool) -> Tuple[List[float], List[float]]:
    """(times, nodes busy after each) at each start or end of a run among the matching events.

    A start (``to_state`` RUNNING) adds the run's footprint (``data.num_nodes``, which is num_nodes /
    node_packing_count; 1 without ``node_weighting``); the end of that run (the job's next event leaving
    RUNNING) takes the same amount away. A job that ran several times counts once per run. An end whose start
    is not among the matching events (it began before a time filter) is left out, so the curve never goes
    below zero. SQLite filters and orders the run events; one pass matches ends to starts.
    """
    where, params = _events_where(conn, filters)
    weight = "coalesce(CAST(json_extract(data, '$.num_nodes') AS REAL), 1.0)" if node_weighting else "1.0"
    rows = conn.execute(
        f"SELECT timestamp, job_id, to_state = 'RUNNING', CASE WHEN to_state = 'RUNNING' THEN {weight} END FROM event "
        f"WHERE ({where}) AND (to_state = 'RUNNING' OR from_state = 'RUNNING') ORDER BY timestamp, id", params)
    return run_levels(rows)


def run_levels(rows: Iterable[Sequence[Any]]) -> Tuple[List[float], List[float]]:
    """(times, nodes busy after each) from run events in time order: (timestamp, job_id, is a start, footprint)."""
    busy: Dict[int, float] = {}
    times: List[float] = []
    levels: List[float] = []
    level = 0.0
    for ts, job_id, start, w in rows:
        if start:
            prev = busy.get(job_id)
            if prev is not None:  # a start with no end between: the earlier run's end is outside the query
                level -= prev
            busy[job_id] = w
            level += w
        else:
            w = busy.pop(job_id, None)
            if w is None:
                continue
            level -= w
        times.append(ts)
        levels.append(level)
    return times, levels


def batch_job_windows(conn: sqlite3.Connection, filters: Dict[str, Any]) -> List[Tuple[Optional[float], Optional[float], int]]:
    """(start_time, end_time, num_nodes) of the matching BatchJobs that started."""
    _, where, params = q.plan(q.BATCH_JOB, filters, conn)
    return conn.execute(
        f"SELECT start_time, end_time, num_nodes FROM batch_job WHERE ({where}) AND start_time IS NOT NULL ORDER BY start_time, id", params
    ).fetchall()


def state_deltas(conn: sqlite3.Connection, filters: Dict[str, Any]) -> List[Tuple[float, str, str]]:
    """(time, from_state, to_state) of the matching events, in time order (for job counts by state over time)."""
    where, params = _events_where(conn, filters)
    return conn.execute(f"SELECT timestamp, from_state, to_state FROM event WHERE ({where}) ORDER BY timestamp, id", params).fetchall()


def _group_rows(conn: sqlite3.Connection, filters: Dict[str, Any], group_by: str) -> Dict[int, str]:
    """job id -> group (the app's name, or the value of tag ``group_by[4:]``) for the jobs of the matching events."""
    where, params = _events_where(conn, filters)
    jobs = f"SELECT DISTINCT job_id FROM event WHERE ({where})"
    if group_by == "app":
        sql = f"SELECT j.id, a.name FROM job j JOIN app a ON a.id = j.app_id WHERE j.id IN ({jobs})"
        return dict(conn.execute(sql, params).fetchall())
    sql = f"SELECT job_id, value FROM job_tag WHERE key = ? AND job_id IN ({jobs})"
    return dict(conn.execute(sql, [group_by[4:], *params]).fetchall())


def phase_durations(
    conn: sqlite3.Connection, filters: Dict[str, Any], group_by: str = ""
) -> Dict[Tuple[str, str], List[float]]:
    """Seconds each job spent in each phase (one sample per visit), keyed by (group, phase), each list sorted.

    A visit runs from the event entering one of the phase's states to the job's next event leaving them
    (RUN_DONE -> POSTPROCESSED -> JOB_FINISHED is one postprocess visit); a visit still open, or whose start
    is not among the matching events, is left out. Groups: ``"app"`` (the app's name), ``"tag:<key>"``
    (that tag's value, ``""`` when absent), or ``""`` (one group). SQLite selects the events that cross a
    phase boundary, in id order (a job's events are written in the order its state changed); one pass pairs
    them.
    """
    where, params = _events_where(conn, filters)
    phase_of = {state: phase for phase, states in PHASES.items() for state in states}
    names = ", ".join(f"'{s}'" for s in phase_of)
    rows = conn.execute(
        f"SELECT job_id, timestamp, from_state, to_state FROM event WHERE ({where}) AND (from_state IN ({names}) OR to_state IN ({names}))",
        params)
    groups = _group_rows(conn, filters, group_by) if group_by else {}
    open_: Dict[Tuple[int, str], float] = {}
    out: Dict[Tuple[str, str], List[float]] = {}
    get = phase_of.get
    for job_id, ts, src, dst in rows:
        p_src = get(src)
        p_dst = get(dst)
        if p_src == p_dst:
            continue
        if p_src is not None:
            start = open_.pop((job_id, p_src), None)
            if start is not None:
                key = (groups.get(job_id, ""), p_src)
                bucket = out.get(key)
                if bucket is None:
                    bucket = out[key] = []
                bucket.append(ts - start)
        if p_dst is not None:
            open_[(job_id, p_dst)] = ts
    for values in out.values():
        values.sort()
    return out


def failure_rows(conn: sqlite3.Connection, filters: Dict[str, Any]) -> List[Tuple[int, Dict[str, Any]]]:
    """(job id, data) of the latest event with a message or error for each matching FAILED job ({} if none)."""
    _, where, params = q.plan(q.JOB, dict(filters, state="FAILED"), conn)
    sql = f"""
        WITH f AS (SELECT id FROM job WHERE {where}),
        e AS (
            SELECT ev.job_id, ev.data, row_number() OVER (PARTITION BY ev.job_id ORDER BY ev.id DESC) AS n
            FROM event ev JOIN f ON f.id = ev.job_id
            WHERE ev.data IS NOT NULL AND (json_extract(ev.data, '$.message') IS NOT NULL OR json_extract(ev.data, '$.error') IS NOT NULL)
        )
        SELECT f.id, e.data FROM f LEFT JOIN e ON e.job_id = f.id AND e.n = 1 ORDER BY f.id
    """
    return [(int(i), loads(d) if d else {}) for i, d in conn.execute(sql, params)]


def state_counts(conn: sqlite3.Connection, job_ids: Sequence[int]) -> Dict[str, int]:
    """How many of these jobs are in each state (ids bound as one JSON parameter, chunked)."""
    out: Dict[str, int] = {}
    ids = list(job_ids)
    for start in range(0, len(ids), 50000):
        rows: Iterable[Tuple[str, int]] = conn.execute(
            "SELECT state, count(*) FROM job WHERE id IN (SELECT value FROM json_each(?)) GROUP BY state", (dumps(ids[start : start + 50000]),)
        )
        for state, n in rows:
            out[state] = out.get(state, 0) + int(n)
    return out
