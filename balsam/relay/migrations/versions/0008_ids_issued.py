"""relay_site.issued: the highest id of each kind other than jobs (events, apps, BatchJobs, transfer items, DAGs, DAG
instances) that each site has pushed, so that a site whose DB was put back from a backup, and so hands out ids again
that it pushed before, is told to give those rows new ids instead of overwriting the rows the relay holds under them
(balsam.relay.mirror.reissued). Filled here from the rows the mirrors hold.

Revision ID: 0008
Revises: 0007
"""

import json

import sqlalchemy as sa
from alembic import op

from balsam.relay import schema

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    # A relay created at an earlier revision from today's metadata already has the column: added only where missing.
    bind = op.get_bind()
    if "issued" not in {c["name"] for c in sa.inspect(bind).get_columns("relay_site")}:
        op.add_column("relay_site", sa.Column("issued", sa.Text, nullable=False, server_default="{}"))
    marks: dict = {}  # type: ignore[type-arg]
    for entity, table in schema.MIRRORS.items():
        if entity == "job":
            continue  # relay_site.jobs_issued (0007)
        for site_id, top in bind.execute(sa.select(table.c.site_id, sa.func.max(table.c.id)).group_by(table.c.site_id)):
            if top is not None:
                marks.setdefault(int(site_id), {})[entity] = int(top)
    for site_id, issued in marks.items():
        bind.execute(schema.site.update().where(schema.site.c.id == site_id).values(issued=json.dumps(issued, sort_keys=True)))
