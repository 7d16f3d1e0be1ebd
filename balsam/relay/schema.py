"""The relay's tables (SQLAlchemy 2 Core): users, tokens, sites, the mirrors of the sites' rows, pushes and
commands. The same metadata serves SQLite (the default, a file next to the relay's config) and PostgreSQL.

Rows mirrored from sites keep the site's own ids (unique across every site: the site's id is in their high
bits), so a mirror row's primary key is its id. Each mirror row keeps the columns queries filter and sort on,
plus the whole row as the site sent it (``row``, JSON text); job tags also go to ``relay_job_tag`` (key, value,
job_id), the index tag filters walk on both databases.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 2
metadata = MetaData()

MIRROR_ID = BigInteger().with_variant(Integer, "sqlite")
"""A mirror row's id: on SQLite an ``INTEGER PRIMARY KEY``, the table's own rowid (a BIGINT key would be a second
index that every write and every lookup by id goes through; revision 0006), 64 bits either way."""

user = Table(
    "relay_user", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

token = Table(
    "relay_token", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("relay_user.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # "user" (a login) or "site" (an agent, scoped to one site)
    Column("site_id", BigInteger, nullable=True),
    Column("label", String(200), nullable=False, default=""),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("last_used", Float, nullable=True),
)
Index("relay_token_user", token.c.user_id)

login_failure = Table(
    "relay_login_failure", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("time", Float, nullable=False),
)
Index("relay_login_failure_name", login_failure.c.name, login_failure.c.time)

site = Table(
    "relay_site", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", Integer, ForeignKey("relay_user.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("hostname", String(255), nullable=False, default=""),
    Column("path", Text, nullable=False, default=""),
    Column("row", Text, nullable=False, default="{}"),
    Column("last_seen", Float, nullable=True),
    Column("pushed_seq", BigInteger, nullable=False, default=0),  # the site's outbox sequence applied so far
    Column("command_seq", BigInteger, nullable=False, default=0),  # commands the site has taken (its cursor)
    Column("backlog", Text, nullable=False, default="{}"),
    # The highest job id the site is known to have handed out (its pushes' job ids, and its id counter when a push
    # empties its outbox): a job of the site below it that the mirror lacks was deleted or never existed (0007).
    Column("jobs_issued", BigInteger, nullable=False, default=0, server_default="0"),
    Column("jobs_issued_at", Float, nullable=True),  # when a push last reported the site's id counter (the relay's clock)
    # The highest id of each other kind (events, apps, BatchJobs, transfer items, DAGs, DAG instances) the site has
    # pushed, as JSON {entity: id}: a row pushed again at or below it must be the one the relay already holds, or the
    # site reissued the id (its DB was put back from a backup) and gives the row a new one (balsam.relay.mirror, 0008).
    Column("issued", Text, nullable=False, default="{}", server_default="{}"),
    UniqueConstraint("user_id", "name", name="relay_site_user_name"),
)

job = Table(
    "relay_job", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("app_id", BigInteger, nullable=False),
    Column("workdir", Text, nullable=False),
    Column("state", String(20), nullable=False),
    Column("batch_job_id", BigInteger, nullable=True),
    Column("return_code", Integer, nullable=True),
    Column("created", Float, nullable=False),
    Column("last_update", Float, nullable=False),
    Column("version", Integer, nullable=False),
    Column("row", Text, nullable=False),
    # A digest of the job's tags and parent ids as last pushed: a push rewrites a job's tag and parent rows only
    # when it changes (revision 0002). NULL for rows from before it: their next push rewrites them once.
    Column("links", String(32), nullable=True),
)
Index("relay_job_site_state", job.c.site_id, job.c.state, job.c.id)
Index("relay_job_app", job.c.app_id)
Index("relay_job_batch_job", job.c.batch_job_id)
# Filters and sorts by last update walk (site_id, last_update, id): revision 0004 makes it, 0006 drops the index of
# last_update alone, which every state change rewrote.

job_count = Table(
    "relay_job_count", metadata,
    Column("site_id", BigInteger, primary_key=True, autoincrement=False),
    Column("state", String(20), primary_key=True),
    Column("n", BigInteger, nullable=False, default=0),
)
"""How many jobs of each site are in each state: counts by state read a few rows here instead of an index entry
per job. Kept by every write of the job mirror (a push's upserts and deletes), in the push's transaction."""

job_tag = Table(
    "relay_job_tag", metadata,
    Column("key", String(255), primary_key=True),
    Column("value", String(255), primary_key=True),
    Column("job_id", BigInteger, primary_key=True),
)
Index("relay_job_tag_job", job_tag.c.job_id)

job_parent = Table(
    "relay_job_parent", metadata,
    Column("parent_id", BigInteger, primary_key=True),
    Column("child_id", BigInteger, primary_key=True),
)
Index("relay_job_parent_child", job_parent.c.child_id)

event = Table(
    "relay_event", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("job_id", BigInteger, nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("from_state", String(20), nullable=False),
    Column("to_state", String(20), nullable=False),
    Column("data", Text, nullable=True),
)
Index("relay_event_job", event.c.job_id)
Index("relay_event_site_time", event.c.site_id, event.c.timestamp)

batch_job = Table(
    "relay_batch_job", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("state", String(32), nullable=False),
    Column("queue", String(255), nullable=False, default=""),
    Column("project", String(255), nullable=False, default=""),
    Column("scheduler_id", BigInteger, nullable=True),
    Column("start_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    Column("created", Float, nullable=False),
    Column("version", Integer, nullable=False),
    Column("row", Text, nullable=False),
)
Index("relay_batch_job_site_state", batch_job.c.site_id, batch_job.c.state)

app = Table(
    "relay_app", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("row", Text, nullable=False),  # without source code: code never leaves its site through the relay
)
Index("relay_app_site", app.c.site_id, app.c.name)

transfer_item = Table(
    "relay_transfer_item", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("job_id", BigInteger, nullable=False),
    Column("state", String(32), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("row", Text, nullable=False),
)
Index("relay_transfer_item_job", transfer_item.c.job_id)

dag = Table(
    "relay_dag", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("row", Text, nullable=False),  # the template (name, description, spec, times) as the site stored it
)
Index("relay_dag_site_name", dag.c.site_id, dag.c.name)

dag_instance = Table(
    "relay_dag_instance", metadata,
    Column("id", MIRROR_ID, primary_key=True, autoincrement=False),
    Column("site_id", BigInteger, nullable=False),
    Column("dag_id", BigInteger, nullable=False),
    Column("created", Float, nullable=False),
    Column("row", Text, nullable=False),  # its placeholder values (params)
)
Index("relay_dag_instance_dag", dag_instance.c.dag_id, dag_instance.c.id)

push = Table(
    "relay_push", metadata,
    Column("submission_id", String(64), primary_key=True),
    Column("site_id", BigInteger, nullable=False),
    Column("received", Float, nullable=False),
    Column("answer", Text, nullable=False),
)
Index("relay_push_site_time", push.c.site_id, push.c.received)

command = Table(
    "relay_command", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site_id", BigInteger, nullable=False),
    Column("user_id", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("body", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("state", String(16), nullable=False, default="pending"),  # pending -> applied | rejected
    Column("result", Text, nullable=True),
    Column("finished", Float, nullable=True),
)
Index("relay_command_site", command.c.site_id, command.c.id)

meta = Table(
    "relay_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

MIRRORS = {"job": job, "event": event, "batch_job": batch_job, "app": app, "transfer_item": transfer_item, "dag": dag,
           "dag_instance": dag_instance}
"""The site tables the relay mirrors, by the site store's table names."""
