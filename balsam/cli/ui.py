"""``balsam ui``: serve the web dashboard of this host's sites, and print how to open it."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, List, Optional

import click


@click.command("ui")
@click.option("--site", "site", default=None, help="Show only this site (a name, id or path); default: every site of this host.")
@click.option("--port", "-p", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address to listen on. Keep 127.0.0.1 on a shared login node and reach it with the printed ssh -L line.")
def ui(site: Optional[str], port: int, bind: str) -> None:
    """Serve the web dashboard and the /v1 API of this host's sites, until Ctrl-C.

    Every site whose home host this is is shown (a site created while it runs appears within seconds); --site
    shows one. Prints a link that logs a browser in ONCE (the login page exchanges its token for a session
    token; a second use is refused) and the ``ssh -L`` line that brings the port to a laptop.
    BALSAM_UI_TOKEN, when set, is a reusable token for scripts and for the login page; a restart with the same
    token and --port keeps open dashboards connected.

    \b
    Example:
      balsam ui --port 8800
      balsam ui --site my-site
    """
    from balsam._api import sites as _sites
    from balsam.cli._common import one_site
    from balsam.http.host import HostSite
    from balsam.http.ui import start_ui
    from balsam.site import balsam_home

    if site:
        ref = one_site([site], "balsam ui")
        if not ref.is_home:
            raise click.ClickException(f"site {ref.name!r} lives on host {ref.host!r}: run 'balsam ui' there (its agent serves "
                                       "its dashboard too)")
        one = HostSite(ref.id, ref.name, ref.path, ref.backend)

        def discover() -> List[HostSite]:
            return [one]
    else:
        def discover() -> List[HostSite]:
            return [HostSite(r.id, r.name, r.path, r.backend) for r in _sites.local_sites()]

    server = start_ui(discover, port=port, bind=bind, token=os.environ.get("BALSAM_UI_TOKEN") or None, home=balsam_home())
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    names = sorted(server.site_names)
    if site:
        click.echo(f"Balsam dashboard of site {names[0]!r} at {server.url}")
    elif names:
        click.echo(f"Balsam dashboard of this host's sites ({', '.join(names)}; sites created later appear too) at {server.url}")
    else:
        click.echo(f"Balsam dashboard at {server.url} (no site on this host yet: one created with 'balsam site init' appears)")
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
