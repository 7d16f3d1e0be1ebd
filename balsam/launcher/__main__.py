"""``python -m balsam.launcher ...``: the same command as ``balsam launcher`` (used for partition sub-launchers)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    import click

    from balsam.cli.launcher import launcher
    from balsam.exceptions import BalsamError

    try:
        launcher.main(prog_name="python -m balsam.launcher", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BalsamError as exc:
        if os.environ.get("BALSAM_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
