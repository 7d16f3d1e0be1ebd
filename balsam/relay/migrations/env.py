"""Alembic environment for the relay: migrations run on the connection balsam.relay.migrate hands in."""

from alembic import context

from balsam.relay.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
