"""A save made on a read copy of a job: merged with what moved at the site since, or refused (DESIGN.md section 6).

``job = Job.objects.get(...); job.tags["x"] = "y"; job.save()`` sends only the fields the user changed, with what
the user read: the job's version, its state and each changed field's value as read (a :class:`Read`). The site
checks the read against the row as it is now, in the write's own transaction (:func:`check_reads`):

- The row is still at the version read: nothing moved, the write goes through.
- It moved on (the site's agent or launcher changed its state, or someone else wrote a field): the write is
  merged when the user's fields do not conflict with what moved, and refused with
  :class:`~balsam.exceptions.StaleVersion` (nothing written, the message says what moved) when they do:

  * a changed field whose value at the site is no longer the one read (someone else wrote it meanwhile);
  * a state change that was a step from the state read (it was asked of that state), when the job has left that
    state since, except a kill, which stops the job from whatever state it reached. A change that was no step from
    the state read (a script driving a job it knows moved on) is judged by the state machine against the state now;
  * a field the run reads (:data:`RUN_FIELDS`: parameters, resources, launch parameters, wall time, workdir),
    when the job moved since the read into a state where a run has started or ended (:data:`STARTED_STATES`)
    or a launcher holds it: the run went on with the old values.

  Fields the site never writes (tags, data, parent_ids added, pending_file_cleanup, and the run's fields before a
  launcher takes the job) therefore merge with every move the agent, its processing hooks and transfers make.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

from balsam.db.codec import loads
from balsam.db.connection import chunks
from balsam.db.fields import UPDATABLE_FIELDS
from balsam.db.states import JobState, is_legal
from balsam.db.transitions import ids_param
from balsam.exceptions import StaleVersion, ValidationError

S = JobState

RUN_FIELDS: FrozenSet[str] = frozenset({
    "parameters", "num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
    "node_packing_count", "launch_params", "wall_time_min", "workdir",
})
"""What a launcher reads when it starts a run: a change to one conflicts with a run that started since the read."""

STARTED_STATES: FrozenSet[str] = frozenset(s.value for s in (
    S.RUNNING, S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT, S.POSTPROCESSED, S.STAGED_OUT, S.JOB_FINISHED, S.FAILED,
    S.USER_KILLED))
"""States a job reaches only once a run has started, or once it can no longer run (the run's fields are moot)."""

JSON_FIELDS: FrozenSet[str] = frozenset({"tags", "data", "launch_params", "parameters", "parent_ids"})
"""Fields whose column holds JSON text: compared as the values the text holds, whatever its spacing or key order."""


class Read(NamedTuple):
    """What a save was made on: the job's version and state when read, and each changed field's value then (as
    stored, or in :func:`compared` form: they are compared in that form, and only for a row that moved)."""

    job_id: int
    version: int
    state: str
    fields: Dict[str, Any]


def compared(name: str, raw: Any) -> Any:
    """A stored column value in the form two copies of it compare in: JSON columns as the values they hold (the
    parameters' JSON part: a pickled value is its readable placeholder there), booleans as 0/1, numbers as they
    are (1 == 1.0)."""
    if name in JSON_FIELDS:
        return loads(raw) if isinstance(raw, str) else raw
    if isinstance(raw, bool):
        return int(raw)
    return raw


def read_of(job_id: int, row: Dict[str, Any], names: Sequence[str]) -> Optional[Read]:
    """The :class:`Read` of a loaded job row (column -> stored value) for a save of ``names``; None when the row
    holds no version (a row loaded before versions were read)."""
    version = row.get("version")
    if version is None:
        return None
    return Read(int(job_id), int(version), str(row.get("state") or ""),
                {n: row.get(n) for n in names if n in row and n not in ("state", "parent_ids")})


def read_to_wire(read: Read) -> Dict[str, Any]:
    """A Read as JSON, the one shape every door uses: ``{"version", "state", "fields"}``, beside the job's id (an
    item of ``PATCH /v1/jobs``, and ``[job_id, read]`` in the relay's update command to a site)."""
    return {"version": int(read.version), "state": str(read.state), "fields": dict(read.fields)}


def read_from_wire(job_id: int, raw: Any) -> Read:
    """The inverse of :func:`read_to_wire` for job ``job_id``: ValidationError, one line, when malformed."""
    if not isinstance(raw, dict) or not isinstance(raw.get("fields", {}), dict):
        raise ValidationError(f"job {job_id}: read must be an object {{version, state, fields}}")
    version, state = raw.get("version"), raw.get("state")
    if type(version) is not int or not 0 <= version < 2**63:
        raise ValidationError(f"job {job_id}: read.version must be an integer from 0 to 2**63-1, got {version!r:.40}")
    if not isinstance(state, str):
        raise ValidationError(f"job {job_id}: read.state must be a state name")
    return Read(int(job_id), version, state, {str(k): v for k, v in (raw.get("fields") or {}).items()})


def check_reads(conn: sqlite3.Connection, reads: Sequence[Read], updates: Sequence[Tuple[int, Dict[str, Any]]],
                changes: Sequence[Tuple[int, str]]) -> None:
    """Refuse (StaleVersion, nothing written) a save whose fields conflict with what moved at the site since its
    read (see the module docstring). ``updates``: job id -> the new field values (Python form); ``changes``: (job id,
    the state asked for). Run inside the write's transaction, so nothing moves between the check and the write."""
    if not reads:
        return
    wanted: Dict[int, Read] = {int(r.job_id): r for r in reads}
    moved: List[int] = []  # the common case, nothing moved since the read, costs one look at the versions
    for chunk in chunks(sorted(wanted), 20000):
        moved.extend(int(i) for i, v in conn.execute("SELECT id, version FROM job WHERE id IN (SELECT value FROM json_each(?))",
                                                     (ids_param(chunk),)) if int(v) != wanted[int(i)].version)
    if not moved:
        return
    names = sorted({n for i in moved for n in wanted[i].fields} & UPDATABLE_FIELDS)
    columns = ["id", "version", "state", "session_id"] + names
    current: Dict[int, Dict[str, Any]] = {}
    for chunk in chunks(moved, 20000):
        for row in conn.execute(f"SELECT {', '.join(columns)} FROM job WHERE id IN (SELECT value FROM json_each(?))",
                                (ids_param(chunk),)):
            current[int(row[0])] = dict(zip(columns, row))
    new_fields: Dict[int, Dict[str, Any]] = {}
    for job_id, fields in updates:
        new_fields.setdefault(int(job_id), {}).update(fields)
    asked = {int(job_id): str(state) for job_id, state in changes}
    for job_id in moved:
        read, now = wanted[job_id], current.get(job_id)
        if now is None:
            continue  # gone since: the write says so
        why = _conflict(read, now, new_fields.get(job_id, {}), asked.get(job_id))
        if why:
            raise StaleVersion(f"job {job_id}: {why} since you read it (version {read.version}, {read.state}; now version "
                               f"{now['version']}, {now['state']}): nothing was saved; reload it (refresh_from_db()) and "
                               "make the change again")


def _conflict(read: Read, now: Dict[str, Any], fields: Dict[str, Any], state: Optional[str]) -> str:
    """Why the save conflicts with what moved, or "" when it merges."""
    moved = str(now["state"]) != read.state
    if state is not None and moved and state != S.USER_KILLED.value and is_legal(read.state, state):
        return f"the site moved it from {read.state} to {now['state']}, so its change to {state} no longer applies"
    for name in sorted(fields):
        if name not in read.fields or name not in now:
            continue
        at_site = compared(name, now[name])
        if at_site != compared(name, read.fields[name]) and at_site != _plain(name, fields[name]):
            return f"{name} was changed by someone else"
    ran = sorted(set(fields) & RUN_FIELDS)
    if ran and moved and (str(now["state"]) in STARTED_STATES or now.get("session_id") is not None):
        return (f"a launcher took it ({now['state']}) with the {ran[0]} it had, so changing {ran[0]} no longer "
                "applies to that run")
    return ""


def _plain(name: str, value: Any) -> Any:
    """A new value (Python form) in :func:`compared` form."""
    if name == "parameters" and isinstance(value, dict):
        from balsam.db.codec import encode_parameters

        return loads(encode_parameters(value)[0])
    if isinstance(value, bool):
        return int(value)
    return value
