"""The ``balsam`` command line: one click group module per noun, thin over the Python API."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Entry point of the ``balsam`` command."""
    import click

    from balsam import __version__
    from balsam.cli.service import service
    from balsam.exceptions import BalsamError

    @click.group()
    @click.version_option(__version__, prog_name="balsam")
    def cli() -> None:
        """Balsam: HPC workflows with an embedded per-site SQLite store."""

    cli.add_command(service)
    try:
        cli.main(prog_name="balsam", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BalsamError as exc:
        if os.environ.get("BALSAM_DEBUG"):
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)
