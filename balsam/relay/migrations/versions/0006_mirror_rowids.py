"""Cheaper pushes: on SQLite every mirror table's id becomes its rowid (``INTEGER PRIMARY KEY``), and the index of
jobs by last update alone is dropped on both databases.

- A ``BIGINT`` primary key is not SQLite's rowid: it is a second B-tree, which every write of a row and every
  lookup by id (a push reads each job's previous state) went through on top of the table's own. The tables are
  rebuilt with the same rows and indexes (a relay of a million jobs takes some seconds, once).
- ``relay_job_last_update (last_update)``: every state change rewrote it; filters by last update name the caller's
  sites, which ``relay_job_site_last_update (site_id, last_update, id)`` serves (revision 0004).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from balsam.relay import schema

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("DROP INDEX IF EXISTS relay_job_last_update")
    if bind.dialect.name != "sqlite":
        return
    for table in schema.MIRRORS.values():
        _rebuild_with_rowid(bind, table)


def _rebuild_with_rowid(bind: sa.engine.Connection, table: sa.Table) -> None:
    """Rebuild ``table`` from today's metadata (its id the rowid), keeping its rows and every index it had.
    Nothing to do for a table already made so (a relay created at this revision or later)."""
    name = table.name
    info = bind.exec_driver_sql(f'PRAGMA table_info("{name}")').all()  # (cid, name, type, notnull, default, pk)
    keys = [r for r in info if r[5]]
    if len(keys) == 1 and keys[0][1] == "id" and str(keys[0][2]).upper() == "INTEGER":
        return
    indexes = bind.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                                   (name,)).all()
    for index_name, _ in indexes:
        bind.exec_driver_sql(f'DROP INDEX "{index_name}"')
    old = f"{name}_before_0006"
    bind.exec_driver_sql(f'ALTER TABLE "{name}" RENAME TO "{old}"')
    bind.execute(sa.schema.CreateTable(table))
    had = {str(r[1]) for r in info}
    columns = ", ".join(f'"{c.name}"' for c in table.columns if c.name in had)
    bind.exec_driver_sql(f'INSERT INTO "{name}" ({columns}) SELECT {columns} FROM "{old}"')
    bind.exec_driver_sql(f'DROP TABLE "{old}"')
    for _, sql in indexes:
        bind.exec_driver_sql(sql)
