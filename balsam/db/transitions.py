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
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from balsam.db import doorbell
from balsam.db.codec import dumps
from balsam.db.connection import chunks
from balsam.db.fields import LAUNCHER_FIELDS, MAX_RETURN_CODE, check_fields
from balsam.db.states import LEGAL, JobState, check_transition
from balsam.exceptions import IllegalTransition, ValidationError

S = JobState
_CASCADES = {"JOB_FINISHED": 0, "FAILED": 1, "USER_KILLED": 1, "READY": 2, "POSTPROCESSED": 3}
"""States whose arrival triggers a cascade: 0 release children, 1 fail children, 2 skip stage-in, 3 skip stage-out."""
JSON_COLUMNS = frozenset({"tags", "data", "launch_params", "parent_ids"})
_RUN_DONE = S.RUN_DONE.value
_POSTPROCESSED = S.POSTPROCESSED.value
_RUNNING = S.RUNNING.value
_RESTART_READY = S.RESTART_READY.value
_RETURN_CODES = (-MAX_RETURN_CODE, MAX_RETURN_CODE)
"""The range check_return_code accepts (an int from -2**31 to 2**31 - 1)."""
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

    Each job's row is written once per batch, however many of its changes (and the cascades they set off) the
    batch applies: a launcher's RUN_DONE, POSTPROCESSED and the JOB_FINISHED that follows are three events and one
    write of the job (see :class:`_Batch`).
    """
    result = ChangeResult()
    batch = _Batch(conn, time.time() if now is None else now, result)
    pending: Sequence[StateChange] = changes
    while pending:
        triggers = batch.apply(pending, strict)
        strict = False  # cascades are computed from current states; a race only means "already moved"
        pending = _cascades(conn, triggers, batch.flush)
    batch.flush()
    doorbell.note_states(set(batch.final.values()))  # after the commit, wake who waits for jobs in these states
    return result


_LEGAL_PAIRS = frozenset((_NAMES[src], _NAMES[dst]) for src, dsts in LEGAL.items() for dst in dsts)
"""Every legal (from, to) pair of plain state names."""


class _Batch:
    """One call's changes, checked and applied in memory, then written: every event in order, and each job's row once.

    A job's state, lease holder and node footprint are read once (:meth:`_load`); each change is checked against the
    transition table and the lease as its job stands after the changes before it; :meth:`flush` then inserts the
    events (in the order the changes came, a job's always in its own order) and writes each changed job's final
    state, its lease (cleared unless the job is RUNNING), its launcher fields and one version step per change.
    """

    def __init__(self, conn: sqlite3.Connection, now: float, result: ChangeResult) -> None:
        self.conn = conn
        self.now = now
        self.result = result
        self.jobs: Dict[int, List[Any]] = {}
        """Job id -> [state, lease holder, node footprint] as the changes so far leave it (None: no such job)."""
        self.dirty: Dict[int, List[Any]] = {}
        """Job id -> [state, lease cleared, changes applied, fields] of the jobs to write."""
        self.levels: Dict[int, List[Tuple[Any, ...]]] = {}
        """Event rows by level: the nth change of a job in a call is on level n (cascades go on later levels)."""
        self.level0 = 0
        self.runs: Dict[int, int] = {}
        """RUNNING events of a job not yet written (a restarted job's event counts its runs)."""
        self.released: Dict[int, int] = {}
        """Job id -> the lease whose RUN_DONE this call applied: that lease's POSTPROCESSED that follows in the call (a
        launcher finishing a job of an app without a postprocess hook) is still its own."""
        self.final: Dict[int, str] = {}
        """Job id -> where the applied changes left it (the doorbell's topics)."""
        self.originals: Dict[int, StateChange] = {}
        """id() of a change whose fields were converted -> the change as the caller sent it."""

    def _load(self, ids: Iterable[int]) -> None:
        jobs = self.jobs
        todo = [i for i in ids if i not in jobs]
        if not todo:
            return
        for chunk in chunks(todo, 20000):
            for row in self.conn.execute(
                    "SELECT id, state, session_id, CAST(num_nodes AS REAL) / node_packing_count FROM job "
                    "WHERE id IN (SELECT value FROM json_each(?))", (ids_param(chunk),)):
                jobs[row[0]] = [row[1], row[2], row[3]]
        for i in todo:
            jobs.setdefault(i, None)  # type: ignore[arg-type]

    def apply(self, changes: Sequence[StateChange], strict: bool) -> List[Tuple[int, str]]:
        """Check and apply ``changes`` in order; the (job id, state) of those that may set off a cascade."""
        result = self.result
        if any([ch.fields for ch in changes]):
            changes = _checked_launcher_fields(changes, strict, result, self.originals)
        texts = _data_texts(changes, strict, result)
        self._load([ch.job_id for ch in changes])
        jobs, dirty, released, final, levels, runs = self.jobs, self.dirty, self.released, self.final, self.levels, self.runs
        footprints: Dict[Optional[float], str] = {}
        depth: Dict[int, int] = {}
        triggers: List[Tuple[int, str]] = []
        now = self.now
        base = self.level0
        applied = 0
        for ch, text in zip(changes, texts):
            if text is False:
                continue  # refused by _data_texts
            job_id, dst, ts, _data, fields, sid = ch
            job = jobs[job_id]
            if sid is not None and released and dst == _POSTPROCESSED and released.get(job_id) == sid:
                sid = None
            if job is None or (job[0], dst) not in _LEGAL_PAIRS or (sid is not None and job[1] != sid) \
                    or (sid is None and dst == _RUNNING):
                self._refuse(ch, job, sid, strict)
                continue
            src = job[0]
            dst = _NAMES[dst]  # a legal target: a known name
            if dst == _RUNNING:
                if text is None and src != _RESTART_READY:  # a first run's plain change: its footprint alone
                    text = footprints.get(job[2])
                    if text is None:
                        text = footprints[job[2]] = _with_key(None, "num_nodes", _real(job[2]))
                else:
                    text = self._run_data(ch, text, job, src)
                runs[job_id] = runs.get(job_id, 0) + 1
            else:
                job[1] = None
                if sid is not None and dst == _RUN_DONE:
                    released[job_id] = sid
            job[0] = dst
            k = depth.get(job_id, 0)
            depth[job_id] = k + 1
            level = levels.get(base + k)
            if level is None:
                level = levels[base + k] = []
            level.append((job_id, now if ts is None else ts, src, dst, text))
            row = dirty.get(job_id)
            if row is None:
                dirty[job_id] = [dst, dst != _RUNNING, 1, fields]
            else:
                row[0] = dst
                row[1] = row[1] or dst != _RUNNING
                row[2] += 1
                if fields:
                    row[3] = dict(row[3] or {}, **fields)
            final[job_id] = dst
            if dst in _CASCADES:
                triggers.append((job_id, dst))
            applied += 1
        result.applied += applied
        self.level0 = base + max(depth.values(), default=0)
        return triggers

    def _refuse(self, ch: StateChange, job: Optional[List[Any]], sid: Optional[int], strict: bool) -> None:
        """Record (or raise, when ``strict``) why ``ch`` is refused."""
        job_id = ch.job_id
        if job is None:
            reason = "no such job"
            if strict:
                raise IllegalTransition(f"job {job_id} does not exist", job_id)
        elif (job[0], ch.state) not in _LEGAL_PAIRS:
            reason = f"{job[0]} -> {ch.state} is not allowed"
            if strict:
                check_transition(job[0], ch.state, job_id)
        elif sid is None:
            reason = f"job {job_id}: only a launcher holding the job can mark it RUNNING (acquire it through a Session first)"
        else:
            reason = f"job {job_id} is not held by session {sid} (its lease expired or it was released)"
        if strict:
            raise IllegalTransition(reason, job_id)
        self.result.rejected.append((self.originals.get(id(ch), ch), reason))

    def _run_data(self, ch: StateChange, text: Optional[str], job: List[Any], src: str) -> str:
        """A RUNNING event's data: the change's, with the run's node footprint (and, for a restart, which run it is)."""
        data = ch.data or {}
        if "num_nodes" not in data:
            text = _with_key(text, "num_nodes", _real(job[2]))
        if src == _RESTART_READY and "run" not in data:
            earlier = self.conn.execute("SELECT count(*) FROM event WHERE job_id=? AND to_state='RUNNING'", (ch.job_id,)).fetchone()[0]
            text = _with_key(text, "run", str(earlier + self.runs.get(ch.job_id, 0) + 1))
        return text or "{}"

    def flush(self) -> None:
        """Write what the changes so far did: their events, in order, and each changed job once."""
        conn = self.conn
        for k in sorted(self.levels):  # a job has at most one change on a level: its events go in level by level
            pairs: Dict[Tuple[str, str], List[Tuple[Any, ...]]] = {}
            for job_id, ts, src, dst, text in self.levels[k]:
                rows = pairs.get((src, dst))
                if rows is None:
                    rows = pairs[(src, dst)] = []
                rows.append((job_id, ts, text))
            for (src, dst), rows in pairs.items():  # legal pairs of known names: constants of the statement
                conn.executemany(f"INSERT INTO event(job_id, timestamp, from_state, to_state, data) VALUES (?, ?, '{src}', '{dst}', ?)", rows)
        if self.levels:
            self.levels = {}
            self.runs = {}
        if not self.dirty:
            return
        # Jobs that end alike (state, lease, number of changes, and fields of the same plain values, as most runs'
        # return code 0) are one UPDATE over their ids; others (results, distinct codes) one row each.
        now = self.now
        alike: Dict[Tuple[Any, ...], List[int]] = {}
        each: Dict[Tuple[str, bool, Tuple[str, ...]], List[Tuple[Any, ...]]] = {}
        for job_id, (state, cleared, n, fields) in self.dirty.items():
            if not fields:
                key: Tuple[Any, ...] = (state, cleared, n)
            elif len(fields) == 1 and type(fields.get("return_code")) is int:
                key = (state, cleared, n, fields["return_code"])
            else:
                keys = tuple(sorted(fields))
                row = (now, n, *(dumps(fields[k]) if k in JSON_COLUMNS else fields[k] for k in keys), job_id)
                each.setdefault((state, cleared, keys), []).append(row)
                continue
            ids = alike.get(key)
            if ids is None:
                ids = alike[key] = []
            ids.append(job_id)
        for key, ids in alike.items():
            code = ", return_code = ?" if len(key) > 3 else ""
            for chunk in chunks(ids, 20000):
                conn.execute(f"UPDATE job SET state = '{key[0]}', last_update = ?{', session_id = NULL' if key[1] else ''}, "
                             f"version = version + {int(key[2])}{code} WHERE id IN (SELECT value FROM json_each(?))",
                             (now, *key[3:], ids_param(chunk)))
        for (state, cleared, keys), rows in each.items():
            sets = "".join(f", {k} = ?" for k in keys)
            conn.executemany(f"UPDATE job SET state = '{state}', last_update = ?{', session_id = NULL' if cleared else ''}, "
                             f"version = version + ?{sets} WHERE id = ?", rows)
        self.dirty = {}


def _real(value: Optional[float]) -> str:
    """A node footprint as JSON text."""
    return "null" if value is None else repr(float(value))


def _with_key(text: Optional[str], key: str, value: str) -> str:
    """JSON object text with ``"key": value`` added at the end (``value`` is JSON text; the key is new)."""
    if text is None or text == "{}":
        return f'{{"{key}":{value}}}'
    return f'{text[:-1]},"{key}":{value}}}'


def _cascades(conn: sqlite3.Connection, triggers: List[Tuple[int, str]], flush: Callable[[], None]) -> List[StateChange]:
    """What the applied changes set off (``triggers``: job id and state): children released or failed, stage-in or
    stage-out skipped when there is nothing to transfer. ``flush`` writes the batch so far first where the cascade
    reads jobs' states (parents and children), so it sees them as the changes left them."""
    to_finished: List[int] = []
    to_failed: List[Tuple[int, str]] = []
    to_ready: List[int] = []
    to_postprocessed: List[int] = []
    for job_id, dst in triggers:
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
    if (to_finished or to_failed) and _has_any(conn, "job_parent"):
        flush()
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


def _data_texts(changes: Sequence[StateChange], strict: bool, result: ChangeResult) -> List[Any]:
    """Each change's event data as JSON text (or None; False for a change refused here). Data that JSON cannot hold
    (NaN, infinities, objects) would make SQLite's JSON functions fail for the whole batch: such a change is refused
    on its own (raised when ``strict``, else returned in ``result.rejected``) and the rest go on."""
    out: List[Any] = []
    texts: Dict[int, str] = {}  # one text per data object (a cascade's changes share theirs)
    texts_of_one: Dict[Tuple[str, Any, type], str] = {}
    for ch in changes:
        data = ch.data
        if not data:
            out.append(None)
            continue
        text = texts.get(id(data))
        if text is not None:
            out.append(text)
            continue
        if type(data) is dict and len(data) == 1:  # a launcher's {"returncode": 0}, {"message": ...}: one text each
            ((key, value),) = data.items()
            kind = type(value)
            if type(key) is str and (kind is str or kind is int):
                one = (key, value, kind)
                text = texts_of_one.get(one)
                if text is None:
                    text = texts_of_one[one] = dumps(data)
                out.append(text)
                continue
        try:
            if not isinstance(data, dict):
                raise ValueError(f"a mapping is needed, got {type(data).__name__}")
            text = texts[id(data)] = dumps(data) if _plain(data) else _STRICT_JSON(data)
            out.append(text)
        except (ValueError, TypeError, RecursionError) as exc:
            reason = f"job {ch.job_id}: state data is not plain JSON ({exc})"
            if strict:
                raise ValidationError(reason) from None
            result.rejected.append((ch, reason))
            out.append(False)
    return out


def _plain(data: Dict[str, Any]) -> bool:
    """A flat dict of strings, ints and bools (nearly all state data): the fast encoder is exact for it."""
    for k, v in data.items():
        t = type(v)
        if type(k) is not str or not (t is str or t is int or t is bool or v is None):
            return False
    return True


def _checked_launcher_fields(changes: Sequence[StateChange], strict: bool, result: ChangeResult,
                             originals: Dict[int, StateChange]) -> List[StateChange]:
    """The changes with each one's fields validated: only what a launcher may write (LAUNCHER_FIELDS), only by
    the lease that holds the job (the state engine then verifies the holder). A refused change raises when
    ``strict``, else it is returned in ``result.rejected`` and the rest go on. A change whose fields the checks
    convert is a new one: ``originals`` maps it to the caller's (a refusal names the change the caller sent)."""
    out: List[StateChange] = []
    for ch in changes:
        fields = ch.fields
        if fields:
            code = fields.get("return_code")
            if ch.session_id is not None and len(fields) == 1 and type(code) is int and _RETURN_CODES[0] <= code < _RETURN_CODES[1]:
                out.append(ch)  # a run's return code, nearly every launcher change with fields: already what it stores
                continue
            where = f"job {ch.job_id}: "
            try:
                if ch.session_id is None:
                    raise ValidationError(f"{where}only the launcher holding the job may write {', '.join(sorted(fields))} "
                                          "(the change names no session)")
                checked = ch._replace(fields=check_fields(fields, where, LAUNCHER_FIELDS))
                originals[id(checked)] = ch
                ch = checked
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


_ALL_PARENTS_FINISHED = ("SELECT c.id FROM job c WHERE c.id IN (SELECT value FROM json_each(?)) AND NOT EXISTS ("
                         " SELECT 1 FROM json_each(c.parent_ids) p JOIN job pj ON pj.id = p.value WHERE pj.state != 'JOB_FINISHED')")
_ALL_PARENTS_FINISHED_HERE_AND_AWAY = (
    _ALL_PARENTS_FINISHED + " AND NOT EXISTS (SELECT 1 FROM json_each(c.parent_ids) p JOIN foreign_parent fp ON fp.id = p.value "
    "WHERE fp.state != 'JOB_FINISHED')")
"""Children whose parents all finished, those at other sites too (balsam.db.foreign), when any job here has one."""


def _releasechildren_waiting(conn: sqlite3.Connection, finished: List[int]) -> List[StateChange]:
    pairs = children_waiting(conn, finished)
    if not pairs:
        return []
    child_ids = sorted({c for _, c in pairs})
    query = _ALL_PARENTS_FINISHED_HERE_AND_AWAY if _has_any(conn, "foreign_parent") else _ALL_PARENTS_FINISHED
    ready = [row[0] for row in conn.execute(query, (ids_param(child_ids),))]
    return [StateChange(c, "READY", data={"message": "all parents finished"}) for c in ready]


def _failchildren_waiting(conn: sqlite3.Connection, failed: List[Tuple[int, str]], where: str = "",
                          reasons: Optional[Dict[int, str]] = None) -> List[StateChange]:
    states = dict(failed)
    reasons = reasons or {}
    out: Dict[int, StateChange] = {}
    for parent, child in children_waiting(conn, list(states)):
        if child not in out:
            message = reasons.get(parent) or f"parent job {parent}{where} is {states[parent]}"
            out[child] = StateChange(child, "FAILED", data={"message": message, "parent_id": parent})
    return list(out.values())


def parent_cascade(conn: sqlite3.Connection, finished: List[int], failed: List[Tuple[int, str]], where: str = "",
                   reasons: Optional[Dict[int, str]] = None) -> List[StateChange]:
    """What parents that finished (``finished``) or failed (``failed``: id and state) set off for their children
    waiting here, as when a parent of this site moves (for parents at another site: balsam.db.foreign, whose
    ``reasons`` say why a parent failed when its state alone does not)."""
    out = _releasechildren_waiting(conn, finished) if finished else []
    return out + (_failchildren_waiting(conn, failed, where, reasons) if failed else [])


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
    data = {"message": "no stage-in pending"}
    return [StateChange(j, "STAGED_IN", data=data) for j in ready if j not in pending]


def _skip_stage_out(conn: sqlite3.Connection, done: List[int]) -> List[StateChange]:
    _retry_failed_items(conn, done, "out", "'error', 'done'")  # a re-run's output goes out again
    pending = _pending_transfer_jobs(conn, done, "out")
    if pending:
        conn.execute(
            "UPDATE transfer_item SET state='pending', last_update=? WHERE direction='out' AND state='awaiting_job' "
            "AND job_id IN (SELECT value FROM json_each(?))",
            (time.time(), ids_param(pending)),
        )
    data = {"message": "no stage-out pending"}
    return [StateChange(j, "JOB_FINISHED", data=data) for j in done if j not in pending]
