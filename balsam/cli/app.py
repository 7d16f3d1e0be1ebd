"""``balsam app``: list apps, sync ApplicationDefinitions from a Python file, remove apps."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import (
    CLIError,
    confirm,
    echo_json,
    echo_queued,
    echo_table,
    json_option,
    one_site,
    scope_sites,
    site_option,
    yes_option,
)


@click.group(cls=SuggestingGroup)
def app() -> None:
    """List, sync and remove applications (ApplicationDefinition classes stored at a site).

    \b
    Examples:
      balsam app sync apps.py
      balsam app ls --site all
      balsam app rm Hello
    """


def _params_text(params: Dict[str, Dict[str, Any]]) -> str:
    parts = []
    for name, spec in params.items():
        parts.append(name if spec.get("required") else f"{name}={spec.get('default')!r}")
    return ", ".join(parts)


def app_dict(a: Any, site_names: Dict[int, str]) -> Dict[str, Any]:
    """An App as plain data."""
    return {"id": a.id, "name": a.name, "site": site_names.get(a.site_id or 0, a.site_id), "site_id": a.site_id, "kind": a.kind,
            "description": a.description, "parameters": a.parameters, "transfers": a.transfers, "last_update": a.last_update}


@app.command("ls")
@site_option(short=True)
@click.option("-v", "--verbose", is_flag=True, help="Show each app's description, parameters and transfer slots.")
@json_option()
def app_ls(sites: Sequence[str], verbose: bool, as_json: bool) -> None:
    """List the apps of the selected sites.

    \b
    Examples:
      balsam app ls
      balsam app ls --site all -v
    """
    from balsam.api import App

    refs, scope = scope_sites(sites)
    names = {r.id: r.name for r in refs}
    apps = list(App.objects.filter(**scope).order_by("id"))
    if as_json:
        echo_json([app_dict(a, names) for a in apps])
        return
    if not apps:
        click.echo(f"No apps at {', '.join(names.values())}. Define an ApplicationDefinition and run: balsam app sync FILE" if names
                   else "No apps: no site is selected ('balsam site ls' lists them; --site all selects every one).")
        return
    if verbose:
        for a in apps:
            click.echo(f"{a.name} (id {a.id}, site {names.get(a.site_id or 0, a.site_id)}, {a.kind})")
            if a.description:
                click.echo("  " + a.description.replace("\n", "\n  "))
            for pname, spec in a.parameters.items():
                req = "required" if spec.get("required") else f"default {spec.get('default')!r}"
                click.echo(f"  param {pname}: {req}" + (f" - {spec['help']}" if spec.get("help") else ""))
            for slot, spec in a.transfers.items():
                click.echo(f"  transfer {slot}: {spec['direction']} {spec['local_path']}" + (" (required)" if spec.get("required") else ""))
        return
    echo_table(["ID", "Name", "Site", "Kind", "Parameters", "Description"],
               [[a.id, a.name, names.get(a.site_id or 0, a.site_id), a.kind, _params_text(a.parameters), a.description.split("\n")[0]]
                for a in apps], flex=["Parameters", "Description"])


@app.command("rm")
@click.argument("name", required=False)
@click.option("-n", "--name", "name_opt", metavar="NAME", help="The app to remove (Balsam 0.7's spelling of NAME).")
@click.option("-a", "--all", "all_apps", is_flag=True, help="Remove every app of the selected site, with all their jobs.")
@site_option(short=True)
@yes_option()
def app_rm(name: Optional[str], name_opt: Optional[str], all_apps: bool, sites: Sequence[str], yes: bool) -> None:
    """Remove an app and every job of it (NAME or id; or -a for all apps of a site).

    Asks first (showing how many jobs go with it) unless -y; refused while a launcher holds its jobs.

    \b
    Examples:
      balsam app rm Hello --site my-site -y
      balsam app rm -n Hello -s my-site
      balsam app rm --all -s my-site
    """
    from balsam.api import App, Job

    name = name or name_opt
    if (name is None) == (not all_apps):
        raise CLIError("give the app to remove (NAME, -n NAME) or --all", 2)
    refs, scope = scope_sites(sites)
    if all_apps:
        if len(refs) != 1:
            raise CLIError(f"--all removes the apps of one site, and {len(refs)} are in scope: choose one with --site", 2)
        targets = list(App.objects.filter(**scope))
        njobs = sum(Job.objects.filter(app_id=a.id, site_id=a.site_id).count() for a in targets)
        confirm(f"Remove all {len(targets)} apps of site {refs[0].name} and their {njobs} jobs?", yes,
                f"not removing the apps of site {refs[0].name}")
        for target in targets:
            target.delete()
        click.echo(f"Removed {len(targets)} apps and {njobs} jobs")
        return
    assert name is not None
    key: Dict[str, Any] = {"id": int(name)} if name.isdigit() else {"name": name}
    found = list(App.objects.filter(**scope, **key))
    if not found:
        raise CLIError(f"no app {name!r} at {', '.join(r.name for r in refs)} (see 'balsam app ls')", 1)
    if len(found) > 1:
        raise CLIError(f"app {name!r} exists at several sites: choose one with --site", 2)
    target = found[0]
    njobs = Job.objects.filter(app_id=target.id, site_id=target.site_id).count()
    confirm(f"Remove app {target.name} (id {target.id}) and its {njobs} jobs?", yes, f"not removing app {target.name} and its {njobs} jobs")
    target.delete()
    if echo_queued([target.queued]):
        return
    click.echo(f"Removed app {target.name} (id {target.id}) and {njobs} jobs")


def load_app_file(path: Path) -> List[Any]:
    """Import a Python file as a fresh module and return the ApplicationDefinition classes it defines."""
    import importlib.util
    import re

    from balsam.api import ApplicationDefinition

    if not path.is_file():
        raise CLIError(f"{path}: no such file", 2)
    module_name = "balsam_appfile_" + re.sub(r"\W", "_", path.stem) + f"_{abs(hash(str(path.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(module_name, str(path))
    if spec is None or spec.loader is None:
        raise CLIError(f"{path}: not a Python file", 2)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # classes' source is found through their module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise CLIError(f"{path} line {exc.lineno}: {exc.msg}", 2) from None
    except Exception as exc:
        from balsam.exceptions import BalsamError

        if isinstance(exc, BalsamError):
            raise
        raise CLIError(f"{path}: importing it failed: {type(exc).__name__}: {exc}", 1) from exc
    return [v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, ApplicationDefinition) and v is not ApplicationDefinition
            and v.__module__ == module_name and v._balsam_kind is not None]


@app.command("sync")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--site", "sites", multiple=True, metavar="SITE", help="Site for apps that do not name one (default: the current site).")
@json_option()
def app_sync(files: Sequence[Path], sites: Sequence[str], as_json: bool) -> None:
    """Sync the ApplicationDefinitions defined in Python FILE(s) to their sites.

    Each file is imported as a fresh module; every ApplicationDefinition subclass defined in it is saved
    (created, or updated if an app of that name exists). Apps without a 'site' attribute go to --site or
    the current site. Without FILE, the site's apps.py (and each module in its apps/ folder, as Balsam 0.7 kept
    them) is synced.

    \b
    Examples:
      balsam app sync apps.py
      balsam app sync hello.py vecnorm.py --site my-site
    """
    from balsam._api import sites as _sites

    ref = None
    if sites:
        ref = one_site(sites, "app sync")
    if not files:
        ref = ref or _sites.current_site()
        if ref is None:
            raise CLIError("no FILE given and not inside a site: give the Python file that defines your apps", 2)
        # apps.py, and Balsam 0.7's apps/ folder of modules (its `balsam app sync` synced that folder).
        files = [ref.path / "apps.py"] if (ref.path / "apps.py").exists() or not (ref.path / "apps").is_dir() else []
        files += sorted(p for p in (ref.path / "apps").glob("*.py") if not p.name.startswith("_"))
    synced = []
    for path in files:
        classes = load_app_file(Path(path))
        if not classes:
            raise CLIError(f"{path}: defines no ApplicationDefinition with a command_template or run()", 1)
        for cls in classes:
            app_id = cls.sync()
            synced.append({"name": cls.__name__, "id": app_id, "site": cls._site_ref().name, "file": str(path)})
    if as_json:
        echo_json(synced)
        return
    for s in synced:
        click.echo(f"Synced {s['name']} (id {s['id']}) to site {s['site']}")
