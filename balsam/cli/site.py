"""``balsam site``: create, list, move, rename, re-home, sync and remove sites; presets and sample settings.

``site start/stop/status`` are the site agent's commands (``balsam/cli/service.py``), loaded lazily from there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from balsam.cli import Entry, LazyGroup
from balsam.cli._common import CLIError, confirm, echo_json, echo_table, format_time, is_interactive, json_option, yes_option

AGENT_COMMANDS = {
    "start": Entry("balsam.cli.service:start", "Start the site agent in the background.", optional=True),
    "stop": Entry("balsam.cli.service:stop", "Stop the site agent.", optional=True),
    "status": Entry("balsam.cli.service:status", "Show whether the site agent runs, and its services' health.", optional=True),
}


@click.group(cls=LazyGroup, lazy=AGENT_COMMANDS)
def site() -> None:
    """Create, list, move, rename and remove sites.

    \b
    Examples:
      balsam site init ./my-site --preset polaris -n my-site
      balsam site ls
      balsam site sync
    """


# ------------------------------------------------------------------------------------------- presets
def _presets() -> List[Tuple[str, str, str, str]]:
    """(name, machine, scheduler, MPI launcher) per packaged preset."""
    from balsam.site.presets import preset_rows

    return preset_rows()


def _choose_preset(options: List[Tuple[str, str, str, str]]) -> str:
    names = [o[0] for o in options]
    default = names.index("local") + 1 if "local" in names else 1
    click.echo("Presets:")
    for i, (name, title, sched, mpi) in enumerate(options, 1):
        detail = ", ".join(x for x in (title, sched, mpi) if x)
        click.echo(f"  {i:2d}) {name}" + (f"  ({detail})" if detail else ""))
    while True:
        answer = str(click.prompt("Preset (number or name)", default=str(default))).strip()
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        if answer in names:
            return answer
        click.echo(f"Choose 1-{len(names)} or one of: {', '.join(names)}", err=True)


NEXT_STEPS = """Next (inside {path} every command finds the site by itself; elsewhere add --site {name}):
  balsam site start                 # the site agent: prepares jobs, submits BatchJobs
  balsam app sync apps.py           # your ApplicationDefinitions ('balsam docs using balsam' shows some)
  balsam job create -a APP -w WORKDIR -p NAME=VALUE
  balsam queue submit -n 1 -t 10    # an allocation whose launcher runs the jobs"""


@site.command("init")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-n", "--name", help="Site name (default: the directory's name).")
@click.option("--preset", help="Machine preset (see 'balsam site presets'; default: local).")
@click.option("--relay", "relay_url", metavar="URL", help="Link the new site to this relay (after 'balsam login URL -u USER').")
def site_init(path: Path, name: Optional[str], preset: Optional[str], relay_url: Optional[str]) -> None:
    """Create a site at PATH and register it.

    On a terminal, a missing --preset or --name is asked for (a menu of presets); otherwise the defaults
    are used: preset 'local' and the directory's name.

    \b
    Examples:
      balsam site init ./my-site
      balsam site init /lus/proj/sites/polaris -n polaris --preset polaris
      balsam site init ~/sites/polaris --preset polaris --relay https://relay.example.org
    """
    from balsam.site import init_site

    options = _presets()
    names = [o[0] for o in options]
    if preset is not None and preset not in names and preset.lower() in names:
        preset = preset.lower()  # --preset Polaris
    if preset is not None and preset not in names:
        from balsam.cli import did_you_mean

        raise CLIError(f"unknown preset {preset!r}{did_you_mean(preset, names)} (available: {', '.join(names)}; "
                       "see 'balsam site presets')", 2)
    interactive = is_interactive()
    if preset is None:
        preset = _choose_preset(options) if interactive and len(names) > 1 else "local"
    if name is None:
        default = Path(path).expanduser().resolve().name
        name = str(click.prompt("Site name", default=default)).strip() if interactive else default
    if relay_url:
        from balsam._api import relay

        record = relay.current_login()
        if record is None or record["url"] != relay_url.rstrip("/"):
            raise CLIError(f"log in to the relay first: balsam login {relay_url} -u USER", 2)
    entry = init_site(path, name=name, preset=preset)
    click.echo(f"Created site {entry.name!r} (id {entry.id}, preset {preset}) at {entry.path}")
    if relay_url:
        from balsam.exceptions import BalsamError

        try:
            link = relay.link(Path(entry.path), relay_url)
        except BalsamError as e:
            raise CLIError(f"site created, but linking it to {relay_url} failed: {str(e).splitlines()[0]} "
                           f"(retry with: balsam site link {relay_url} --site {entry.name})", 1) from None
        click.echo(f"Linked to {link['url']} as {link['user']}" + (f" (site id now {link['site_id']})" if link.get("moved_from") else ""))
    click.echo(NEXT_STEPS.format(path=entry.path, name=entry.name))


# ------------------------------------------------------------------------------------------- ls
QUICK_CHECK_MAX_BYTES = 64 << 20
"""``site ls`` runs SQLite's quick_check on DBs up to this size (``-v``: always), so a damaged site is not "ok"."""


def _site_rows(verbose: bool) -> List[Dict[str, Any]]:
    from balsam.site import Registry, SiteLayout, agent_running, site_summary, this_host

    here = this_host()
    out = []
    for e in Registry().entries():
        layout = SiteLayout(Path(e.path))
        row: Dict[str, Any] = {"id": e.id, "name": e.name, "path": e.path, "host": e.host}
        if e.host and e.host != here:
            row["status"] = f"on {e.host}: not reachable from here"
            if layout.is_site():  # its directory is seen from here: its agent, if it runs, answers over HTTP
                _foreign_row(row, layout.root, e.host)
        elif not layout.is_site():
            row["status"] = "missing: no site at this path"
        else:
            row["active"] = agent_running(layout) is not None  # Balsam 0.7's "Active": the site's agent runs
            row["status"] = "agent running" if row["active"] else "ok"
            try:
                summary = site_summary(layout.root, verbose=verbose, quick_check_max_bytes=QUICK_CHECK_MAX_BYTES, host=here)
                row["jobs"] = summary["jobs"]
                if verbose:
                    row["preset"] = layout.preset()
                    row["jobs_by_state"] = summary["jobs_by_state"]
                    row["created"] = _time(summary["created"])
                    row["apps"] = summary["apps"]
                    row["schema_version"] = summary["schema_version"]
                    for key in ("last_refresh", "allowed_projects", "allowed_queues", "backfill_windows", "queued_jobs",
                                "transfer_locations"):
                        row[key] = summary.get(key)
                    row["last_refresh"] = _time(row["last_refresh"])
                if summary["damage"] is not None:
                    row["status"] = f"damaged DB: run 'balsam db check --site {e.name}'"
            except Exception as exc:  # one broken site must not hide the others
                row["status"] = f"error: {exc} (run 'balsam db check --site {e.name}')"
        out.append(row)
    return out


def _foreign_row(row: Dict[str, Any], root: Path, host: str) -> None:
    """Fill ``row`` for a site of another host whose directory this host sees, from its agent if it answers."""
    from balsam._api.sites import agent_job_count
    from balsam.exceptions import BalsamError

    try:
        row["jobs"] = agent_job_count(root)
    except BalsamError:
        row["status"] = f"on {host}: its agent does not answer from here"
        return
    row["active"] = True
    row["status"] = f"agent running on {host}"


def _relay_rows() -> List[Dict[str, Any]]:
    """The logged-in user's sites at the relay: last seen, jobs by state, changes waiting to be pushed."""
    from balsam._api import relay
    from balsam.exceptions import BalsamError

    record = relay.current_login()
    if record is None:
        return []
    try:
        sites = relay.sites(record)
    except BalsamError as e:
        return [{"id": "", "name": "", "path": record["url"], "host": "relay", "status": f"relay unreachable: {e}"}]
    out = []
    for s in sites:
        backlog = s.get("backlog") or {}
        seen = s.get("last_seen")
        online = bool((s.get("agent") or {}).get("running"))
        status = ("online" if online else "offline") + (f", last seen {seen[:19]}Z" if seen else ", never seen")
        if s.get("outbox"):
            status += f", {s['outbox']} changes to push"
        out.append({"id": s["id"], "name": s["name"], "path": f"{record['url']} ({s.get('path') or ''})", "host": s.get("hostname") or "",
                    "active": online, "status": status, "jobs": sum(int(v) for v in backlog.values()), "jobs_by_state": backlog, "relay": record["url"]})
    return out


def _time(ts: Optional[float]) -> str:
    import datetime as dt

    return "" if ts is None else format_time(dt.datetime.fromtimestamp(ts, dt.timezone.utc))


@site.command("ls")
@click.option("-v", "--verbose", is_flag=True, help="Show preset, apps, jobs by state and creation time.")
@json_option()
def site_ls(verbose: bool, as_json: bool) -> None:
    """List the sites registered for this user.

    A site whose home is another host is listed with its host; where its directory is seen from here, its agent is
    asked for the job count (Active: it answered), else it is marked as not reachable from here.

    \b
    Examples:
      balsam site ls
      balsam site ls -v --json
    """
    rows = _site_rows(verbose or as_json)
    here = {r["id"]: r for r in rows if r.get("id") not in (None, "")}
    for r in _relay_rows():  # a site of this host linked to the relay is one site: its row says so, not a second row
        if r.get("id") in here:
            here[r["id"]]["relay"] = r["relay"]
            here[r["id"]]["status"] = f"{here[r['id']]['status']}; linked to {r['relay']}"
        else:
            rows.append(r)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No sites registered. Create one with: balsam site init PATH")
        return
    if not verbose:
        echo_table(["ID", "Name", "Host", "Active", "Jobs", "Status", "Path"],
                   [[r["id"], r["name"], r["host"], "yes" if r.get("active") else "no", r.get("jobs", ""), r["status"], r["path"]]
                    for r in rows], flex=["Path"])
        return
    for r in rows:
        click.echo(f"{r['name']} (id {r['id']})")
        for key in ("path", "host", "status", "preset", "created", "schema_version", "apps", "jobs"):
            if r.get(key) not in (None, ""):
                click.echo(f"  {key + ':':16}{r[key]}")
        by_state = r.get("jobs_by_state") or {}
        if by_state:
            click.echo(f"  {'by state:':16}" + ", ".join(f"{k} {v}" for k, v in sorted(by_state.items())))
        for line in _site_details(r):
            click.echo(f"  {line}")


def _site_details(r: Dict[str, Any]) -> List[str]:
    """``site ls -v``'s lines from the site row, as Balsam 0.7's verbose listing showed them: the queues and projects
    the site may submit to, the scheduler's idle backfill windows, the BatchJobs queued there, transfer locations."""
    out = []
    if r.get("last_refresh"):
        out.append(f"{'last refresh:':16}{r['last_refresh']}")
    if r.get("allowed_projects"):
        out.append(f"{'projects:':16}{', '.join(map(str, r['allowed_projects']))}")
    for name, q in sorted((r.get("allowed_queues") or {}).items()):
        limits = ", ".join(f"{k} {v}" for k, v in q.items()) if isinstance(q, dict) else str(q)
        out.append(f"{'queue:':16}{name} ({limits})")
    windows = r.get("backfill_windows") or {}
    if windows:
        for queue, spans in sorted(windows.items()):
            spans = spans if isinstance(spans, list) else [spans]
            text = ", ".join(f"{w.get('num_nodes')} nodes x {w.get('wall_time_min')} min" if isinstance(w, dict) else str(w) for w in spans)
            out.append(f"{'backfill:':16}{queue}: {text or 'none'}")
    elif "backfill_windows" in r:
        out.append(f"{'backfill:':16}no idle backfill windows reported")
    for sched_id, q in sorted((r.get("queued_jobs") or {}).items(), key=lambda kv: str(kv[0])):
        text = ", ".join(f"{k} {v}" for k, v in q.items() if k != "scheduler_id") if isinstance(q, dict) else str(q)
        out.append(f"{'queued job:':16}{sched_id} ({text})")
    for alias, url in sorted((r.get("transfer_locations") or {}).items()):
        out.append(f"{'transfers:':16}{alias} = {url}")
    return out


# ------------------------------------------------------------------------------------------- mv, rm, rename, rename-host
def _site_root(path: str) -> Path:
    """A site directory given by path (or by a registered name or id)."""
    from balsam.site import Registry, SiteLayout

    candidate = Path(path).expanduser().resolve()
    if SiteLayout(candidate).is_site() or candidate.exists() or "/" in path:
        return candidate
    return Path(Registry().lookup(path).path)


def _reset_api() -> None:
    from balsam._api import sites as _sites

    _sites.reset()


@site.command("mv")
@click.argument("src")
@click.argument("dest", type=click.Path(path_type=Path))
def site_mv(src: str, dest: Path) -> None:
    """Move a site directory; the registry and the site's DB follow.

    DEST may be an existing directory to move the site into, or the new path. Refused while the site
    agent runs or a launcher holds jobs.

    \b
    Example:
      balsam site mv ./my-site /lus/proj/sites/my-site
    """
    from balsam.site import move_site

    _reset_api()
    target = move_site(_site_root(src), dest)
    _reset_api()
    click.echo(f"Moved site to {target}")


@site.command("rm")
@click.argument("path")
@yes_option()
def site_rm(path: str, yes: bool) -> None:
    """Delete a site: its directory (jobs, data, logs) and its registration.

    Asks first unless -f; refused while the site agent runs or a launcher holds jobs.

    \b
    Example:
      balsam site rm ./old-site -f
    """
    from balsam.site import SiteLayout, refuse_away_from_home, remove_site, site_job_count

    root = _site_root(path)
    layout = SiteLayout(root)
    detail = "its registration"
    if layout.is_site():
        refuse_away_from_home(layout, "removed")
        njobs = site_job_count(root)
        detail = f"{njobs} jobs and everything under it"
    confirm(f"Delete the site at {root} ({detail})?", yes, f"not deleting {root} without confirmation")
    _reset_api()
    remove_site(root)
    _reset_api()
    click.echo(f"Deleted site {root}")


@site.command("rename")
@click.argument("path")
@click.argument("name")
def site_rename(path: str, name: str) -> None:
    """Rename a site (PATH: its directory, or its current name).

    \b
    Example:
      balsam site rename ./my-site polaris-prod
    """
    from balsam.site import rename_site

    _reset_api()
    old = rename_site(_site_root(path), name)
    _reset_api()
    click.echo(f"Renamed site {old!r} to {name!r}")


@site.command("rename-host")
@click.argument("path", required=False)
@click.option("--force", is_flag=True, help="Even if the agent's PID file says it runs on the old host (that host is gone).")
def site_rename_host(path: Optional[str], force: bool) -> None:
    """Make this host the site's home host (after the site moved to a new machine or login node).

    Only the home host may open a site's DB. PATH defaults to the site around the working directory.

    \b
    Example:
      cd /lus/proj/sites/my-site && balsam site rename-host
    """
    from balsam.site import find_site_root, rename_host

    root = _site_root(path) if path else find_site_root()
    if root is None:
        raise CLIError("not inside a site: give its PATH", 2)
    _reset_api()
    old, new = rename_host(root, force=force)
    _reset_api()
    click.echo(f"{root}: home host is now {new!r}" + (f" (was {old!r})" if old and old != new else ""))


# ------------------------------------------------------------------------------------------- sync, presets, sample-settings
@site.command("sync")
@click.option("--site", "sites", multiple=True, metavar="SITE", help="The site (default: the current site).")
def site_sync(sites: Sequence[str]) -> None:
    """Re-read settings.yml, validate it (and the scheduler type and job template it names), and refresh the
    site's policies (queues, projects, transfers).

    The DB keeps a copy of these policies, which 'queue submit' and job creation check against; the agent, the
    CLI and the API also re-read settings.yml by themselves when it changes (its modification time).

    \b
    Example:
      vi settings.yml && balsam site sync
    """
    from balsam.cli._common import one_site
    from balsam.settings import load_settings
    from balsam.site import check_site_settings, refresh_site_row, settings_stamp

    ref = one_site(sites, "site sync")
    stamp = settings_stamp(ref.layout)
    settings = load_settings(ref.layout.settings_path)
    from balsam.settings_aliases import notes_for_file

    for note in notes_for_file(ref.layout.settings_path):
        click.echo(f"note: settings.yml: {note}")
    check_site_settings(ref.path, settings)
    from balsam.site import transfer_location_notes

    for note in transfer_location_notes(settings):  # a bad URL is one clear error
        click.echo(f"note: settings.yml: {note}")
    refresh_site_row(ref.store, settings, stamp)
    queues = ", ".join(sorted(settings.scheduler.allowed_queues)) or "none"
    click.echo(f"Site {ref.name}: settings.yml is valid; policies refreshed (queues: {queues}; "
               f"projects: {', '.join(settings.scheduler.allowed_projects) or 'none'})")


@site.command("link")
@click.argument("url")
@click.option("--site", "sites", multiple=True, metavar="SITE", help="The site (default: the current site).")
def site_link(url: str, sites: Sequence[str]) -> None:
    """Link this site to the relay you are logged in to: its agent then syncs jobs and takes remote work.

    A site id the relay already knows from another site makes this site move to a free id first.

    \b
    Example:
      balsam login https://relay.example.org -u alice && balsam site link https://relay.example.org
    """
    from balsam._api import relay
    from balsam.cli._common import one_site
    from balsam.exceptions import BalsamError
    from balsam.site import agent_running

    ref = one_site(sites, "site link")
    try:
        link = relay.link(ref, url)
    except BalsamError as e:
        raise CLIError(f"cannot link site {ref.name} to {url}: {str(e).splitlines()[0]}", 1) from None
    if link.get("moved_from"):
        click.echo(f"Site id {link['moved_from']} is taken at the relay: site {ref.name} now has id {link['site_id']}.")
    click.echo(f"Site {ref.name} is linked to {link['url']} (as {link['user']}).")
    click.echo(f"Results read through the relay load on computers that trust this site's result key: "
               f"`balsam site key --site {ref.name}` prints it.")
    if agent_running(ref.layout):
        click.echo("Its running agent " + ("takes up the new id and " if link.get("moved_from") else "") + "starts syncing within a few seconds.")


@site.command("key")
@click.option("--trust", "trust", metavar="KEY", default=None,
              help="Keep a site's result key (the line `balsam site key` printed there; - reads it from stdin).")
@click.option("--label", default="", help="With --trust: a name to remember the key by (the site's name).")
@click.option("--revoke", "revoke", metavar="ID|LABEL", default=None,
              help="Stop trusting a key kept with --trust (its id, or the label given with it).")
@click.option("--site", "sites", multiple=True, metavar="SITE", help="The site (default: the current site).")
def site_key(trust: Optional[str], label: str, revoke: Optional[str], sites: Sequence[str]) -> None:
    """Print this site's result key, or keep another site's (--trust) on this computer.

    The site signs each run() result and exception it pushes to a relay with this key; a computer reading them
    through the relay loads (unpickles) only results signed with a key it holds. Do this once per computer.

    \b
    Example:
      balsam site key --site polaris                  # on the site's host: prints balsam-result-key-1:...
      balsam site key --trust balsam-result-key-1:... --label polaris   # on the laptop
      balsam site key --revoke polaris                # results signed with it no longer load here
    """
    from balsam.site import balsam_home
    from balsam.site import result_keys as rk

    if revoke is not None:
        try:
            gone = rk.revoke_key(revoke, balsam_home())
        except ValueError as e:
            raise CLIError(str(e), 2) from None
        click.echo(f"Result key {', '.join(gone)} is no longer trusted on this computer: results signed with it do not "
                   "load through the relay.")
        return

    if trust is not None:
        text = sys.stdin.read() if trust == "-" else trust
        try:
            kid, new = rk.trust_key(text, balsam_home(), label)
        except ValueError as e:
            raise CLIError(str(e), 2) from None
        click.echo(f"Result key {kid} is {'now' if new else 'already'} trusted on this computer: results signed with it "
                   "load through the relay.")
        return
    from balsam.cli._common import one_site

    ref = one_site(sites, "site key")
    if ref.via_relay:
        raise CLIError(f"site {ref.name} is reached through the relay here: run `balsam site key` on the site's host", 2)
    click.echo(rk.export_key(rk.site_key(ref.layout)))
    click.echo(f"On each other computer that reads site {ref.name}'s results through a relay, run once: "
               f"balsam site key --trust <the line above> --label {ref.name}", err=True)


@site.command("unlink")
@click.option("--site", "sites", multiple=True, metavar="SITE", help="The site (default: the current site).")
def site_unlink(sites: Sequence[str]) -> None:
    """Stop syncing this site with its relay (the site keeps working on its own).

    \b
    Example:
      balsam site unlink
    """
    from balsam._api import relay
    from balsam.cli._common import one_site

    ref = one_site(sites, "site unlink")
    click.echo(f"Site {ref.name} is no longer linked." if relay.unlink(ref) else f"Site {ref.name} was not linked.")


@site.command("presets")
@json_option()
def site_presets(as_json: bool) -> None:
    """List the machine presets 'site init --preset' accepts.

    \b
    Example:
      balsam site presets
    """
    rows = _presets()
    if as_json:
        echo_json([{"name": n, "machine": t, "scheduler": s, "mpi_launcher": m} for n, t, s, m in rows])
        return
    echo_table(["Preset", "Machine", "Scheduler", "MPI launcher"], rows, flex=["Machine"])


@site.command("sample-settings")
@click.option("--preset", help="Preset to print (default: the current site's preset, else local).")
def site_sample_settings(preset: Optional[str]) -> None:
    """Print a preset's settings.yml, to start a site's settings from.

    \b
    Example:
      balsam site sample-settings --preset polaris > settings.yml
    """
    from balsam.site import SiteLayout, find_site_root
    from balsam.site.presets import sample_settings

    if preset is None:
        root = find_site_root()
        preset = (SiteLayout(root).preset() if root is not None else None) or "local"
    click.echo(sample_settings(preset), nl=False)


# ------------------------------------------------------------------------------------------- globus-login
@site.command("globus-login")
@click.option("--site", "sites", multiple=True, metavar="SITE", help="The site (default: the current site).")
def site_globus_login(sites: Sequence[str]) -> None:
    """Log in to Globus for this site's transfers: open the URL it prints, then paste the code.

    The tokens are stored in the site's state folder with mode 0600 and refreshed when they expire.
    Needs globus-sdk (pip install 'balsam[globus]') and transfers.globus_client_id in settings.yml.

    \b
    Example:
      balsam site globus-login
    """
    from balsam.cli._common import one_site
    from balsam.settings import load_settings
    from balsam.site import globus_login

    ref = one_site(sites, "site globus-login")
    settings = load_settings(ref.layout.settings_path)
    path = globus_login(ref.layout, settings.transfers.globus_client_id, ask=lambda prompt: str(click.prompt(prompt)), say=click.echo)
    click.echo(f"Logged in to Globus; tokens stored in {path} (mode 0600).")
