"""One module per relay schema revision (Alembic)."""
