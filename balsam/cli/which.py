"""``balsam which``: the site this shell resolves to and why, its DB, and the Balsam that runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import click

from balsam.cli._common import echo_json, json_option


def _resolve(site: Optional[str]) -> Dict[str, Any]:
    from balsam.site import Registry, SiteLayout, find_site_root

    out: Dict[str, Any] = {"found_by": None, "root": None}
    if site:
        candidate = Path(site).expanduser().resolve()
        if SiteLayout(candidate).is_site():
            out.update(found_by=f"--site {site}", root=candidate)
        else:
            from balsam.exceptions import SiteNotFound

            try:
                entry = Registry().lookup(site)
            except SiteNotFound:
                from balsam._api import sites as _sites

                ref = _sites.resolve(site)  # the relay's sites (logged in), else the same SiteNotFound
                out["found_by"] = (f"--site {site}: not on this host; reached through the relay at "
                                   f"{ref.host.removeprefix('relay:')} ('balsam which' on the site's host says more)")
                return out
            out.update(found_by=f"--site {site} (registered as {entry.name!r})", root=Path(entry.path))
        return out
    env = os.environ.get("BALSAM_SITE_PATH")
    root = find_site_root()
    if root is None:
        out["found_by"] = "none: not inside a site and BALSAM_SITE_PATH is unset"
    elif env:
        out.update(found_by=f"BALSAM_SITE_PATH={env}", root=root)
    else:
        out.update(found_by=f"the working directory ({Path.cwd()})", root=root)
    return out


def data_site_readable(found: Dict[str, Any]) -> bool:
    """True when a site was found and its settings.yml is there to read."""
    return bool(found["root"]) and (Path(found["root"]) / "settings.yml").is_file()


@click.command("which")
@click.option("--site", help="Resolve this site (name, id or path) instead of the current one.")
@json_option()
def which(site: Optional[str], as_json: bool) -> None:
    """Show the site this shell resolves to and why (--site, BALSAM_SITE_PATH, the working directory, or
    none), its database and schema version, its preset, and the Balsam version and where it runs from.

    \b
    Examples:
      balsam which
      balsam which --site my-site --json
    """
    from balsam import __version__
    from balsam._api.environment import node_hardware, running_from, site_backend
    from balsam._api.relay import current_login
    from balsam.site import Registry, this_host

    found = _resolve(site)
    data: Dict[str, Any] = {"found_by": found["found_by"], "site": site_backend(found["root"]) if found["root"] else None,
                            "host": this_host(), "registry": str(Registry().path),
                            "balsam": {"version": __version__, **running_from()},
                            "python": {"executable": sys.executable, "version": sys.version.split()[0]},
                            "node": node_hardware(found["root"] if data_site_readable(found) else None, os.environ)}
    login = current_login()
    data["relay"] = {"url": login["url"], "user": login.get("user")} if login else None
    if as_json:
        echo_json(data)
        return
    s = data["site"]
    if s is None:
        click.echo(f"Site:       {data['found_by']}")
    else:
        name = f"{s['name']} (id {s['id']})" if "name" in s else "(not readable from this host)"
        click.echo(f"Site:       {name} at {s['path']}")
        click.echo(f"Found by:   {data['found_by']}")
        click.echo(f"Home host:  {s['home_host']}" + ("" if s["home_host"] == data["host"] else f" (this host is {data['host']})"))
        if "note" in s:
            click.echo(f"Note:       {s['note']}")
        schema = f"schema {s['schema_version']}" if "schema_version" in s else "schema ?"
        extra = f", {s['db_bytes'] / 1e6:.1f} MB" if "db_bytes" in s else ""
        pending = f"; 'balsam db migrate' applies: {', '.join(s['pending_migrations'])}" if s.get("pending_migrations") else ""
        click.echo(f"Database:   {s['db']} ({schema}; this Balsam: {s['code_schema_version']}{extra}){pending}")
        click.echo(f"Preset:     {s['preset'] or 'unknown'}")
        click.echo(f"Backend:    {s['backend']}" + (f" at {s['api_url']}" if s.get("api_url") else "") + f": {s['backend_reason']}")
        if s.get("api_error"):
            click.echo(f"API:        {s['api_error']}")
    b = data["balsam"]
    click.echo(f"Balsam:     {b['version']} ({b['kind']}: {b['path']}" + (f", build {b['build']})" if "build" in b else ")"))
    if b.get("dependencies"):
        click.echo("Depends on: " + ", ".join(f"{k} {v}" for k, v in sorted(b["dependencies"].items())))
    click.echo(f"Python:     {data['python']['version']} ({data['python']['executable']})")
    hw = data["node"]
    if "mpi" in hw:
        click.echo(f"MPI:        {hw['mpi']}")
    if "gpus" in hw:
        click.echo(f"GPUs:       {hw['gpus']}")
    if "warning" in hw:
        click.echo(f"Warning:    {hw['warning']}")
    click.echo(f"Registry:   {data['registry']}")
    relay = data["relay"]
    click.echo(f"Relay:      logged in to {relay['url']}" + (f" as {relay['user']}" if relay["user"] else "") if relay
               else "Relay:      not logged in (optional: balsam login URL -u USER)")
