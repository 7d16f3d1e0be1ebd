"""Alembic migrations of the relay database (env.py, and one module per revision in versions/)."""
