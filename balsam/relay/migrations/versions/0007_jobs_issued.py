"""relay_site.jobs_issued: the highest job id each site is known to have handed out (and jobs_issued_at: when a push
last reported its id counter), so that a site asking for a parent at another site learns when that parent was
deleted or never existed (balsam.relay.parents) instead of waiting for it forever. Filled here from the jobs the
mirror holds.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    # A relay created at an earlier revision from today's metadata already has the column: added only where missing.
    bind = op.get_bind()
    have = {c["name"] for c in sa.inspect(bind).get_columns("relay_site")}
    if "jobs_issued" not in have:
        op.add_column("relay_site", sa.Column("jobs_issued", sa.BigInteger, nullable=False, server_default="0"))
    if "jobs_issued_at" not in have:
        op.add_column("relay_site", sa.Column("jobs_issued_at", sa.Float, nullable=True))
    op.execute("UPDATE relay_site SET jobs_issued = coalesce((SELECT max(id) FROM relay_job WHERE relay_job.site_id = relay_site.id), 0)")
