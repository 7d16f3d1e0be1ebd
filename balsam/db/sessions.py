"""Sessions: the leases under which launchers and processing workers hold jobs.

A session is created, beats (:func:`tick`), acquires jobs (which locks them to it) and is released. A
session that stops beating for ``expiry_s`` expires; so does, at once, a session whose process ran on this
host and is gone (killed with SIGKILL, say). Expiry and release turn the session's RUNNING jobs into
RUN_TIMEOUT (the processing service then retries them) and unlock the rest. Acquisition runs inside one
``BEGIN IMMEDIATE`` transaction behind the writer lock, so two acquirers never get the same job.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from balsam.db import ids
from balsam.db.codec import dumps, loads
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.states import RUNNABLE_STATES, JobState
from balsam.exceptions import SessionExpired, ValidationError

ACQUIRE_COLUMNS = (
    "id", "workdir", "app_id", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
    "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids",
    "state", "batch_job_id",
)
_JSON = {"tags", "data", "launch_params", "parent_ids"}
RUNNABLE_NAMES: Tuple[str, ...] = tuple(sorted(s.value for s in RUNNABLE_STATES))
SORT_ORDERS = {
    None: "id",
    "id": "id",
    "long_large_first": "wall_time_min DESC, num_nodes DESC, id",
    "short_small_first": "wall_time_min, num_nodes, id",
}


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where /proc is absent.

    Together with the pid it names a process without the risk of pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime) follows the ")" that closes the command name, which may contain spaces.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return float(fields[19])


def process_alive(pid: int, start: Optional[float]) -> bool:
    """True if the process that held a lease still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if start is not None and sys.platform.startswith("linux"):
        now_start = process_start_time(pid)
        return now_start is None or now_start == start
    return True


_CAPACITY = re.compile(r"\[nodes=(\d+) cpus=(\d+) gpus=(\d+)\]\s*$")


def capacity_label(label: str, nodes: int, cpus_per_node: int, gpus_per_node: int) -> str:
    """A launcher's session label with what its nodes hold, e.g. ``launcher (mpi) [nodes=1 cpus=8 gpus=0]``
    (read back by :func:`label_capacity`, so ``balsam job show`` can say why a job waits)."""
    return f"{label} [nodes={nodes} cpus={cpus_per_node} gpus={gpus_per_node}]"


def label_capacity(label: str) -> Optional[Tuple[int, int, int]]:
    """(nodes, CPUs per node, GPUs per node) from a :func:`capacity_label`; None for other labels (pure)."""
    m = _CAPACITY.search(label or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def create_session(
    conn: sqlite3.Connection,
    *,
    host: str,
    pid: Optional[int] = None,
    batch_job_id: Optional[int] = None,
    label: str = "",
    now: Optional[float] = None,
) -> int:
    """Open a lease held by process ``pid`` on ``host``; returns its id."""
    now = time.time() if now is None else now
    pid = os.getpid() if pid is None else pid
    if batch_job_id is not None and not ids.site_of(batch_job_id):
        # A batch script rendered before the site got its id prefix ('balsam db migrate') names the old id.
        site = conn.execute("SELECT id FROM site LIMIT 1").fetchone()
        if site is not None:
            batch_job_id = ids.in_site(batch_job_id, int(site[0]))
    cur = conn.execute(
        "INSERT INTO session(batch_job_id, heartbeat, created, host, pid, pid_start, label) VALUES (?,?,?,?,?,?,?)",
        (batch_job_id, now, now, host, pid, process_start_time(pid), label),
    )
    return int(cur.lastrowid or 0)


def tick(conn: sqlite3.Connection, session_id: int, now: Optional[float] = None) -> None:
    """Renew a lease; SessionExpired if it is gone."""
    now = time.time() if now is None else now
    if conn.execute("UPDATE session SET heartbeat=? WHERE id=?", (now, session_id)).rowcount == 0:
        raise SessionExpired(f"session {session_id} has expired or was released; its jobs were unlocked")


def release(conn: sqlite3.Connection, session_id: int, message: str = "the launcher released its lease") -> int:
    """End a lease: its RUNNING jobs become RUN_TIMEOUT, the others are unlocked. Returns jobs timed out."""
    running = [row[0] for row in conn.execute("SELECT id FROM job WHERE session_id=? AND state='RUNNING'", (session_id,))]
    if running:
        apply_state_changes(conn, [StateChange(j, "RUN_TIMEOUT", data={"message": message}) for j in running], strict=False)
    conn.execute("UPDATE job SET session_id=NULL WHERE session_id=?", (session_id,))
    conn.execute("DELETE FROM session WHERE id=?", (session_id,))
    return len(running)


def expire_sessions(conn: sqlite3.Connection, *, expiry_s: float, host: str, now: Optional[float] = None) -> List[int]:
    """Release leases that stopped beating, or whose process on this host is gone. Returns their ids."""
    now = time.time() if now is None else now
    dead: List[Tuple[int, str]] = []
    for sid, heartbeat, s_host, pid, pid_start in conn.execute("SELECT id, heartbeat, host, pid, pid_start FROM session").fetchall():
        if heartbeat < now - expiry_s:
            dead.append((sid, f"session expired: no heartbeat for {now - heartbeat:.0f} s"))
        elif s_host == host and pid is not None and not process_alive(pid, pid_start):
            dead.append((sid, f"session's process {pid} on {host} is gone"))
    for sid, why in dead:
        release(conn, sid, message=why)
    return [sid for sid, _ in dead]


def _tag_clauses(tags: Optional[Dict[str, str]]) -> Tuple[List[str], List[Any]]:
    clauses: List[str] = []
    params: List[Any] = []
    for k, v in (tags or {}).items():
        clauses.append("id IN (SELECT job_id FROM job_tag WHERE key=? AND value=?)")
        params.extend((k, str(v)))
    return clauses, params


def acquire(
    conn: sqlite3.Connection,
    session_id: int,
    *,
    states: Iterable[str] = RUNNABLE_NAMES,
    max_num_jobs: int = 1000,
    filter_tags: Optional[Dict[str, str]] = None,
    app_ids: Optional[Sequence[int]] = None,
    serial_only: bool = False,
    max_nodes_per_job: Optional[float] = None,
    max_aggregate_nodes: Optional[float] = None,
    max_wall_time_min: Optional[float] = None,
    max_gpus_per_node: Optional[float] = None,
    sort_by: Optional[str] = None,
    now: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """Lock up to ``max_num_jobs`` unlocked jobs in ``states`` to the session and return them.

    Filters: ``filter_tags`` (all must match), ``app_ids``, ``serial_only`` (single-node jobs),
    ``max_nodes_per_job``, ``max_wall_time_min`` (jobs that declare more are skipped; 0 means "unknown" and
    always fits), ``max_gpus_per_node`` (jobs needing more GPUs on a node than the launcher's nodes have stay
    for another launcher), and ``max_aggregate_nodes`` (the summed footprint ``num_nodes / node_packing_count`` of
    the jobs taken stays within it; jobs are considered in ``sort_by`` order and skipped if they do not fit).
    """
    if sort_by not in SORT_ORDERS:
        raise ValidationError(f"unknown sort order {sort_by!r} (valid: {', '.join(k for k in SORT_ORDERS if k)})")
    if max_num_jobs <= 0:
        return []
    tick(conn, session_id, now)
    row = conn.execute("SELECT batch_job_id FROM session WHERE id=?", (session_id,)).fetchone()
    batch_job_id = row[0] if row else None
    clauses = ["session_id IS NULL"]
    params: List[Any] = []
    if app_ids is not None:
        if not app_ids:
            return []
        clauses.append("app_id IN (SELECT value FROM json_each(?))")
        params.append(dumps(list(app_ids)))
    if serial_only:
        clauses.append("num_nodes = 1")
    if max_nodes_per_job is not None:
        clauses.append("num_nodes <= ?")
        params.append(max_nodes_per_job)
    if max_wall_time_min is not None:
        clauses.append("wall_time_min <= ?")
        params.append(max_wall_time_min)
    if max_gpus_per_node is not None:
        clauses.append("ranks_per_node * gpus_per_rank <= ?")
        params.append(float(max_gpus_per_node) + 1e-9)
    tag_sql, tag_params = _tag_clauses(filter_tags)
    clauses += tag_sql
    params += tag_params
    order = SORT_ORDERS[sort_by]
    cols = ", ".join(ACQUIRE_COLUMNS)
    taken: List[Tuple[Any, ...]] = []
    budget = max_aggregate_nodes
    scan_limit = max_num_jobs * 4 + 1000 if budget is not None else max_num_jobs
    for state in sorted(set(states)):
        if len(taken) >= max_num_jobs or (budget is not None and budget <= 0):
            break
        sql = f"SELECT {cols} FROM job WHERE state=? AND {' AND '.join(clauses)} ORDER BY {order} LIMIT ?"
        for job in conn.execute(sql, (state, *params, scan_limit)):
            if budget is not None:
                footprint = job[6] / job[11]
                if footprint > budget + 1e-9:
                    continue
                budget -= footprint
            taken.append(job)
            if len(taken) >= max_num_jobs or (budget is not None and budget <= 1e-9):
                break
    if not taken:
        return []
    ids = [job[0] for job in taken]
    conn.execute(
        "UPDATE job SET session_id=?, batch_job_id=coalesce(?, batch_job_id) WHERE id IN (SELECT value FROM json_each(?))",
        (session_id, batch_job_id, dumps(ids)),
    )
    out = []
    for job in taken:
        d = dict(zip(ACQUIRE_COLUMNS, job))
        for k in _JSON:
            d[k] = loads(d[k])
        if batch_job_id is not None:
            d["batch_job_id"] = batch_job_id
        out.append(d)
    return out


__all__ = [
    "RUNNABLE_NAMES", "acquire", "capacity_label", "label_capacity", "create_session", "expire_sessions", "process_alive", "process_start_time", "release", "tick",
    "JobState",
]
