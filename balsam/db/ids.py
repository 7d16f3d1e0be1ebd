"""Ids that name one row across every site a user has.

Every id a site hands out (jobs, apps, BatchJobs, events, transfer items, sessions) carries the site's id in
its high bits: ``id = site_id << LOCAL_BITS | n``, with ``n`` counting up from 1 inside the site. So an id
names one job (or app, or BatchJob) among all of a user's sites, the site holding it is read off the id
(:func:`site_of`), and no central allocator is on the hot path: SQLite's AUTOINCREMENT counter of each table
starts at the site's base (:func:`seed_sequences`).

Site ids are drawn at random when a site is created (:func:`draw_site_id`), so sites created on different
machines that later meet at a relay are almost surely distinct; when they are not, the site linking to the
relay moves to a free site id with :func:`ensure_unique_site_id`, which rewrites its ids consistently
(:func:`rewrite_site_ids`, also the migration that gives pre-prefix sites their prefix).

Widths: ids stay below 2**53 so JSON readers that hold numbers as doubles (JavaScript, the web dashboard)
read them exactly: 21 bits of site id (about two million sites) and 32 bits per site (4.29 billion rows of
each kind; events are the largest, about seven per job).
"""

from __future__ import annotations

import random
import sqlite3
from typing import Callable, Collection, Iterable, Optional

SITE_BITS = 21
LOCAL_BITS = 32
LOCAL_MASK = (1 << LOCAL_BITS) - 1
MAX_SITE_ID = (1 << SITE_BITS) - 1
ID_TABLES = ("app", "job", "event", "batch_job", "session", "transfer_item", "dag", "dag_instance")
"""Tables whose ids carry the site prefix (each has an AUTOINCREMENT primary key)."""


def base(site_id: int) -> int:
    """The first id of a site's range, minus one (the AUTOINCREMENT counters start here)."""
    if not 1 <= int(site_id) <= MAX_SITE_ID:
        raise ValueError(f"site id {site_id} is outside 1..{MAX_SITE_ID}")
    return int(site_id) << LOCAL_BITS


def site_of(any_id: int) -> int:
    """The id of the site that handed out ``any_id`` (0 for an id from before site prefixes)."""
    return int(any_id) >> LOCAL_BITS


def local_part(any_id: int) -> int:
    """The per-site counter part of an id."""
    return int(any_id) & LOCAL_MASK


def in_site(any_id: int, site_id: int) -> int:
    """``any_id`` as an id of ``site_id``: an unprefixed (pre-migration) id gains the prefix; others are kept.

    A batch script rendered before a site was migrated carries an unprefixed BatchJob id; this maps it.
    """
    return int(any_id) if site_of(any_id) else base(site_id) | int(any_id)


def draw_site_id(taken: Collection[int] = (), rng: Optional[Callable[[int, int], int]] = None) -> int:
    """A random site id not in ``taken`` (uniform over 1..MAX_SITE_ID)."""
    pick = rng or random.SystemRandom().randint
    for _ in range(1000):
        candidate = pick(1, MAX_SITE_ID)
        if candidate not in taken:
            return candidate
    raise RuntimeError("no free site id found")  # pragma: no cover - needs about two million sites


def seed_sequences(conn: sqlite3.Connection, site_id: int) -> None:
    """Start every id counter of the site at its base (counters already past it are kept)."""
    start = base(site_id)
    for table in ID_TABLES:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name=?", (table,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, start))
        elif site_of(int(row[0])) != site_id:
            conn.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?", (start | local_part(int(row[0])), table))


# Every column holding an id of this site, by table: (column, nullable).
_ID_COLUMNS = {
    "app": ("id",),
    "job": ("id", "app_id", "batch_job_id", "session_id"),
    "job_tag": ("job_id",),
    "job_parent": ("parent_id", "child_id"),
    "event": ("id", "job_id"),
    "batch_job": ("id",),
    "session": ("id", "batch_job_id"),
    "transfer_item": ("id", "job_id"),
    "dag": ("id",),
    "dag_instance": ("id", "dag_id"),
}
_OUTBOX_ENTITIES = ("job", "app", "batch_job", "event", "session", "transfer_item", "transfer", "dag", "dag_instance")


def _existing(conn: sqlite3.Connection, table: str) -> set:  # type: ignore[type-arg]
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def rewrite_site_ids(conn: sqlite3.Connection, new_site_id: int, extra: Iterable[tuple] = ()) -> int:  # type: ignore[type-arg]
    """Give every id of the site the prefix of ``new_site_id`` (inside the caller's write transaction).

    Ids keep their per-site counter part; references (parents, events, tags, transfers, sessions, BatchJobs,
    the outbox) are rewritten alike, so nothing dangles. ``extra`` names more (table, column) pairs to rewrite
    (tables other modules add). Returns the old site id.
    """
    new_base = base(new_site_id)
    row = conn.execute("SELECT id FROM site LIMIT 1").fetchone()
    old_site_id = int(row[0]) if row else 0
    expr = "(({col} & {mask}) | {base})"
    pairs = [(t, c) for t, cols in _ID_COLUMNS.items() for c in cols] + [tuple(p) for p in extra]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table, col in pairs:
        if table not in tables or col not in _existing(conn, table):
            continue
        conn.execute(f"UPDATE {table} SET {col} = {expr.format(col=col, mask=LOCAL_MASK, base=new_base)} WHERE {col} IS NOT NULL")
    # parent_ids is a JSON list of ids kept beside job_parent for reads.
    conn.execute(
        "UPDATE job SET parent_ids = (SELECT json_group_array((p.value & ?) | ?) FROM json_each(job.parent_ids) p) "
        "WHERE parent_ids != '[]'",
        (LOCAL_MASK, new_base),
    )
    _rewrite_instance_tags(conn, new_base)
    if "outbox" in tables:
        marks = ",".join("?" * len(_OUTBOX_ENTITIES))
        conn.execute(f"UPDATE outbox SET entity_id = (entity_id & ?) | ? WHERE entity IN ({marks})",
                     (LOCAL_MASK, new_base, *_OUTBOX_ENTITIES))
        conn.execute("UPDATE outbox SET entity_id = ? WHERE entity = 'site'", (new_site_id,))
    if row is not None:
        conn.execute("UPDATE site SET id = ?", (new_site_id,))
        conn.execute("UPDATE app SET site_id = ?", (new_site_id,))
    if "meta" in tables:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('site_id', ?)", (str(new_site_id),))
    for table in ID_TABLES:
        conn.execute("UPDATE sqlite_sequence SET seq = (seq & ?) | ? WHERE name = ?", (LOCAL_MASK, new_base, table))
    seed_sequences(conn, new_site_id)
    from balsam.db import search

    search.reset(conn)  # the workdir index is keyed by job id: index again
    return old_site_id


def _rewrite_instance_tags(conn: sqlite3.Connection, new_base: int) -> None:
    """DAG instance ids also live in job tags (``dag_instance``, as text): give them the new prefix too."""
    def prefixed(value_sql: str) -> str:
        return f"CAST(((CAST({value_sql} AS INTEGER) & {LOCAL_MASK}) | {new_base}) AS TEXT)"

    current = "json_extract(tags, '$.dag_instance')"
    conn.execute(f"UPDATE job SET tags = json_set(tags, '$.dag_instance', {prefixed(current)}) "
                 "WHERE id IN (SELECT job_id FROM job_tag WHERE key = 'dag_instance')")
    conn.execute(f"UPDATE job_tag SET value = {prefixed('value')} WHERE key = 'dag_instance'")


def prefix_dag_ids(conn: sqlite3.Connection) -> None:
    """Give a site's DAG and DAG-instance ids (and the dag_instance tags of their jobs) the site's prefix, and
    start their counters at the site's base: the schema migration for sites made before DAG ids were unique."""
    row = conn.execute("SELECT id FROM site LIMIT 1").fetchone()
    if row is None or not int(row[0]):
        return
    new_base = base(int(row[0]))
    for table, cols in (("dag", ("id",)), ("dag_instance", ("id", "dag_id"))):
        for col in cols:
            conn.execute(f"UPDATE {table} SET {col} = ({col} & {LOCAL_MASK}) | {new_base}")
    _rewrite_instance_tags(conn, new_base)
    for table in ("dag", "dag_instance"):
        conn.execute("UPDATE sqlite_sequence SET seq = (seq & ?) | ? WHERE name = ?", (LOCAL_MASK, new_base, table))
    seed_sequences(conn, int(row[0]))


def ensure_unique_site_id(conn: sqlite3.Connection, taken: Collection[int]) -> Optional[int]:
    """When a site links to a relay: if its id is in ``taken`` (the ids of the user's other sites there),
    move it to a free random id, rewriting its ids. Returns the new id, or None when it was already unique.

    Call inside a write transaction of the site store, then update the registry with the new id.
    """
    row = conn.execute("SELECT id FROM site LIMIT 1").fetchone()
    if row is None or int(row[0]) not in taken:
        return None
    new = draw_site_id(set(taken) | {int(row[0])})
    rewrite_site_ids(conn, new)
    return new
