"""relay_job.links: a digest of each job's tags and parents, so a push rewrites link rows only when they change.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # A relay created at revision 0001 from today's metadata already has the column: added only where missing.
    bind = op.get_bind()
    if "links" not in {c["name"] for c in sa.inspect(bind).get_columns("relay_job")}:
        op.add_column("relay_job", sa.Column("links", sa.String(32), nullable=True))
