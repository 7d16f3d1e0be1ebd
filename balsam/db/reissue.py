"""Ids a site hands out again after its DB was put back from a backup: the site's side (the relay's is
:func:`balsam.relay.mirror.reissued`).

A site's ids come from its AUTOINCREMENT counters (:mod:`balsam.db.ids`). A DB put back from a backup, or a copy of
an older DB file, has the counters it had then, so a site linked to a relay hands out again ids it had pushed
since: the relay, and the jobs of the user's other sites that name one as a parent, would take the new row for the
old one (a child waiting on a different job; a new job taken for a deleted one). The relay knows the highest id of
each kind the site has pushed, and refuses a pushed row under an id it knew for another row. So the sync service:

- moves each counter past the highest id the relay has seen from the site (:func:`fence`), so that nothing made
  from then on takes an id the relay knew;
- gives each row the relay refused a new id past it (:func:`renumber`), rewriting every reference to it here:
  parents and children, events, transfer items, the jobs of a BatchJob and of an app, sessions, DAG instances and
  the tags of their jobs. The outbox logs the rows under their new ids, and deletes under the old ones: the relay
  drops the row it held under an old id (this site lost it with the backup), and children at other sites waiting
  on it are told their parent is gone, instead of following another job.

A row the relay holds unchanged under its id (a push replayed, a row the backup kept) is not refused: only rows made
after the DB was put back, or rows it brought back after their deletion was pushed, get new ids.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, List, Mapping, Sequence

from balsam.db import outbox
from balsam.db.codec import dumps
from balsam.db.ids import LOCAL_MASK, site_of

ENTITIES = ("job", "event", "batch_job", "app", "transfer_item", "dag", "dag_instance")
"""The kinds of rows a relay mirrors (each has its own id counter)."""
REFERENCES: Dict[str, Sequence[tuple]] = {  # type: ignore[type-arg]
    "job": (("job_tag", "job_id"), ("job_parent", "parent_id"), ("job_parent", "child_id"), ("event", "job_id"),
            ("transfer_item", "job_id")),
    "batch_job": (("job", "batch_job_id"), ("session", "batch_job_id")),
    "app": (("job", "app_id"),),
    "dag": (("dag_instance", "dag_id"),),
    "event": (),
    "transfer_item": (),
    "dag_instance": (),
}
"""The columns holding ids of each kind, by kind (besides a job's parent_ids list and a job's dag_instance tag)."""
_MAP = "temp.balsam_renumber"


def sequences(conn: sqlite3.Connection) -> Dict[str, int]:
    """The last id each counter of a mirrored kind handed out ({kind: id}; a kind that never had a row is absent)."""
    marks = ",".join("?" * len(ENTITIES))
    return {str(name): int(seq) for name, seq in conn.execute(f"SELECT name, seq FROM sqlite_sequence WHERE name IN ({marks})", ENTITIES)}


def _site_id(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT id FROM site LIMIT 1").fetchone()
    return int(row[0]) if row else 0


def fence(conn: sqlite3.Connection, issued: Mapping[str, Any]) -> Dict[str, int]:
    """Move each counter to at least the id the relay says it has seen from this site (``issued``: {kind: id}),
    inside the caller's write transaction; returns the counters moved ({kind: new last id}). Values that are not
    ids of this site are ignored."""
    site = _site_id(conn)
    have = sequences(conn)
    moved: Dict[str, int] = {}
    for kind, top in issued.items():
        if kind not in ENTITIES or type(top) is not int or not site or site_of(top) != site or top <= have.get(kind, 0):
            continue
        if conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (top, kind)).rowcount == 0:
            conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (kind, top))
        moved[kind] = top
    return moved


def renumber(conn: sqlite3.Connection, reissued: Mapping[str, Sequence[Any]]) -> Dict[str, Dict[int, int]]:
    """Give the rows named (``reissued``: {kind: ids}) new ids from their counters (call :func:`fence` first), and
    rewrite every reference to them, inside the caller's write transaction. Ids of rows that are not here (deleted
    since) are skipped. Returns {kind: {old id: new id}}, old ids in order and new ids in the same order."""
    site = _site_id(conn)
    out: Dict[str, Dict[int, int]] = {}
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_MAP} (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    for kind in ENTITIES:
        given = reissued.get(kind)
        wanted = sorted({i for i in given if type(i) is int and site_of(i) == site} if isinstance(given, (list, tuple)) else ())
        if not wanted:
            continue
        old = [int(r[0]) for r in conn.execute(f"SELECT id FROM {kind} WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
                                               (dumps(wanted),))]
        if not old:
            continue
        last = sequences(conn).get(kind, 0)
        if (last & LOCAL_MASK) + len(old) > LOCAL_MASK:
            raise OverflowError(f"site {site} has no {kind} ids left to give")  # pragma: no cover - 4 billion rows
        mapping = {o: last + 1 + k for k, o in enumerate(old)}
        conn.execute(f"DELETE FROM {_MAP}")
        conn.executemany(f"INSERT INTO {_MAP}(old, new) VALUES (?, ?)", list(mapping.items()))
        _rewrite(conn, kind)
        # The outbox's triggers logged the rows under their new ids; the relay drops what it held under the old ones.
        outbox.log_deletes(conn, kind, old)
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (last + len(old), kind))
        out[kind] = mapping
    conn.execute(f"DELETE FROM {_MAP}")
    return out


def _rewrite(conn: sqlite3.Connection, kind: str) -> None:
    """Rows of ``kind`` and the references to them from the old ids to the new ones of the mapping table."""
    def moved(table: str, col: str) -> None:
        conn.execute(f"UPDATE {table} SET {col} = (SELECT new FROM {_MAP} WHERE old = {table}.{col}) "
                     f"WHERE {col} IN (SELECT old FROM {_MAP})")

    if kind == "dag_instance":  # its id is also the dag_instance tag (text) of its jobs
        conn.execute(f"UPDATE job SET tags = json_set(tags, '$.dag_instance', CAST((SELECT new FROM {_MAP} WHERE old = "
                     f"CAST(json_extract(job.tags, '$.dag_instance') AS INTEGER)) AS TEXT)) WHERE id IN (SELECT job_id FROM job_tag "
                     f"WHERE key = 'dag_instance' AND CAST(value AS INTEGER) IN (SELECT old FROM {_MAP}))")
        conn.execute(f"UPDATE job_tag SET value = CAST((SELECT new FROM {_MAP} WHERE old = CAST(job_tag.value AS INTEGER)) AS TEXT) "
                     f"WHERE key = 'dag_instance' AND CAST(value AS INTEGER) IN (SELECT old FROM {_MAP})")
    moved(kind, "id")
    for table, col in REFERENCES[kind]:
        moved(table, col)
    if kind == "job":  # children keep their parents' ids as a list too
        conn.execute(f"UPDATE job SET parent_ids = (SELECT json_group_array(coalesce((SELECT new FROM {_MAP} WHERE old = p.value), "
                     f"p.value)) FROM json_each(job.parent_ids) p) WHERE id IN (SELECT child_id FROM job_parent WHERE parent_id IN "
                     f"(SELECT new FROM {_MAP}))")


def describe(moved: Mapping[str, Mapping[int, int]], limit: int = 5) -> str:
    """The ids given, in words, for a log line: "3 jobs (12 -> 40, ...), 1 event (...)"."""
    parts: List[str] = []
    for kind, mapping in moved.items():
        pairs = ", ".join(f"{o} -> {n}" for o, n in list(mapping.items())[:limit]) + (", ..." if len(mapping) > limit else "")
        parts.append(f"{len(mapping)} {kind}{'' if len(mapping) == 1 else 's'} ({pairs})")
    return "; ".join(parts)
