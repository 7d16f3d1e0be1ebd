"""The relay's first schema: users, tokens, login failures, sites, mirrors, pushes, commands.

Revision ID: 0001
Revises:
"""

from alembic import op

from balsam.relay import schema

revision = "0001"
down_revision = None


def upgrade() -> None:
    # Version 1 is the metadata as first released; later revisions alter it step by step.
    schema.metadata.create_all(bind=op.get_bind())
