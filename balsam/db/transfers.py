"""Transfer items: made from a job's ``transfers`` and its app's slots; their completion moves the job.

Stage-in items start ``pending``; stage-out items start ``awaiting_job`` and become ``pending`` when the job
reaches POSTPROCESSED. The transfer service moves items to ``active`` and then ``done`` or ``error``.
:func:`update_items` applies the consequences in the same transaction, through the job state engine:
all stage-in done -> STAGED_IN; all stage-out done -> STAGED_OUT -> JOB_FINISHED; an item in ``error``
fails its job (Balsam 0.7 left such jobs stuck).
"""

from __future__ import annotations

import posixpath
import sqlite3
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from balsam.db.codec import dumps, loads
from balsam.db.fields import check_text
from balsam.db.states import TransferItemState
from balsam.exceptions import GLOBUS_EXTRA_HINT, ValidationError

ITEM_STATES = tuple(state.value for state in TransferItemState)
UPDATABLE = frozenset({"state", "task_id", "transfer_info"})
MAX_REMOTE_PATH_CHARS = 4096


def parse_transfer_target(slot: str, value: Any) -> Tuple[str, str]:
    """``"alias:/abs/path"`` or ``{"location_alias": ..., "path": ...}`` -> (alias, absolute path)."""
    if isinstance(value, str):
        alias, sep, path = value.partition(":")
        if not sep:
            raise ValidationError(f"transfer {slot!r}: expected 'location_alias:/absolute/path', got {value!r}")
    elif isinstance(value, Mapping):
        alias = str(value.get("location_alias", ""))
        path = str(value.get("path", ""))
    else:
        raise ValidationError(f"transfer {slot!r}: expected 'location_alias:/absolute/path', got {value!r}")
    if not alias:
        raise ValidationError(f"transfer {slot!r}: missing location alias in {value!r}")
    if not path.startswith("/"):
        raise ValidationError(f"transfer {slot!r}: remote path {path!r} must be absolute")
    # A path reaches rsync's file lists (NUL- and line-separated) and names a local file when the slot has no
    # local_path: control characters and ".." (which would name the folder above the job's) are refused here.
    check_text(f"transfer {slot!r}: remote path", path, max_chars=MAX_REMOTE_PATH_CHARS)
    if ".." in path.split("/"):
        raise ValidationError(f"transfer {slot!r}: remote path {path!r} has a '..' component: give the path without it")
    return alias, path


def check_local_path(slot: str, local_path: str) -> str:
    """A slot's ``local_path``, normalized; it must stay inside the job's workdir (relative, no ``..`` out)."""
    check_text(f"transfer slot {slot!r}: local_path", local_path, max_chars=MAX_REMOTE_PATH_CHARS)
    if not local_path or local_path.startswith(("/", "~")):
        raise ValidationError(f"transfer slot {slot!r}: local_path {local_path!r} must be a path relative to the job's workdir")
    norm = posixpath.normpath(local_path)
    if norm == ".." or norm.startswith("../"):
        raise ValidationError(f"transfer slot {slot!r}: local_path {local_path!r} leaves the job's workdir")
    return norm


def job_transfer_items(
    app: Tuple[str, Any, Dict[str, Dict[str, Any]]],
    transfers: Mapping[str, Any],
    locations: Mapping[str, str],
    workdir: str,
) -> List[Dict[str, Any]]:
    """Check a job's transfers against its app's slots and the site's locations; return the items."""
    app_name, _params, slots = app
    unknown = sorted(set(transfers) - set(slots))
    if unknown:
        known = ", ".join(sorted(slots)) or "none"
        raise ValidationError(f"app {app_name} has no transfer slot {unknown[0]!r} (slots: {known})")
    items: List[Dict[str, Any]] = []
    for slot, spec in slots.items():
        if slot not in transfers:
            if spec.get("required", False):
                raise ValidationError(f"job in {workdir!r}: app {app_name} requires transfer slot {slot!r}")
            continue
        alias, remote = parse_transfer_target(slot, transfers[slot])
        if alias not in locations:
            known = ", ".join(sorted(locations)) or "none configured in settings.yml transfers.transfer_locations"
            raise ValidationError(f"transfer {slot!r}: unknown location alias {alias!r} (known: {known})")
        if str(locations[alias]).strip().startswith("globus://") and not _globus_sdk_installed():
            raise ValidationError(f"transfer {slot!r}: location {alias!r} is {locations[alias]}: {GLOBUS_EXTRA_HINT}")
        direction = spec.get("direction", "in")
        local_path = check_local_path(slot, str(spec.get("local_path", ".")))
        items.append({
            "direction": direction,
            "slot": slot,
            "local_path": local_path,
            "remote_path": remote,
            "location_alias": alias,
            "recursive": 1 if spec.get("recursive") else 0,
            "state": "pending" if direction == "in" else "awaiting_job",
        })
    return items


def _globus_sdk_installed() -> bool:
    """True when this process can run Globus transfers (the site's agent runs them, in the same environment)."""
    try:
        import globus_sdk  # noqa: F401
    except ImportError:
        return False
    return True


def insert_items(conn: sqlite3.Connection, specs: Sequence[Tuple[int, List[Dict[str, Any]]]], now: float) -> None:
    """Insert the transfer items of newly created jobs."""
    rows = [
        (job_id, it["direction"], it["slot"], it["local_path"], it["remote_path"], it["location_alias"], it["recursive"], it["state"], now)
        for job_id, items in specs
        for it in items
    ]
    conn.executemany(
        "INSERT INTO transfer_item(job_id, direction, slot, local_path, remote_path, location_alias, recursive, state, last_update) "
        "VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )


def update_items(conn: sqlite3.Connection, updates: Sequence[Tuple[int, Dict[str, Any]]], now: Optional[float] = None) -> None:
    """Update transfer items (state, task_id, transfer_info) and move their jobs accordingly, in bulk."""
    from balsam.db.jobs import StateChange, apply_state_changes

    if not updates:
        return
    now = time.time() if now is None else now
    for _item_id, fields in updates:
        bad = set(fields) - UPDATABLE
        if bad:
            raise ValidationError(f"transfer item field {sorted(bad)[0]!r} cannot be updated (updatable: state, task_id, transfer_info)")
        if "state" in fields and fields["state"] not in ITEM_STATES:
            raise ValidationError(f"unknown transfer item state {fields['state']!r} (valid: {', '.join(ITEM_STATES)})")
    ids = [int(i) for i, _ in updates]
    owner = dict(conn.execute("SELECT id, job_id FROM transfer_item WHERE id IN (SELECT value FROM json_each(?))", (dumps(ids),)))
    missing = [i for i in ids if i not in owner]
    if missing:
        raise ValidationError(f"transfer item {missing[0]} does not exist")
    by_keys: Dict[Tuple[str, ...], List[Tuple[Any, ...]]] = {}
    touched: Dict[int, None] = {}
    for item_id, fields in updates:
        keys = tuple(sorted(fields))
        values = [dumps(fields[k]) if k == "transfer_info" else fields[k] for k in keys]
        by_keys.setdefault(keys, []).append((*values, now, int(item_id)))
        if "state" in fields:
            touched[owner[int(item_id)]] = None
    for keys, rows in by_keys.items():
        assignments = "".join(f"{k}=?, " for k in keys)
        conn.executemany(f"UPDATE transfer_item SET {assignments}last_update=? WHERE id=?", rows)
    if not touched:
        return
    waiting: Dict[Tuple[int, str], List[Tuple[int, str, str]]] = {}
    for job_id, item_id, direction, state, info in conn.execute(
        "SELECT j.id, t.id, t.direction, t.state, t.transfer_info FROM job j JOIN transfer_item t ON t.job_id = j.id "
        "WHERE j.id IN (SELECT value FROM json_each(?)) AND ((j.state='READY' AND t.direction='in') "
        "OR (j.state='POSTPROCESSED' AND t.direction='out')) ORDER BY t.id", (dumps(list(touched)),)):
        waiting.setdefault((job_id, direction), []).append((item_id, state, info))
    changes: List[StateChange] = []
    for (job_id, direction), items in waiting.items():
        errors = [it for it in items if it[1] == "error"]
        if errors:
            info = loads(errors[0][2]) or {}
            detail = f": {str(info['error']).strip().splitlines()[-1]}" if info.get("error") else ""
            changes.append(StateChange(job_id, "FAILED", data={"message": f"stage-{direction} transfer {errors[0][0]} failed{detail}",
                                                               "transfer_info": info}))
        elif all(it[1] == "done" for it in items):
            if direction == "in":
                changes.append(StateChange(job_id, "STAGED_IN", data={"message": "stage-in complete"}))
            else:
                changes.append(StateChange(job_id, "STAGED_OUT", data={"message": "stage-out complete"}))
                changes.append(StateChange(job_id, "JOB_FINISHED"))
    if changes:
        apply_state_changes(conn, changes, strict=False, now=now)


IN_FLIGHT = ("active", "inactive")


def in_flight_tasks(conn: sqlite3.Connection) -> List[str]:
    """The ids of the transfer tasks that are running (their items are active or inactive)."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT task_id FROM transfer_item WHERE state IN ('active','inactive') AND task_id != ''")]


def task_items(conn: sqlite3.Connection, task_id: str) -> List[Tuple[int, Dict[str, Any]]]:
    """The in-flight items of one task, in the order they were submitted (by id), with their transfer_info."""
    rows = conn.execute(
        "SELECT id, transfer_info FROM transfer_item WHERE task_id=? AND state IN ('active','inactive') ORDER BY id", (task_id,))
    return [(int(r[0]), loads(r[1]) or {}) for r in rows]


def startable_items(conn: sqlite3.Connection, limit: int, now: float) -> List[Dict[str, Any]]:
    """Pending items whose job is waiting for them (stage-in: READY; stage-out: POSTPROCESSED) and whose retry
    pause (``transfer_info.retry_at``) is over; oldest first, at most ``limit``."""
    rows = conn.execute(
        "SELECT t.id, t.direction, t.local_path, t.remote_path, t.location_alias, t.recursive, j.workdir, t.transfer_info "
        "FROM transfer_item t JOIN job j ON j.id = t.job_id WHERE t.state='pending' "
        "AND ((t.direction='in' AND j.state='READY') OR (t.direction='out' AND j.state='POSTPROCESSED')) "
        "AND coalesce(json_extract(t.transfer_info, '$.retry_at'), 0) <= ? ORDER BY t.id LIMIT ?", (now, limit))
    keys = ("id", "direction", "local_path", "remote_path", "location_alias", "recursive", "workdir")
    return [dict(zip(keys, r[:7]), transfer_info=loads(r[7]) or {}) for r in rows]


def transfer_info_of(conn: sqlite3.Connection, item_ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    """The transfer_info of each item."""
    rows = conn.execute("SELECT id, transfer_info FROM transfer_item WHERE id IN (SELECT value FROM json_each(?))",
                        (dumps(list(item_ids)),))
    return {int(r[0]): loads(r[1]) or {} for r in rows}


def items_of_job(conn: sqlite3.Connection, job_id: int, direction: str) -> List[Dict[str, Any]]:
    """A job's stage-``direction`` ("in" or "out") items, by id: id, state, location_alias, task_id and
    transfer_info (decoded)."""
    if direction not in ("in", "out"):
        raise ValidationError(f"a transfer direction is 'in' or 'out', not {direction!r}")
    cols = ("id", "state", "location_alias", "task_id", "transfer_info")
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM transfer_item WHERE job_id=? AND direction=? ORDER BY id",
                        (int(job_id), direction)).fetchall()
    out = [dict(zip(cols, r)) for r in rows]
    for d in out:
        d["transfer_info"] = loads(d["transfer_info"]) or {}
    return out
