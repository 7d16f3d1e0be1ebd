"""Sessions: the leases under which launchers and processing workers hold jobs.

A session is created, beats (:func:`tick`), acquires jobs (which locks them to it) and is released. A
session that stops beating for ``expiry_s`` expires; so does, at once, a session whose process ran on this
host and is gone (killed with SIGKILL, say). Expiry and release turn the session's RUNNING jobs into
RUN_TIMEOUT (the processing service then retries them) and unlock the rest. Acquisition runs inside one
``BEGIN IMMEDIATE`` transaction behind the writer lock, so two acquirers never get the same job.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import sqlite3
import sys
import time
from typing import Any, Dict, Generator, Iterable, Iterator, List, Optional, Sequence, Tuple

from balsam.db import doorbell, ids, journal
from balsam.db.codec import dumps, loads
from balsam.db.connection import writes_failed_at
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.meta import read_meta, write_meta
from balsam.db.schema import ACQUIRE_INDEXED_STATES
from balsam.db.states import RUNNABLE_STATES, JobState
from balsam.exceptions import SessionExpired, ValidationError

ACQUIRE_COLUMNS = (
    "id", "workdir", "app_id", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
    "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids",
    "state", "batch_job_id", "parameters_pickled",
)
_JSON = {"tags", "data", "launch_params", "parent_ids"}
RUNNABLE_NAMES: Tuple[str, ...] = tuple(sorted(s.value for s in RUNNABLE_STATES))
SORT_ORDERS: Dict[Optional[str], Tuple[Tuple[str, bool], ...]] = {
    # Balsam's documented default: fewest nodes first, then the most tightly packed, then the longest.
    None: (("num_nodes", False), ("node_packing_count", True), ("wall_time_min", True), ("id", False)),
    "id": (("id", False),),
    "long_large_first": (("wall_time_min", True), ("num_nodes", True), ("id", False)),
    "short_small_first": (("wall_time_min", False), ("num_nodes", False), ("id", False)),
}
"""Acquisition orders (``launcher.sort_by``): (column, descending) pairs, applied across all states asked for."""
SORT_NAMES = tuple(k for k in SORT_ORDERS if k)


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
    """End a lease: first what its launcher journaled but had not written is applied (:mod:`balsam.db.journal`),
    then its RUNNING jobs become RUN_TIMEOUT, the others are unlocked. Returns jobs timed out."""
    journal.replay(conn, session_id)
    running = [row[0] for row in conn.execute("SELECT id FROM job WHERE session_id=? AND state='RUNNING'", (session_id,))]
    if running:
        apply_state_changes(conn, [StateChange(j, "RUN_TIMEOUT", data={"message": message}) for j in running], strict=False)
    if conn.execute("UPDATE job SET session_id=NULL WHERE session_id=?", (session_id,)).rowcount:
        doorbell.note_states([JobState.PREPROCESSED.value])  # jobs it held unstarted are free: wake who waits for some
    conn.execute("DELETE FROM session WHERE id=?", (session_id,))
    journal.remove(conn, session_id)
    return len(running)


def expire_sessions(conn: sqlite3.Connection, *, expiry_s: float, host: str, now: Optional[float] = None) -> List[int]:
    """Release leases that stopped beating, or whose process on this host is gone. Returns their ids.

    A silence this process could not have heard through (it could not write the DB itself: a full disk) does
    not count: the lease's expiry runs from then, so a launcher that kept its results through the outage gets
    the time to write them (its journal included) before its lease is ended. Nor does a silence the wall clock
    made by jumping ahead (:func:`clock_jumped_at`): a live launcher is not presumed dead because NTP stepped
    the clock."""
    jumped_at = 0.0
    if now is None:
        now = time.time()
        jumped_at = clock_jumped_at(conn, now)
    deaf_until = max(writes_failed_at(conn), jumped_at)
    dead: List[Tuple[int, str]] = []
    # Only stale leases and this host's can be dead: hundreds of live remote launchers' leases are not read.
    rows = conn.execute("SELECT id, heartbeat, host, pid, pid_start FROM session WHERE heartbeat < ? OR host = ?",
                        (now - expiry_s, host)).fetchall()
    for sid, heartbeat, s_host, pid, pid_start in rows:
        if max(heartbeat, deaf_until) < now - expiry_s:
            dead.append((sid, f"the launcher's lease expired: no heartbeat for {now - heartbeat:.0f} s (launcher presumed dead)"))
        elif s_host == host and pid is not None and not process_alive(pid, pid_start):
            dead.append((sid, f"the launcher died: its process {pid} on {host} is gone"))
    for sid, why in dead:
        release(conn, sid, message=why)
    return [sid for sid, _ in dead]


CLOCK_JUMP_S = 5.0
"""A step of the wall clock, against the host's monotonic boot clock, larger than this is a clock jump."""
_CLOCK_SEEN = "clock_seen"
_CLOCK_JUMPED = "clock_jumped_at"


def _boot_clock() -> float:
    """Seconds since boot, the same for every process on this host and blind to wall-clock steps."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def clock_jumped_at(conn: sqlite3.Connection, now: float) -> float:
    """When the home host's wall clock last jumped, as far as lease expiry has seen (0 if never).

    Every lease's heartbeat is written on the home host (directly, or by its agent for other hosts) in wall-clock
    time, so a step of that clock (NTP, an administrator's ``date -s``) ages or rejuvenates every heartbeat at once.
    Each expiry check records the wall and boot clocks side by side in the site DB (any process on the home host
    shares the boot clock); when the wall clock moved ahead of the boot clock by more than ``CLOCK_JUMP_S``, the
    jump's time is kept and silence before it does not count. A step back brings heartbeats from the future back
    to now, so a dead launcher's lease is not kept alive for the size of the step."""
    boot = _boot_clock()
    seen = read_meta(conn, _CLOCK_SEEN)
    jumped_text = read_meta(conn, _CLOCK_JUMPED)
    jumped = float(jumped_text) if jumped_text else 0.0
    try:
        wall0, boot0 = (float(x) for x in (seen or "").split())
    except ValueError:
        wall0 = boot0 = -1.0
    if boot0 >= 0 and boot >= boot0:  # the same boot as the last check
        drift = (now - wall0) - (boot - boot0)
        if drift > CLOCK_JUMP_S:
            jumped = now
            write_meta(conn, _CLOCK_JUMPED, repr(now))
        elif drift < -CLOCK_JUMP_S:
            conn.execute("UPDATE session SET heartbeat=? WHERE heartbeat>?", (now, now))
        if abs(drift) <= CLOCK_JUMP_S and boot - boot0 < 1.0:
            return jumped  # checked within the last second: nothing new to record
    write_meta(conn, _CLOCK_SEEN, f"{now!r} {boot!r}")
    return jumped


SESSION_FIELDS = frozenset({"id", "host", "pid", "label", "heartbeat", "batch_job_id"})


def session_fields(conn: sqlite3.Connection, session_id: int, columns: Sequence[str]) -> Optional[Dict[str, Any]]:
    """``columns`` of session ``session_id`` (from SESSION_FIELDS); None if it is gone."""
    unknown = [c for c in columns if c not in SESSION_FIELDS]
    if unknown or not columns:
        raise ValidationError(f"session field {unknown[0]!r} cannot be read" if unknown else "no session field asked for")
    row = conn.execute(f"SELECT {', '.join(columns)} FROM session WHERE id=?", (int(session_id),)).fetchone()
    return None if row is None else dict(zip(columns, row))


def session_labels(conn: sqlite3.Connection) -> List[Tuple[int, str, str]]:
    """(id, host, label) of every open session, by id (a launcher's label carries its capacity)."""
    return [(int(i), str(h), str(lb or "")) for i, h, lb in conn.execute("SELECT id, host, label FROM session ORDER BY id")]


def live_holders(conn: sqlite3.Connection, beat_since: float) -> List[Tuple[int, str, Optional[int], int]]:
    """Sessions that beat after ``beat_since`` and hold jobs: (session id, host, pid, jobs held), by id."""
    rows = conn.execute(
        "SELECT s.id, s.host, s.pid, count(j.id) FROM session s JOIN job j ON j.session_id = s.id "
        "WHERE s.heartbeat > ? GROUP BY s.id ORDER BY s.id", (float(beat_since),)).fetchall()
    return [(int(r[0]), str(r[1]), None if r[2] is None else int(r[2]), int(r[3])) for r in rows]


def _tag_clauses(tags: Optional[Dict[str, str]]) -> Tuple[List[str], List[Any]]:
    clauses: List[str] = []
    params: List[Any] = []
    for k, v in (tags or {}).items():
        clauses.append("id IN (SELECT job_id FROM job_tag WHERE key=? AND value=?)")
        params.extend((k, str(v)))
    return clauses, params


def _constraints(
    app_ids: Optional[Sequence[int]],
    serial_only: bool,
    max_nodes_per_job: Optional[float],
    max_wall_time_min: Optional[float],
    max_gpus_per_node: Optional[float],
    filter_tags: Optional[Dict[str, str]],
) -> Tuple[List[str], List[Any]]:
    """WHERE clauses (and their parameters) every acquired job meets, whatever its state."""
    clauses = ["session_id IS NULL"]
    params: List[Any] = []
    if app_ids is not None:
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
    return clauses + tag_sql, params + tag_params


def _sort_key(order: Tuple[Tuple[str, bool], ...]) -> Any:
    """A Python sort key matching the SQL ORDER BY of ``order`` (numbers only: descending negates)."""
    return lambda row: tuple(-row[col] if desc else row[col] for col, desc in order)


def _candidates(
    conn: sqlite3.Connection, states: Iterable[str], where: List[str], params: List[Any], order: Tuple[Tuple[str, bool], ...],
    limit: int,
) -> Generator[Dict[str, Any], None, None]:
    """Unlocked jobs in ``states`` meeting ``where``, in ``order`` across all the states, at most ``limit``, read lazily.

    Each state is read through the (state) index in order, then the states are merged as they are read: a caller
    that stops early (the budget is spent) has made SQLite step only over the rows it used, so acquiring the few
    jobs a freed slot holds costs a few rows, not ``limit`` (the cursors are closed when the iterator is).
    """
    cols = ", ".join(ACQUIRE_COLUMNS)
    order_sql = ", ".join(f"{col}{' DESC' if desc else ''}" for col, desc in order)
    cursors: List[sqlite3.Cursor] = []
    streams: List[Iterator[Dict[str, Any]]] = []
    for state in sorted(set(states)):
        # The state is written into the SQL (a known state name, never user text) so that SQLite can use the
        # partial index of that state (schema v3) and stop after ``limit`` rows instead of sorting them all.
        name = JobState(state).value
        hint = f" INDEXED BY job_acquire_{name.lower()}" if order == SORT_ORDERS[None] and name in ACQUIRE_INDEXED_STATES else ""
        sql = (f"SELECT {cols}, (SELECT version FROM app WHERE app.id = job.app_id) AS app_version FROM job{hint} "
               f"WHERE state='{name}' AND {' AND '.join(where)} ORDER BY {order_sql} LIMIT ?")
        cur = conn.execute(sql, (*params, limit))
        cursors.append(cur)
        names = [d[0] for d in cur.description]
        streams.append(dict(zip(names, r)) for r in cur)
    if len(streams) > 1:  # merge only the states that have candidates (most often one: a restarted job is rare)
        heads = [(first, stream) for first, stream in ((next(stream, None), stream) for stream in streams) if first is not None]
        streams = [itertools.chain((first,), stream) for first, stream in heads] or [iter(())]
    merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=_sort_key(order))
    try:
        yield from itertools.islice(merged, limit)
    finally:
        for cur in cursors:
            cur.close()


def _within_budget(rows: Iterable[Dict[str, Any]], max_num_jobs: int, budget: Optional[float]) -> List[Dict[str, Any]]:
    """The rows taken in order while the summed footprint (num_nodes / node_packing_count) fits ``budget``."""
    if budget is None:
        return list(itertools.islice(rows, max_num_jobs))
    taken = []
    for row in rows:
        footprint = row["num_nodes"] / row["node_packing_count"]
        if footprint > budget + 1e-9:
            continue
        budget -= footprint
        taken.append(row)
        if len(taken) >= max_num_jobs or budget <= 1e-9:
            break
    return taken


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
    json_text: bool = False,
) -> List[Dict[str, Any]]:
    """Lock up to ``max_num_jobs`` unlocked jobs in ``states`` to the session and return them (dicts of
    ACQUIRE_COLUMNS plus ``app_version``, so a launcher knows when an app was re-synced). ``json_text``: the
    JSON columns stay JSON text (the HTTP server splices them into its answer instead of decoding and re-encoding).

    Filters: ``filter_tags`` (all must match), ``app_ids``, ``serial_only`` (single-node jobs),
    ``max_nodes_per_job``, ``max_wall_time_min`` (jobs that declare more are skipped; 0 means "unknown" and
    always fits), ``max_gpus_per_node`` (jobs needing more GPUs on a node than the launcher's nodes have stay
    for another launcher), and ``max_aggregate_nodes`` (the summed footprint ``num_nodes / node_packing_count`` of
    the jobs taken stays within it; jobs are considered in ``sort_by`` order and skipped if they do not fit).
    ``sort_by`` (SORT_ORDERS) orders the jobs across all ``states``; the default is Balsam's.
    """
    if sort_by not in SORT_ORDERS:
        raise ValidationError(f"unknown sort order {sort_by!r} (valid: {', '.join(SORT_NAMES)})")
    if max_num_jobs <= 0 or (app_ids is not None and not app_ids):
        return []
    tick(conn, session_id, now)
    row = conn.execute("SELECT batch_job_id FROM session WHERE id=?", (session_id,)).fetchone()
    batch_job_id = row[0] if row else None
    where, params = _constraints(app_ids, serial_only, max_nodes_per_job, max_wall_time_min, max_gpus_per_node, filter_tags)
    scan_limit = max_num_jobs * 4 + 1000 if max_aggregate_nodes is not None else max_num_jobs
    candidates = _candidates(conn, states, where, params, SORT_ORDERS[sort_by], scan_limit)
    try:
        taken = _within_budget(candidates, max_num_jobs, max_aggregate_nodes)
    finally:
        candidates.close()  # the SELECTs end here, before the UPDATE below
    if not taken:
        return []
    conn.execute(
        "UPDATE job SET session_id=?, batch_job_id=coalesce(?, batch_job_id) WHERE id IN (SELECT value FROM json_each(?))",
        (session_id, batch_job_id, dumps([job["id"] for job in taken])),
    )
    for job in taken:
        if not json_text:
            for k in _JSON:
                job[k] = loads(job[k])
        if batch_job_id is not None:
            job["batch_job_id"] = batch_job_id
    return taken


def acquired_again(conn: sqlite3.Connection, job_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """The jobs of an acquire that is being answered again (a launcher's retry), as :func:`acquire` with ``json_text``
    gave them, in the same order: the same jobs, as they are now (a job deleted since is left out)."""
    if not job_ids:
        return []
    cols = ", ".join(ACQUIRE_COLUMNS)
    cur = conn.execute(f"SELECT {cols}, (SELECT version FROM app WHERE app.id = job.app_id) AS app_version FROM job "
                       "WHERE id IN (SELECT value FROM json_each(?))", (dumps(list(job_ids)),))
    names = [d[0] for d in cur.description]
    found = {row[0]: dict(zip(names, row)) for row in cur}
    return [found[i] for i in job_ids if i in found]


JSON_COLUMNS = frozenset(_JSON)
"""Acquired columns holding JSON (text with ``json_text``)."""

__all__ = [
    "JSON_COLUMNS", "RUNNABLE_NAMES", "SESSION_FIELDS", "acquire", "acquired_again", "capacity_label", "label_capacity", "create_session", "expire_sessions",
    "live_holders", "process_alive", "process_start_time", "release", "session_fields", "session_labels", "tick", "JobState",
]
