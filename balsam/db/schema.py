"""The site DB schema and its ordered migrations.

``PRAGMA user_version`` holds the schema version; each migration is recorded in the ``migration`` table too,
with its name and time. A DB newer than this code is refused (a one-line error, nothing written); an older
one is migrated under the write lock.

Layout choices (measured on 100k-job bulk inserts, see bench/):
- ``job.tags`` keeps the dict for reads; ``job_tag`` (key, value, job_id) WITHOUT ROWID is the index that
  tag filters use (one B-tree, sorted inserts).
- ``job.parent_ids`` keeps the list for reads; ``job_parent`` (parent_id, child_id) finds children when a
  parent finishes or fails.
- ``job(state)`` (entries sorted by state, then id) serves acquisition in id order, counts by state, and
  (state, id) probes when a tag filter drives a query.
- Times are REAL seconds since the epoch, UTC. States are their names, so the DB reads well in ``sqlite3``.
- ``version`` columns count updates (optimistic concurrency for sync); ``outbox`` is the sync change log.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, List, Tuple

SCHEMA_V1 = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE migration (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied REAL NOT NULL
);

CREATE TABLE site (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    uuid TEXT NOT NULL,
    creation_date REAL NOT NULL,
    last_refresh REAL,
    globus_endpoint_id TEXT,
    backfill_windows TEXT NOT NULL DEFAULT '{}',
    queued_jobs TEXT NOT NULL DEFAULT '{}',
    optional_batch_job_params TEXT NOT NULL DEFAULT '{}',
    allowed_projects TEXT NOT NULL DEFAULT '[]',
    allowed_queues TEXT NOT NULL DEFAULT '{}',
    transfer_locations TEXT NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE app (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id INTEGER NOT NULL,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    serialized_class TEXT NOT NULL,
    source_code TEXT NOT NULL DEFAULT '',
    parameters TEXT NOT NULL DEFAULT '{}',
    var_keyword INTEGER NOT NULL DEFAULT 0,
    transfers TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    last_update REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE job (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workdir TEXT NOT NULL,
    app_id INTEGER NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    parameters TEXT NOT NULL DEFAULT '{}',
    data TEXT NOT NULL DEFAULT '{}',
    return_code INTEGER,
    num_nodes INTEGER NOT NULL DEFAULT 1,
    ranks_per_node INTEGER NOT NULL DEFAULT 1,
    threads_per_rank INTEGER NOT NULL DEFAULT 1,
    threads_per_core INTEGER NOT NULL DEFAULT 1,
    gpus_per_rank REAL NOT NULL DEFAULT 0,
    node_packing_count INTEGER NOT NULL DEFAULT 1,
    launch_params TEXT NOT NULL DEFAULT '{}',
    wall_time_min INTEGER NOT NULL DEFAULT 0,
    parent_ids TEXT NOT NULL DEFAULT '[]',
    batch_job_id INTEGER,
    session_id INTEGER,
    state TEXT NOT NULL,
    last_update REAL NOT NULL,
    created REAL NOT NULL,
    pending_file_cleanup INTEGER NOT NULL DEFAULT 1,
    serialized_return_value BLOB,
    serialized_exception BLOB,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX job_workdir ON job(workdir);
CREATE INDEX job_state ON job(state);
CREATE INDEX job_app ON job(app_id);
CREATE INDEX job_session ON job(session_id) WHERE session_id IS NOT NULL;
CREATE INDEX job_batch_job ON job(batch_job_id) WHERE batch_job_id IS NOT NULL;

CREATE TABLE job_tag (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (key, value, job_id)
) WITHOUT ROWID;

CREATE TABLE job_parent (
    parent_id INTEGER NOT NULL,
    child_id INTEGER NOT NULL,
    PRIMARY KEY (parent_id, child_id)
) WITHOUT ROWID;

CREATE TABLE event (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    data TEXT
);
CREATE INDEX event_job ON event(job_id);

CREATE TABLE batch_job (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scheduler_id INTEGER,
    project TEXT NOT NULL,
    queue TEXT NOT NULL,
    num_nodes INTEGER NOT NULL,
    wall_time_min INTEGER NOT NULL,
    job_mode TEXT NOT NULL,
    optional_params TEXT NOT NULL DEFAULT '{}',
    filter_tags TEXT NOT NULL DEFAULT '{}',
    partitions TEXT,
    state TEXT NOT NULL,
    status_info TEXT NOT NULL DEFAULT '{}',
    start_time REAL,
    end_time REAL,
    created REAL NOT NULL,
    last_update REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX batch_job_state ON batch_job(state);

CREATE TABLE session (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_job_id INTEGER,
    heartbeat REAL NOT NULL,
    created REAL NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    pid_start REAL,
    label TEXT NOT NULL DEFAULT ''
);

CREATE TABLE transfer_item (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    direction TEXT NOT NULL,
    slot TEXT NOT NULL,
    local_path TEXT NOT NULL,
    remote_path TEXT NOT NULL,
    location_alias TEXT NOT NULL,
    recursive INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    task_id TEXT NOT NULL DEFAULT '',
    transfer_info TEXT NOT NULL DEFAULT '{}',
    last_update REAL NOT NULL
);
CREATE INDEX transfer_item_job ON transfer_item(job_id);
CREATE INDEX transfer_item_state ON transfer_item(state);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    entity_id INTEGER NOT NULL,
    op TEXT NOT NULL,
    time REAL NOT NULL
);
"""

Migration = Tuple[int, str, Callable[[sqlite3.Connection], None]]


def _v1(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA_V1.split(";\n"):
        if statement.strip():
            conn.execute(statement)


SCHEMA_DAG = """
CREATE TABLE IF NOT EXISTS dag (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    last_update REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS dag_instance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dag_id INTEGER NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dag_instance_dag ON dag_instance(dag_id);
"""


def _dags(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA_DAG.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _v3_site_unique_ids(conn: sqlite3.Connection) -> None:
    """Ids unique across a user's sites (balsam.db.ids): events get an AUTOINCREMENT counter like the other
    tables, and an existing site moves to a random site id, its ids rewritten with that prefix."""
    from balsam.db import ids

    conn.execute(
        "CREATE TABLE event_v2 (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, timestamp REAL NOT NULL, "
        "from_state TEXT NOT NULL, to_state TEXT NOT NULL, data TEXT)"
    )
    conn.execute("INSERT INTO event_v2(id, job_id, timestamp, from_state, to_state, data) "
                 "SELECT id, job_id, timestamp, from_state, to_state, data FROM event")
    conn.execute("DROP TABLE event")
    conn.execute("ALTER TABLE event_v2 RENAME TO event")
    conn.execute("CREATE INDEX event_job ON event(job_id)")
    if conn.execute("SELECT 1 FROM sqlite_sequence WHERE name='event'").fetchone() is None:
        conn.execute("INSERT INTO sqlite_sequence(name, seq) SELECT 'event', coalesce(max(id), 0) FROM event")
    row = conn.execute("SELECT id FROM site LIMIT 1").fetchone()
    if row is not None:
        ids.rewrite_site_ids(conn, ids.draw_site_id({int(row[0])}))


ACQUIRE_INDEXED_STATES = ("PREPROCESSED", "RESTART_READY")
"""Runnable states with an index in Balsam's default acquisition order (balsam.db.sessions.SORT_ORDERS)."""


def _v4_acquire_order(conn: sqlite3.Connection) -> None:
    """Launchers take runnable jobs in Balsam's default order (fewest nodes, most packed, longest) by walking
    an index instead of sorting every runnable job; partial, so only jobs entering or leaving a runnable state
    pay for it."""
    for state in ACQUIRE_INDEXED_STATES:
        conn.execute(f"CREATE INDEX job_acquire_{state.lower()} ON job(num_nodes, node_packing_count DESC, wall_time_min DESC, id) "
                     f"WHERE state = '{state}' AND session_id IS NULL")


def _http_answers(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS http_answer (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, "
        "body BLOB NOT NULL, created REAL NOT NULL) WITHOUT ROWID"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS http_answer_created ON http_answer(created)")


def _v6_pickled_parameters(conn: sqlite3.Connection) -> None:
    # Values JSON cannot hold move out of band: the old in-band {"__pickle__": ...} marker is no longer read, so
    # such values in older rows stay the plain dicts they are (nothing written as data is ever unpickled).
    if "parameters_pickled" not in {row[1] for row in conn.execute("PRAGMA table_info(job)")}:
        conn.execute("ALTER TABLE job ADD COLUMN parameters_pickled BLOB")


def _v7_dag_ids(conn: sqlite3.Connection) -> None:
    from balsam.db import ids

    ids.prefix_dag_ids(conn)


def _v8_dashboard_indexes(conn: sqlite3.Connection) -> None:
    """The jobs table sorted by last update walks an index instead of sorting every job; a workdir substring
    filter uses an FTS5 trigram index where this SQLite has one (balsam.db.search; otherwise it scans)."""
    from balsam.db import search

    conn.execute("CREATE INDEX IF NOT EXISTS job_last_update ON job(last_update)")
    search.install(conn)


def _v9_uploads(conn: sqlite3.Connection) -> None:
    """Parts of writes too large for one HTTP request, kept until one request applies them all (balsam.db.uploads)."""
    conn.execute("CREATE TABLE IF NOT EXISTS http_upload (upload TEXT NOT NULL, part INTEGER NOT NULL, rows INTEGER NOT NULL, "
                 "body BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (upload, part)) WITHOUT ROWID")
    conn.execute("CREATE INDEX IF NOT EXISTS http_upload_created ON http_upload(created)")


def _v10_answer_expiry(conn: sqlite3.Connection) -> None:
    """Each kept API answer says when it may be forgotten: a launcher's acquire and status answers after an hour,
    others after a day (before, every answer was kept a day: ~0.5 KB per acquired job)."""
    conn.execute("ALTER TABLE http_answer ADD COLUMN expires REAL NOT NULL DEFAULT 0")
    conn.execute("UPDATE http_answer SET expires = created + 86400")
    conn.execute("DROP INDEX IF EXISTS http_answer_created")
    conn.execute("CREATE INDEX IF NOT EXISTS http_answer_expires ON http_answer(expires)")


def _v11_foreign_parents(conn: sqlite3.Connection) -> None:
    """Parents at another site (balsam.db.foreign): the state the relay last reported for each job of another site
    that a job here waits on."""
    conn.execute("CREATE TABLE IF NOT EXISTS foreign_parent (id INTEGER PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL)")


def _v12_foreign_parent_asked(conn: sqlite3.Connection) -> None:
    """Parents at another site: when (the relay's clock) this site first asked the relay about one it did not know,
    so that a parent id its site had not handed out by then fails the child instead of waiting forever."""
    conn.execute("ALTER TABLE foreign_parent ADD COLUMN asked REAL")


MIGRATIONS: List[Migration] = [
    (1, "initial schema", _v1),
    (2, "DAG templates and instances", _dags),
    (3, "ids unique across sites (site id in the high bits)", _v3_site_unique_ids),
    (4, "index for Balsam's default acquisition order", _v4_acquire_order),
    (5, "answers of the HTTP API's mutating requests, kept for retries (idempotency keys)", _http_answers),
    (6, "pickled parameters out of band (job.parameters_pickled)", _v6_pickled_parameters),
    (7, "DAG and DAG-instance ids unique across sites (site id in the high bits)", _v7_dag_ids),
    (8, "indexes for the dashboard: jobs by last update, workdir substrings (FTS5 trigrams)", _v8_dashboard_indexes),
    (9, "parts of bulk writes sent over HTTP in several requests, applied together (staged uploads)", _v9_uploads),
    (10, "API answers kept for retries say when they expire (a launcher's for an hour, others a day)", _v10_answer_expiry),
    (11, "parents at another site: the state the relay reported for each (foreign_parent)", _v11_foreign_parents),
    (12, "parents at another site: when the relay was first asked about one it did not know (foreign_parent.asked)",
     _v12_foreign_parent_asked),
]
"""Ordered (version, name, apply) triples. Append; never edit a released one."""

CURRENT_VERSION = MIGRATIONS[-1][0]
