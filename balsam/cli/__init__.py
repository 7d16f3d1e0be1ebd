"""The ``balsam`` command line: one click group module per noun, thin over the Python API."""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the ``balsam`` command."""
    import click

    from balsam import __version__

    @click.group()
    @click.version_option(__version__, prog_name="balsam")
    def cli() -> None:
        """Balsam: HPC workflows with an embedded per-site SQLite store."""

    cli(prog_name="balsam")
    sys.exit(0)
