"""The mirrors of the sites' DAG templates and DAG instances (DAGs read and instantiated through the relay).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from balsam.relay import schema

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    # A relay created at an earlier revision from today's metadata already has them: created only where missing.
    bind = op.get_bind()
    schema.dag.create(bind=bind, checkfirst=True)
    schema.dag_instance.create(bind=bind, checkfirst=True)
