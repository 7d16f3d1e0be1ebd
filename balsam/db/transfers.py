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
from balsam.exceptions import ValidationError

ITEM_STATES = ("pending", "active", "inactive", "done", "error", "awaiting_job")
UPDATABLE = frozenset({"state", "task_id", "transfer_info"})


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
    return alias, path


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
        direction = spec.get("direction", "in")
        items.append({
            "direction": direction,
            "slot": slot,
            "local_path": posixpath.normpath(str(spec.get("local_path", "."))),
            "remote_path": remote,
            "location_alias": alias,
            "recursive": 1 if spec.get("recursive") else 0,
            "state": "pending" if direction == "in" else "awaiting_job",
        })
    return items


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
    """Update transfer items (state, task_id, transfer_info) and move their jobs accordingly."""
    from balsam.db.jobs import StateChange, apply_state_changes

    now = time.time() if now is None else now
    touched: Dict[int, str] = {}
    for item_id, fields in updates:
        bad = set(fields) - UPDATABLE
        if bad:
            raise ValidationError(f"transfer item field {sorted(bad)[0]!r} cannot be updated (updatable: state, task_id, transfer_info)")
        if "state" in fields and fields["state"] not in ITEM_STATES:
            raise ValidationError(f"unknown transfer item state {fields['state']!r} (valid: {', '.join(ITEM_STATES)})")
        row = conn.execute("SELECT job_id FROM transfer_item WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise ValidationError(f"transfer item {item_id} does not exist")
        keys = sorted(fields)
        values = [dumps(fields[k]) if k == "transfer_info" else fields[k] for k in keys]
        conn.execute(f"UPDATE transfer_item SET {', '.join(f'{k}=?' for k in keys)}, last_update=? WHERE id=?", (*values, now, item_id))
        if "state" in fields:
            touched[row[0]] = fields["state"]
    if not touched:
        return
    changes: List[StateChange] = []
    for job_id in touched:
        job = conn.execute("SELECT state FROM job WHERE id=?", (job_id,)).fetchone()
        if job is None:
            continue
        state = job[0]
        direction = "in" if state == "READY" else "out" if state == "POSTPROCESSED" else None
        if direction is None:
            continue
        items = conn.execute("SELECT id, state, transfer_info FROM transfer_item WHERE job_id=? AND direction=?", (job_id, direction)).fetchall()
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
