"""``balsam ui``: serve the web dashboard of a site on this host, and print how to open it."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

import click


@click.command("ui")
@click.option("--site", "site", default=None, help="The site to show (a name, id or path); default: the current or only site.")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep 127.0.0.1 on a shared login node and reach it with the printed ssh -L line.")
def ui(site: Optional[str], port: int, bind: str) -> None:
    """Serve the web dashboard and the /v1 API of a site on this host, until Ctrl-C.

    Prints a link that logs a browser in ONCE (the login page exchanges its token for a session token; a
    second use is refused) and the ``ssh -L`` line that brings the port to a laptop. BALSAM_UI_TOKEN, when
    set, is a reusable token for scripts and for the login page; a restart with the same token and --port
    keeps open dashboards connected.

    \b
    Example:
      balsam ui --site my-site --port 8800
    """
    from balsam.cli._common import one_site
    from balsam.http.ui import start_ui

    ref = one_site([site] if site else [], "balsam ui")
    server = start_ui(ref, port=port, bind=bind, token=os.environ.get("BALSAM_UI_TOKEN") or None)
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    click.echo(f"Balsam dashboard of site {ref.name!r} at {server.url}")
    click.echo(f"  log in:       {server.link}")
    click.echo(f"  from a laptop: {server.ssh_line()}   then open the link above")
    click.echo("Ctrl-C stops it.", nl=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
