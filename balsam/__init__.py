"""Balsam: a workflow manager for HPC with an embedded per-site SQLite store.

Importing this package does no work: no configuration is read and no database is opened until an API
call needs one. The public Python API lives in :mod:`balsam.api`.
"""

__version__ = "0.8.0.dev0"

__all__ = ["__version__"]
