"""The job state engine: :func:`apply_state_changes`, the only writer of ``job.state``, and its cascades.

Every function here runs inside the caller's write transaction (``with store.write() as conn``), so a batch is
all-or-nothing and cascades see a consistent DB.

- each change is checked against the transition table (balsam.db.states) and writes one ``event`` row;
- only the lease holding a job may mark it RUNNING (the change names its session), so a RUNNING job always
  has a launcher whose expiry or release will time it out if it dies; fields written with a change are a
  launcher's results (balsam.db.fields.LAUNCHER_FIELDS), only under the job's lease;
- leaving RUNNING (or any change but to RUNNING) clears the job's session lock;
- a RUNNING event records the node footprint (``num_nodes / node_packing_count``);
- cascades run in the same transaction, for every path that moves a job: JOB_FINISHED releases children
  whose parents are all finished; FAILED and USER_KILLED fail the children waiting on them (with the
  reason); READY with no pending stage-in becomes STAGED_IN; POSTPROCESSED with no pending stage-out
  becomes JOB_FINISHED.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from balsam.db import doorbell
from balsam.db.codec import dumps
from balsam.db.connection import chunks
from balsam.db.fields import LAUNCHER_FIELDS, check_fields
from balsam.db.states import LEGAL, JobState, check_transition
from balsam.exceptions import IllegalTransition, ValidationError

S = JobState
_CASCADES = {"JOB_FINISHED": 0, "FAILED": 1, "USER_KILLED": 1, "READY": 2, "POSTPROCESSED": 3}
"""States whose arrival triggers a cascade: 0 release children, 1 fail children, 2 skip stage-in, 3 skip stage-out."""
JSON_COLUMNS = frozenset({"tags", "data", "launch_params", "parent_ids"})
_RUN_DONE = S.RUN_DONE.value
_POSTPROCESSED = S.POSTPROCESSED.value
_RUNNING = S.RUNNING.value
_NAMES = {s.value: s.value for s in JobState}
"""State names to themselves: a change's state (a name or a JobState member) as the plain name, for SQL text."""


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


def ids_param(ids: Iterable[int]) -> str:
    """Ids as a JSON list, bound to one ``json_each(?)`` parameter."""
    return dumps(list(ids))


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
    released: Dict[int, int] = {}
    final: Dict[int, str] = {}
    while pending:
        cascade: List[StateChange] = []
        for round_ in _rounds(pending):
            _apply_round(conn, round_, strict, now, result, cascade, released, final)
        pending = cascade
        strict = False  # cascades are computed from current states; a race only means "already moved"
    doorbell.note_states(set(final.values()))  # after the commit, wake who waits for jobs in these states
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
    released: Dict[int, int],
    final: Dict[int, str],
) -> None:
    """Apply changes to distinct jobs, set-based: the batch goes into a scratch table, SQLite checks every change
    against the transition table and the holding lease, then writes the events and the new states.

    ``released`` (job id -> lease) names the jobs whose RUN_DONE an earlier round of this batch applied under
    their lease: the lease held them when the batch began, so the same lease's RUN_DONE -> POSTPROCESSED that
    follows in the batch (a launcher finishing a job of an app without a postprocess hook) is still its own.
    ``final`` (job id -> state) records where each applied change left its job (the doorbell's topics).
    """
    if any([ch.fields for ch in round_]):
        round_ = _checked_launcher_fields(round_, strict, result)
        if not round_:
            return
    texts = _data_texts(round_, strict, result)
    round_ = [ch for ch in round_ if ch.job_id in texts]
    if not round_:
        return
    _stage(conn, round_, texts, now, released)
    refused = _refuse(conn, round_, strict, result)
    applied = len(round_) - len(refused)
    if not applied:
        return
    result.applied += applied
    states: Set[str] = set()
    for ch in round_:
        if ch.job_id not in refused:
            final[ch.job_id] = ch.state
            states.add(_NAMES[ch.state])  # a legal target: a known name
            if ch.session_id is not None and ch.state == _RUN_DONE:
                released[ch.job_id] = ch.session_id
    _write_states(conn, now, states)
    if any([ch.fields for ch in round_]):
        _write_fields(conn, [ch for ch in round_ if ch.fields and ch.job_id not in refused])
    if not states.isdisjoint(_CASCADES):
        cascade.extend(_cascades(conn))


def _stage(conn: sqlite3.Connection, round_: List[StateChange], texts: Dict[int, Optional[str]], now: float,
           released: Dict[int, int]) -> None:
    """Put the round into the scratch table ``_chg``, with each job's current state, holder and node footprint.

    Changes without data (nearly all of a launcher's) go in by (state, lease), each row binding only its job id and
    time: the state name and the lease id, checked to be a known name and an integer, are the statement's constants
    (binding a value costs more than the row; this halved the staging of a 20,000-change batch)."""
    _prepare_temp(conn)
    plain: Dict[Tuple[str, Optional[int]], List[Tuple[int, float]]] = {}
    other: List[Tuple[Any, ...]] = []
    for ch in round_:
        ts = now if ch.timestamp is None else ch.timestamp
        sid = None if released and ch.state == _POSTPROCESSED and released.get(ch.job_id) == ch.session_id else ch.session_id
        name = _NAMES.get(ch.state) if isinstance(ch.state, str) else None
        text = texts[ch.job_id]
        if text is None and name is not None and (sid is None or type(sid) is int):
            group = plain.get((name, sid))
            if group is None:
                group = plain[(name, sid)] = []
            group.append((ch.job_id, ts))
        else:
            other.append((ch.job_id, ch.state, ts, text, sid))
    for (name, sid), rows in plain.items():
        conn.executemany(f"INSERT INTO _chg(job_id, dst, ts, sid) VALUES (?, '{name}', ?, {'NULL' if sid is None else int(sid)})", rows)
    if other:
        conn.executemany("INSERT INTO _chg(job_id, dst, ts, data, sid) VALUES (?, ?, ?, ?, ?)", other)
    conn.execute(
        "UPDATE _chg SET (src, holder, nodes) = (SELECT state, session_id, CAST(num_nodes AS REAL) / node_packing_count "
        "FROM job WHERE job.id = _chg.job_id)"
    )


def _refuse(conn: sqlite3.Connection, round_: List[StateChange], strict: bool, result: ChangeResult) -> Set[int]:
    """Take the staged changes the table or the lease refuses out of ``_chg``; their job ids. Each is raised when
    ``strict``, else recorded in ``result.rejected`` with its reason."""
    refused = conn.execute(f"SELECT job_id, dst, src, sid, holder FROM _chg WHERE {_REFUSED}").fetchall()
    if not refused:
        return set()
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
    return {int(r[0]) for r in refused}


def _write_states(conn: sqlite3.Connection, now: float, states: Set[str]) -> None:
    """Write the staged changes, whose target states are ``states``: one event each (a run's node count and run
    number on RUNNING), then the states (a job leaving RUNNING or a hook state is unlocked). A round without RUNNING
    (most) takes the short forms: plain events, and one UPDATE, with its state a constant when the round has one."""
    if _RUNNING not in states:
        conn.execute("INSERT INTO event(job_id, timestamp, from_state, to_state, data) SELECT job_id, ts, src, dst, data FROM _chg")
        if len(states) == 1:
            conn.execute("UPDATE job SET state = ?, last_update = ?, session_id = NULL, version = version + 1 "
                         "WHERE id IN (SELECT job_id FROM _chg)", (next(iter(states)), now))
        else:
            conn.execute("UPDATE job SET state = (SELECT dst FROM _chg WHERE _chg.job_id = job.id), last_update = ?, "
                         "session_id = NULL, version = version + 1 WHERE id IN (SELECT job_id FROM _chg)", (now,))
        return
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
    if len(states) > 1:
        conn.execute(
            "UPDATE job SET state = (SELECT dst FROM _chg WHERE _chg.job_id = job.id), last_update = ?, session_id = NULL, "
            "version = version + 1 WHERE id IN (SELECT job_id FROM _chg WHERE dst != 'RUNNING')",
            (now,),
        )


def _write_fields(conn: sqlite3.Connection, changes: List[StateChange]) -> None:
    """Write the (already checked) launcher fields that came with applied changes, grouped by which fields."""
    groups: Dict[Tuple[str, ...], List[Tuple[Any, ...]]] = {}
    for ch in changes:
        if ch.fields is not None:
            keys = tuple(sorted(ch.fields))
            groups.setdefault(keys, []).append(
                tuple(dumps(ch.fields[k]) if k in JSON_COLUMNS else ch.fields[k] for k in keys) + (ch.job_id,))
    for keys, rows in groups.items():
        conn.executemany(f"UPDATE job SET {', '.join(f'{k}=?' for k in keys)} WHERE id=?", rows)


def _cascades(conn: sqlite3.Connection) -> List[StateChange]:
    """What the staged changes set off: children released or failed, stage-in or stage-out skipped when there is
    nothing to transfer."""
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
    out: List[StateChange] = []
    if to_finished:
        out.extend(_releasechildren_waiting(conn, to_finished))
    if to_failed:
        out.extend(_failchildren_waiting(conn, to_failed))
    if to_ready:
        out.extend(_skip_stage_in(conn, to_ready))
    if to_postprocessed:
        out.extend(_skip_stage_out(conn, to_postprocessed))
    return out


_STRICT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def _data_texts(round_: List[StateChange], strict: bool, result: ChangeResult) -> Dict[int, Optional[str]]:
    """Each change's event data as JSON text (job id -> text or None). Data that JSON cannot hold (NaN, infinities,
    objects) would make SQLite's JSON functions fail for the whole batch: such a change is refused on its own
    (raised when ``strict``, else returned in ``result.rejected``) and the rest go on."""
    out: Dict[int, Optional[str]] = {}
    for ch in round_:
        if not ch.data:
            out[ch.job_id] = None
            continue
        try:
            if not isinstance(ch.data, dict):
                raise ValueError(f"a mapping is needed, got {type(ch.data).__name__}")
            out[ch.job_id] = dumps(ch.data) if _plain(ch.data) else _STRICT_JSON(ch.data)
        except (ValueError, TypeError, RecursionError) as exc:
            reason = f"job {ch.job_id}: state data is not plain JSON ({exc})"
            if strict:
                raise ValidationError(reason) from None
            result.rejected.append((ch, reason))
    return out


def _plain(data: Dict[str, Any]) -> bool:
    """A flat dict of strings, ints and bools (nearly all state data): the fast encoder is exact for it."""
    for k, v in data.items():
        t = type(v)
        if type(k) is not str or not (t is str or t is int or t is bool or v is None):
            return False
    return True


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


def children_waiting(conn: sqlite3.Connection, parent_ids: List[int]) -> List[Tuple[int, int]]:
    """(parent_id, child_id) pairs for children now AWAITING_PARENTS."""
    if not _has_any(conn, "job_parent"):
        return []
    out: List[Tuple[int, int]] = []
    for chunk in chunks(parent_ids, 20000):
        out.extend(conn.execute(
            "SELECT jp.parent_id, jp.child_id FROM job_parent jp JOIN job c ON c.id = jp.child_id "
            "WHERE jp.parent_id IN (SELECT value FROM json_each(?)) AND c.state = 'AWAITING_PARENTS'",
            (ids_param(chunk),),
        ))
    return out


def _releasechildren_waiting(conn: sqlite3.Connection, finished: List[int]) -> List[StateChange]:
    pairs = children_waiting(conn, finished)
    if not pairs:
        return []
    child_ids = sorted({c for _, c in pairs})
    ready = [
        row[0]
        for row in conn.execute(
            "SELECT c.id FROM job c WHERE c.id IN (SELECT value FROM json_each(?)) AND NOT EXISTS ("
            " SELECT 1 FROM json_each(c.parent_ids) p JOIN job pj ON pj.id = p.value WHERE pj.state != 'JOB_FINISHED')",
            (ids_param(child_ids),),
        )
    ]
    return [StateChange(c, "READY", data={"message": "all parents finished"}) for c in ready]


def _failchildren_waiting(conn: sqlite3.Connection, failed: List[Tuple[int, str]]) -> List[StateChange]:
    states = dict(failed)
    out: Dict[int, StateChange] = {}
    for parent, child in children_waiting(conn, list(states)):
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
            (ids_param(chunk), direction),
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
            (time.time(), direction, ids_param(chunk)),
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
            (time.time(), ids_param(pending)),
        )
    return [StateChange(j, "JOB_FINISHED", data={"message": "no stage-out pending"}) for j in done if j not in pending]
