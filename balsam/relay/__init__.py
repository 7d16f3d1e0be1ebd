"""The optional relay (DESIGN.md section 6): users, tokens, the mirror of many sites, and commands to them.

Needs ``pip install 'balsam[relay]'`` (SQLAlchemy, psycopg, Alembic). Nothing here is imported by a site,
a launcher or the Python API unless they talk to a relay.
"""
