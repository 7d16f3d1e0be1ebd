"""Jobs in the site store, by seam: creation (:mod:`balsam.db.creation`), the state engine
(:mod:`balsam.db.transitions`), and here the edits of existing jobs (fields, parents), deletion and the file
cleaner's bookkeeping.

Every function runs inside the caller's write transaction (``with store.write() as conn``). Field values go
through their one validator (balsam.db.fields); state changes through :func:`apply_state_changes`.
This module also re-exports the creation and state-engine names, so ``balsam.db.jobs`` stays the one import.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from balsam.db.codec import dumps, encode_parameters, loads
from balsam.db.connection import chunks
from balsam.db.creation import (
    NEW_JOB_COLUMNS,
    insert_jobs,
    new_job_row,
    params_dict,
    plain_job_row,
    raise_duplicate_workdir,
    refuse_nul,
)
from balsam.db.fields import UPDATABLE_FIELDS, check_fields
from balsam.db.states import FAILED_STATES, JobState
from balsam.db.transitions import JSON_COLUMNS, ChangeResult, StateChange, apply_state_changes, children_waiting, ids_param
from balsam.exceptions import IllegalTransition, JobLockedError, ValidationError

S = JobState
_FINISHED = S.JOB_FINISHED.value
_FAILED_NAMES = frozenset(s.value for s in FAILED_STATES)

JOB_COLUMNS = (
    "id", "workdir", "app_id", "tags", "parameters", "data", "return_code", "num_nodes", "ranks_per_node",
    "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params",
    "wall_time_min", "parent_ids", "batch_job_id", "session_id", "state", "last_update", "created",
    "pending_file_cleanup", "serialized_return_value", "serialized_exception", "version", "parameters_pickled",
)
# --------------------------------------------------------------------------------------------- field updates
def check_job_update(job_id: int, fields: Dict[str, Any]) -> Dict[str, Any]:
    """One job's new field values checked as :func:`update_job_fields` checks them, without the DB. The Python API
    checks a write with it before any backend sees it, so a bad value is the same ValidationError on the site's
    home host and from another host (where the values would otherwise be turned into JSON first)."""
    where = f"job {job_id}: "
    checked = check_fields(fields, where, UPDATABLE_FIELDS)
    if "parameters" in checked:
        checked["parameters"] = params_dict(checked["parameters"], where)
    return checked


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
        if fields.get("launch_params"):
            from balsam.db.launch_flags import refuse_at_site

            refuse_at_site(conn, fields["launch_params"], f"job {job_id}: ")
        if "parameters" in fields:
            text, pickled = encode_parameters(params_dict(fields["parameters"], f"job {job_id}: "))
            fields = dict(fields, parameters=text, parameters_pickled=pickled)
            if "\\u0000" in text:
                app = conn.execute("SELECT app.name, app.kind FROM job JOIN app ON app.id = job.app_id WHERE job.id=?", (job_id,)).fetchone()
                if app is not None and app[1] == "shell":
                    refuse_nul(f"job {job_id}", str(app[0]), text)
        keys = tuple(sorted(fields))
        groups.setdefault(keys, []).append(
            tuple(dumps(fields[k]) if k in JSON_COLUMNS else fields[k] for k in keys) + (now, job_id)
        )
    if tag_changes:
        old: Dict[int, Dict[str, str]] = {}
        for chunk in chunks(list(tag_changes), 20000):
            old.update((row[0], loads(row[1])) for row in conn.execute(
                "SELECT id, tags FROM job WHERE id IN (SELECT value FROM json_each(?))", (ids_param(chunk),)))
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
                raise_duplicate_workdir(conn, [r[keys.index("workdir")] for r in rows])
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
    parents = dict(conn.execute("SELECT id, state FROM job WHERE id IN (SELECT value FROM json_each(?))", (ids_param(new),)).fetchall())
    away = [p for p in new if p not in parents]
    ended = _FAILED_NAMES
    if away:  # jobs of other sites (this site must be linked to a relay: balsam.db.foreign), or no such job
        from balsam.db import foreign

        ended = _FAILED_NAMES | foreign.ENDED_STATES  # the relay reported it DELETED or in a LOOP: it never finishes

        site_id = foreign.this_site(conn)
        for p in away:
            if not foreign.is_foreign(p, site_id):
                raise ValidationError(f"parent job {p} does not exist at this site")
        parents.update(foreign.record(conn, away, f"job {child_id}: "))
    if new and _creates_cycle(conn, child_id, new):
        raise ValidationError(f"making job {child_id} depend on {new} would create a cycle")
    conn.execute("UPDATE job SET parent_ids=?, last_update=?, version=version+1 WHERE id=?", (dumps(current + new), time.time(), child_id))
    conn.executemany("INSERT OR IGNORE INTO job_parent(parent_id, child_id) VALUES (?,?)", [(p, child_id) for p in new])
    failed = [p for p in new if parents[p] in ended]
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
        (ids_param(new_parents), child_id),
    ).fetchone()
    return row is not None


# --------------------------------------------------------------------------------------------- deletion
def live_locked(conn: sqlite3.Connection, job_ids: Sequence[int]) -> List[int]:
    """Jobs among ``job_ids`` held by a session."""
    out: List[int] = []
    for chunk in chunks(list(job_ids), 20000):
        out.extend(row[0] for row in conn.execute(
            "SELECT id FROM job WHERE id IN (SELECT value FROM json_each(?)) AND session_id IS NOT NULL", (ids_param(chunk),)))
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
    waiting = children_waiting(conn, ids)
    id_set = set(ids)
    orphans: Dict[int, StateChange] = {}
    for parent, child in waiting:
        if child not in id_set and child not in orphans:
            orphans[child] = StateChange(child, "FAILED", data={"message": f"parent job {parent} was deleted", "parent_id": parent})
    deleted = 0
    for chunk in chunks(ids, 20000):
        param = (ids_param(chunk),)
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


def unlock_jobs(conn: sqlite3.Connection, job_ids: Sequence[int]) -> None:
    """Let go of jobs a session holds but cannot move on (a hook result that was refused), so another cycle
    retries them; RUNNING jobs stay with their launcher."""
    for chunk in chunks([int(i) for i in job_ids], 20000):
        conn.execute("UPDATE job SET session_id=NULL WHERE id IN (SELECT value FROM json_each(?)) AND state != ?",
                     (ids_param(chunk), S.RUNNING.value))


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
        conn.execute("UPDATE job SET pending_file_cleanup=0 WHERE id IN (SELECT value FROM json_each(?))", (ids_param(chunk),))


__all__ = [
    "JOB_COLUMNS", "JSON_COLUMNS", "NEW_JOB_COLUMNS", "UPDATABLE_FIELDS", "ChangeResult", "StateChange", "add_parents",
    "apply_state_changes", "delete_jobs", "insert_jobs", "jobs_to_clean", "last_event_message", "live_locked", "mark_cleaned",
    "new_job_row", "plain_job_row", "unlock_jobs", "update_job_fields",
]
