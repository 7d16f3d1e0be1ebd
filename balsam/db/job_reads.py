"""Reads of jobs that are not filter queries (those are :mod:`balsam.db.query`): one job's columns, the states
of jobs by id, which parents are unfinished, unlocked jobs waiting in some states (for the processing
service), and counts. States come in and go out as their stored names; callers hold :class:`JobState` members.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from balsam.db.codec import dumps
from balsam.db.connection import chunks
from balsam.db.states import JobState, to_state
from balsam.exceptions import ValidationError

READABLE = frozenset({
    "id", "workdir", "app_id", "tags", "parameters", "data", "return_code", "num_nodes", "ranks_per_node",
    "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params",
    "wall_time_min", "parent_ids", "batch_job_id", "session_id", "state", "last_update", "created",
    "pending_file_cleanup", "version",
})
"""Columns :func:`job_fields` reads (not the stored code or pickled values)."""


def _state_names(states: Iterable[Any]) -> List[str]:
    return [to_state(s).value for s in states]


def job_fields(conn: sqlite3.Connection, job_id: int, columns: Sequence[str]) -> Optional[Dict[str, Any]]:
    """``columns`` of job ``job_id`` as stored (JSON columns as text); None if there is no such job."""
    unknown = [c for c in columns if c not in READABLE]
    if unknown or not columns:
        raise ValidationError(f"job field {unknown[0]!r} cannot be read here" if unknown else "no job field asked for")
    row = conn.execute(f"SELECT {', '.join(columns)} FROM job WHERE id=?", (int(job_id),)).fetchone()
    return None if row is None else dict(zip(columns, row))


def job_states(conn: sqlite3.Connection, ids: Sequence[int]) -> Dict[int, str]:
    """Current stored states of the jobs among ``ids`` that exist."""
    out: Dict[int, str] = {}
    for chunk in chunks([int(i) for i in ids], 20000):
        out.update((int(i), str(s)) for i, s in conn.execute(
            "SELECT id, state FROM job WHERE id IN (SELECT value FROM json_each(?))", (dumps(list(chunk)),)))
    return out


def unfinished(conn: sqlite3.Connection, ids: Sequence[int]) -> List[Tuple[int, str]]:
    """(id, state) of the jobs among ``ids`` that are not JOB_FINISHED, by id."""
    states = job_states(conn, ids)
    return sorted((i, s) for i, s in states.items() if s != JobState.JOB_FINISHED.value)


def unlocked_in_state(conn: sqlite3.Connection, states: Iterable[Any], *, app_ids: Optional[Sequence[int]] = None,
                      limit: Optional[int] = None) -> List[int]:
    """Ids of jobs no session holds, in one of ``states`` (and of one of ``app_ids`` when given), up to ``limit``."""
    sql = "SELECT id FROM job WHERE state IN (SELECT value FROM json_each(?)) AND session_id IS NULL"
    params: List[Any] = [dumps(_state_names(states))]
    if app_ids is not None:
        # "+app_id": never the app index. Without statistics SQLite prefers it, and walks every job the app ever had
        # (a site of 1M finished jobs of one app, on each processing cycle) instead of the few in ``states``.
        sql += " AND +app_id IN (SELECT value FROM json_each(?))"
        params.append(dumps([int(a) for a in app_ids]))
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return [int(r[0]) for r in conn.execute(sql, params)]


def count_in_states(conn: sqlite3.Connection, states: Iterable[Any]) -> int:
    """How many jobs are in one of ``states``."""
    return int(conn.execute("SELECT count(*) FROM job WHERE state IN (SELECT value FROM json_each(?))",
                            (dumps(_state_names(states)),)).fetchone()[0])


def count_jobs(conn: sqlite3.Connection) -> int:
    """How many jobs the site has."""
    return int(conn.execute("SELECT count(*) FROM job").fetchone()[0])


def count_held(conn: sqlite3.Connection) -> int:
    """How many jobs a session (a launcher or the processing service) holds."""
    return int(conn.execute("SELECT count(*) FROM job WHERE session_id IS NOT NULL").fetchone()[0])


def counts_by_state(conn: sqlite3.Connection) -> Dict[str, int]:
    """Jobs by stored state name (states with no jobs left out)."""
    return {str(s): int(n) for s, n in conn.execute("SELECT state, count(*) FROM job GROUP BY state")}


__all__ = ["READABLE", "count_held", "count_in_states", "count_jobs", "counts_by_state", "job_fields", "job_states",
           "unfinished", "unlocked_in_state"]
