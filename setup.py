"""Balsam: HPC workflows with an embedded per-site SQLite store. Metadata lives in pyproject.toml."""

from setuptools import setup

setup()
