"""``balsam which``: the site this shell resolves to and why, its DB, and the Balsam that runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import click

from balsam.cli._common import echo_json, json_option


def _running_from() -> Dict[str, Any]:
    """Where this Balsam's code comes from: a zipapp, a source tree, or an installed package."""
    import balsam
    from balsam.runtime import zipapp_path

    archive = zipapp_path()
    if archive is not None:
        from balsam._zipapp import build_info

        info = build_info(archive)
        deps = {k: v for k, v in info.get("dependencies", {}).items() if k != "balsam"}
        return {"kind": "zipapp", "path": str(archive), "build": info.get("build_hash", "?"), "dependencies": deps}
    origin = Path(balsam.__file__).resolve().parent
    kind = "installed" if "site-packages" in origin.parts or "dist-packages" in origin.parts else "source tree"
    return {"kind": kind, "path": str(origin), "dependencies": _installed_versions()}


def _installed_versions() -> Dict[str, str]:
    """Versions of Balsam's dependencies in this Python ('missing' where absent)."""
    import importlib.metadata as md

    out = {}
    for name in ("click", "jinja2", "markupsafe", "pyyaml", "psutil", "starlette", "uvicorn", "h11", "wsproto"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "missing"
    return out


def _resolve(site: Optional[str]) -> Dict[str, Any]:
    from balsam.site import Registry, SiteLayout, find_site_root

    out: Dict[str, Any] = {"found_by": None, "root": None}
    if site:
        candidate = Path(site).expanduser().resolve()
        if SiteLayout(candidate).is_site():
            out.update(found_by=f"--site {site}", root=candidate)
        else:
            entry = Registry().lookup(site)
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


def _site_info(root: Path) -> Dict[str, Any]:
    from balsam.site import SiteLayout, code_schema_version, store_report, this_host

    layout = SiteLayout(root)
    home = layout.home_host()
    info: Dict[str, Any] = {"path": str(root), "home_host": home, "preset": layout.preset(), "db": str(layout.db_path),
                            "code_schema_version": code_schema_version()}
    if home and home != this_host():
        info["backend"] = "http"
        info["backend_reason"] = (f"this host ({this_host()}) is not the site's home host ({home}): its DB can only be opened "
                                  "there, so the API and CLI go through the site agent's HTTP API")
        info["note"] = f"the site belongs to host {home!r}: its DB can only be opened there"
        from balsam.exceptions import BalsamError
        from balsam.http.serve import read_address

        try:
            address = read_address(layout.state)
            info["api_url"] = address.get("url") or f"{address.get('host')}:{address.get('port')}"
            from balsam.http.client import HttpBackend

            row = HttpBackend.for_site(root, retry_s=2).site_row(("id", "name"))
            info.update(id=row[0], name=row[1])
        except BalsamError as e:
            info["api_error"] = str(e)
        return info
    info["backend"] = "local"
    info["backend_reason"] = f"this host ({this_host()}) is the site's home host: the DB is opened directly"
    info.update(store_report(root, this_host()))
    return info


def node_hardware(root: Optional[Path]) -> Dict[str, str]:
    """What a launcher started here would use: the MPI (``mpi``), the GPUs (``gpus``) and any ``warning``
    about the settings (the site's, else the defaults), found the way the launcher finds them."""
    from balsam.exceptions import BalsamError
    from balsam.launcher.nodes import resolve_launcher_settings
    from balsam.settings import LauncherSettings, load_settings

    ls = LauncherSettings()
    if root is not None:
        try:
            ls = load_settings(root / "settings.yml").launcher
        except BalsamError as exc:
            return {"warning": str(exc)}
    resolved, notes = resolve_launcher_settings(ls, os.environ)
    out: Dict[str, str] = {}
    for note in notes:
        key, _, text = note.partition(": ")
        out[{"MPI": "mpi", "GPUs": "gpus"}.get(key, "warning")] = text
    if "mpi" not in out:
        exe = resolved.mpi_executable or "its usual program"
        out["mpi"] = f"{resolved.mpi_launcher} (launcher.mpi_launcher in settings.yml, as {exe})"
    if "gpus" not in out:
        n = resolved.gpus_per_node or len(resolved.gpu_ids)
        out["gpus"] = f"{n} per node (launcher settings); jobs see {resolved.gpu_env}"
    return out


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
    from balsam.site import Registry, this_host

    found = _resolve(site)
    data: Dict[str, Any] = {"found_by": found["found_by"], "site": _site_info(found["root"]) if found["root"] else None,
                            "host": this_host(), "registry": str(Registry().path),
                            "balsam": {"version": __version__, **_running_from()},
                            "python": {"executable": sys.executable, "version": sys.version.split()[0]},
                            "node": node_hardware(found["root"] if data_site_readable(found) else None)}
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
