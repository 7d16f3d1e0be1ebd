"""Indexes for the dashboard's jobs table at the relay: a site's jobs by last update, and workdir substrings.

- ``relay_job_site_last_update (site_id, last_update, id)``: the sort by last update walks one site's jobs in
  order instead of sorting them all;
- a workdir substring (``workdir__contains``): on PostgreSQL a GIN trigram index (``pg_trgm``) answers ``LIKE
  '%...%'``; where the extension cannot be created (no privilege), and on SQLite, the narrow index
  ``relay_job_workdir (workdir, id)`` is scanned instead of the wide rows.

Revision ID: 0004
Revises: 0003
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
logger = logging.getLogger("balsam.relay")


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("CREATE INDEX IF NOT EXISTS relay_job_site_last_update ON relay_job (site_id, last_update, id)")
    if bind.dialect.name == "postgresql":
        try:
            with bind.begin_nested():
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
                bind.execute(sa.text("CREATE INDEX IF NOT EXISTS relay_job_workdir_trgm ON relay_job USING gin (workdir gin_trgm_ops)"))
            return
        except sa.exc.DBAPIError as e:  # no privilege for the extension: the narrow index below
            logger.warning("no pg_trgm (%s): workdir substring filters scan an index of workdirs", str(e).splitlines()[0])
    op.execute("CREATE INDEX IF NOT EXISTS relay_job_workdir ON relay_job (workdir, id)")
