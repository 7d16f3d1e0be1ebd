"""The site's outbox: a monotonic log of changed rows that the sync service pushes to a relay (DESIGN.md 6).

Only a site linked to a relay keeps one: :func:`enable` creates triggers that append ``(entity, id, op)`` for
every insert, update and delete of jobs, BatchJobs, apps, transfer items, DAG templates and DAG instances,
whichever door wrote them, so nothing can change a row without the relay hearing of it. Events are append-only and carry increasing ids,
so they are pushed from an id cursor instead. An unlinked site has no triggers and pays nothing.
"""

from __future__ import annotations

import base64
import sqlite3
from typing import Any, Callable, Dict, List, Optional, Tuple

from balsam.db.codec import dumps

ENTITIES = ("job", "batch_job", "app", "transfer_item", "dag", "dag_instance")
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
BLOB_COLUMNS = frozenset({"serialized_return_value", "serialized_exception"})


def _triggers(entity: str) -> List[Tuple[str, str]]:
    return [
        (f"outbox_{entity}_ins", f"AFTER INSERT ON {entity} BEGIN INSERT INTO outbox(entity, entity_id, op, time) "
                                 f"VALUES ('{entity}', NEW.id, 'upsert', {_NOW}); END"),
        (f"outbox_{entity}_upd", f"AFTER UPDATE ON {entity} BEGIN INSERT INTO outbox(entity, entity_id, op, time) "
                                 f"VALUES ('{entity}', NEW.id, 'upsert', {_NOW}); END"),
        (f"outbox_{entity}_del", f"AFTER DELETE ON {entity} BEGIN INSERT INTO outbox(entity, entity_id, op, time) "
                                 f"VALUES ('{entity}', OLD.id, 'delete', {_NOW}); END"),
    ]


def enable(conn: sqlite3.Connection) -> int:
    """Start logging changes, and log every existing row once (the relay's first push mirrors the whole site).
    Returns how many rows were logged. Idempotent."""
    n = 0
    for entity in ENTITIES:
        if _logged(conn, entity):
            continue  # a site linked by an older Balsam gains the entities added since (DAGs) here
        for name, body in _triggers(entity):
            conn.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {body}")
        n += conn.execute(f"INSERT INTO outbox(entity, entity_id, op, time) SELECT '{entity}', id, 'upsert', {_NOW} FROM {entity}").rowcount
    return n


def _logged(conn: sqlite3.Connection, entity: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='trigger' AND name=?", (f"outbox_{entity}_ins",)).fetchone() is not None


def complete(conn: sqlite3.Connection) -> int:
    """On a linked site, log the entities an older Balsam did not (as :func:`enable` does); how many rows."""
    return enable(conn) if is_enabled(conn) else 0


def disable(conn: sqlite3.Connection) -> None:
    """Stop logging changes and forget the log (the site is unlinked)."""
    for entity in ENTITIES:
        for name, _ in _triggers(entity):
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    conn.execute("DELETE FROM outbox")


def is_enabled(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='trigger' AND name='outbox_job_ins'").fetchone() is not None


Signer = Callable[[int, str, bytes], bytes]
"""(job id, column, pickled result) -> the bytes to push (the site's signature in front: balsam.site.result_keys)."""


def _wire(row: Dict[str, Any], sign: Optional[Signer] = None) -> Dict[str, Any]:
    if row.get("parameters_pickled") is not None:
        row["parameters_pickled"] = None  # run() arguments JSON cannot hold stay at the site (the relay keeps placeholders)
    for col in BLOB_COLUMNS & row.keys():
        if row[col] is not None:
            data = bytes(row[col])
            row[col] = base64.b64encode(sign(int(row["id"]), col, data) if sign is not None else data).decode()
    return row


def pending(conn: sqlite3.Connection, after_seq: int, limit: int = 5000,
            sign: Optional[Signer] = None) -> Tuple[int, List[Dict[str, Any]]]:
    """The changes logged after ``after_seq`` (at most ``limit`` log entries), coalesced per row into push items
    with each row's current content; returns (the last sequence number covered, items). Job results go out as
    ``sign`` makes them (signed by the site, so a computer reading them through the relay can trust them)."""
    log = conn.execute("SELECT seq, entity, entity_id, op FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
    if not log:
        return after_seq, []
    last: Dict[Tuple[str, int], str] = {}
    for _seq, entity, entity_id, op in log:
        last[(entity, int(entity_id))] = op
    items: List[Dict[str, Any]] = []
    for entity in ENTITIES:
        ids = [i for (e, i), op in last.items() if e == entity and op == "upsert"]
        found = set()
        for start in range(0, len(ids), 10_000):
            chunk = ids[start:start + 10_000]
            cur = conn.execute(f"SELECT * FROM {entity} WHERE id IN (SELECT value FROM json_each(?))", (dumps(chunk),))
            names = [d[0] for d in cur.description]
            for values in cur:
                row = _wire(dict(zip(names, values)), sign if entity == "job" else None)
                found.add(row["id"])
                items.append({"entity": entity, "op": "upsert", "id": row["id"], "row": row})
        # A row updated and then deleted before this push is gone: it is a delete.
        items.extend({"entity": entity, "op": "delete", "id": i} for (e, i), op in last.items()
                     if e == entity and (op == "delete" or (op == "upsert" and i not in found)))
    return int(log[-1][0]), items


def events_after(conn: sqlite3.Connection, after_id: int, limit: int = 5000) -> Tuple[int, List[Dict[str, Any]]]:
    """Events with ids above ``after_id`` as push items; returns (the last id covered, items)."""
    cur = conn.execute("SELECT id, job_id, timestamp, from_state, to_state, data FROM event WHERE id > ? ORDER BY id LIMIT ?",
                       (after_id, limit))
    items = [{"entity": "event", "op": "upsert", "id": r[0],
              "row": {"id": r[0], "job_id": r[1], "timestamp": r[2], "from_state": r[3], "to_state": r[4], "data": r[5]}} for r in cur]
    return (items[-1]["id"] if items else after_id), items


def first_seq(conn: sqlite3.Connection) -> int:
    """The oldest entry still in the log (0 when it is empty)."""
    return int(conn.execute("SELECT coalesce(min(seq), 0) FROM outbox").fetchone()[0])


def logged_times(conn: sqlite3.Connection, first: int, last: int) -> str:
    """When log entries ``first`` and ``last`` were written ("" when they are not there)."""
    return ",".join(repr(t) for (t,) in conn.execute("SELECT time FROM outbox WHERE seq IN (?, ?) ORDER BY seq", (first, last)))


def high_water(conn: sqlite3.Connection) -> Tuple[int, int]:
    """The newest log entry and the newest event: (seq, event id), 0 for none."""
    seq = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
    event = conn.execute("SELECT coalesce(max(id), 0) FROM event").fetchone()[0]
    return int(seq), int(event)


def jobs_issued(conn: sqlite3.Connection, last_seq: int) -> Optional[int]:
    """The highest job id this site has handed out, when the log holds nothing after ``last_seq`` (a push covering
    it covers every job made so far, so the relay learns that an id below it that it lacks was deleted here or never
    existed: balsam.relay.parents); None otherwise."""
    # One statement, so one snapshot: a job made between two reads would be counted without having been pushed.
    row = conn.execute("SELECT CASE WHEN EXISTS (SELECT 1 FROM outbox WHERE seq > ?) THEN NULL "
                       "ELSE (SELECT seq FROM sqlite_sequence WHERE name = 'job') END", (last_seq,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def log_deletes(conn: sqlite3.Connection, entity: str, ids: List[int]) -> int:
    """Log deletes of these rows of ``entity`` (when the site keeps an outbox); how many were logged."""
    if entity not in ENTITIES or not ids or not is_enabled(conn):
        return 0
    conn.executemany(f"INSERT INTO outbox(entity, entity_id, op, time) VALUES ('{entity}', ?, 'delete', {_NOW})", [(i,) for i in ids])
    return len(ids)


def trim(conn: sqlite3.Connection, upto_seq: int) -> None:
    """Forget log entries the relay has acknowledged."""
    conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto_seq,))


def relog_after(conn: sqlite3.Connection, seq: int) -> int:
    """Log every row again (and the deletes still waiting) with sequence numbers above ``seq``: the relay has taken
    pushes up to ``seq`` from this site, so this site DB is older than what it pushed (a backup put back) and its
    next pushes must come after them. Returns how many rows were logged."""
    deletes = conn.execute("SELECT entity, entity_id, time FROM outbox WHERE op = 'delete' ORDER BY seq").fetchall()
    conn.execute("DELETE FROM outbox")
    if conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'outbox'", (seq,)).rowcount == 0:
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('outbox', ?)", (seq,))
    conn.executemany("INSERT INTO outbox(entity, entity_id, op, time) VALUES (?, ?, 'delete', ?)", deletes)
    n = 0
    for entity in ENTITIES:
        n += conn.execute(f"INSERT INTO outbox(entity, entity_id, op, time) SELECT '{entity}', id, 'upsert', {_NOW} FROM {entity}").rowcount
    return n


def backlog(conn: sqlite3.Connection) -> Optional[int]:
    """How many log entries wait to be pushed (None when the site keeps no outbox)."""
    if not is_enabled(conn):
        return None
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def state_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    """Jobs by state, for the relay's site list."""
    return {s: n for s, n in conn.execute("SELECT state, count(*) FROM job GROUP BY state")}


