"""``balsam service``: the site agent (Balsam 0.x names; ``balsam site start/stop/status`` are the same)."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import site_root, visible

site_option = click.option("--site", "site", metavar="SITE",
                           help="The site: a path, or a name or id of this host's sites (default: the one around the working directory).")


@click.group(cls=SuggestingGroup)
def service() -> None:
    """Run and inspect the site agent (processing, scheduler, autoscaling, cleanup).

    \b
    Example:
      balsam service start && balsam service status
    """


@service.command()
@site_option
def start(site: Optional[str]) -> None:
    """Start the site agent in the background.

    \b
    Example:
      cd my-site && balsam service start
    """
    from balsam.services.agent import AGENT_LOG, read_status, start_agent
    from balsam.site import SiteLayout

    root = site_root(site)
    pid = start_agent(root)
    url = read_status(SiteLayout(root)).get("api_url") or "(not reported)"
    click.echo(f"Started the site agent of {root} (pid {pid}); API listening at {url}; log: {root / 'log' / AGENT_LOG}")


@service.command()
@site_option
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait before killing it.")
def stop(site: Optional[str], timeout: float) -> None:
    """Stop the site agent (its leases are released; running batch jobs go on).

    \b
    Example:
      balsam service stop --site ~/my-site
    """
    from balsam.services.agent import stop_agent

    root = site_root(site)
    pid = stop_agent(root, timeout_s=timeout)
    click.echo(f"Stopped the site agent (pid {pid})" if pid else "The site agent is not running")


def _age(ts: Optional[float]) -> str:
    if not ts:
        return "never"
    return f"{time.time() - ts:.0f} s ago"


def format_status(status: Dict[str, Any]) -> str:
    """The agent status as lines for people."""
    lines = []
    if status.get("running"):
        started = dt.datetime.fromtimestamp(status.get("started", 0)).isoformat(timespec="seconds")
        lines.append(f"agent: running (pid {status.get('pid')} on {status.get('host')}, since {started}, updated {_age(status.get('updated'))})")
        if status.get("api_url"):
            lines.append(f"  API: {status['api_url']}")
    else:
        lines.append("agent: not running" + (" (last report " + _age(status.get("updated")) + ")" if status.get("updated") else ""))
    disk = status.get("disk") or {}
    if disk.get("full"):
        lines.append(f"disk: FULL ({disk.get('free_bytes', 0)} bytes free on {disk.get('path')}): nothing new can be "
                     "recorded until space is freed; the agent retries with backoff")
    if status.get("settings_error"):
        lines.append(f"settings.yml: {visible(str(status['settings_error']))}")
    for name, h in sorted(status.get("services", {}).items()):
        health = "ok" if not h.get("last_error") else "ERROR"
        backlog = "" if h.get("backlog") is None else f", backlog {h['backlog']}"
        lines.append(f"  {name:<16} {health:<5} last cycle {_age(h.get('last_cycle'))}, {h.get('cycles', 0)} cycles, "
                     f"{h.get('errors', 0)} errors{backlog}")
        if h.get("last_error"):
            lines.append(f"  {'':<16} last error: {visible(str(h['last_error']))}")  # a scheduler's or relay's words
        if h.get("failures_in_a_row"):
            lines.append(f"  {'':<16} failing for {_age(h.get('failing_since'))[:-4]} ({h['failures_in_a_row']} cycles in a row); "
                         f"retrying every {h.get('retry_in_s') or 0:.0f} s")
    return "\n".join(lines)


@service.command()
@site_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(site: Optional[str], as_json: bool) -> None:
    """Show whether the agent runs and each service's health, last cycle, backlog and errors.

    \b
    Example:
      balsam service status --json
    """
    from balsam._api.environment import node_hardware
    from balsam.services.agent import agent_status

    root = site_root(site)
    st = agent_status(root)
    st["node"] = node_hardware(root, os.environ)
    st["logs"] = log_locations(root)
    if as_json:
        click.echo(json.dumps(st, indent=1))
        return
    click.echo(format_status(st))
    for key, label in (("mpi", "MPI"), ("gpus", "GPUs"), ("warning", "warning")):
        if key in st["node"]:
            click.echo(f"{label}: {st['node'][key]}")
    click.echo("Logs:")
    width = max(len(what) for what in st["logs"]) + 2  # the longest label keeps a space before its path
    for what, where in st["logs"].items():
        click.echo(f"  {what + ':':{width}}{where}")


def log_locations(root: Path) -> Dict[str, str]:
    """Where each log is (Balsam 0.7's docs find them as service*.log, mpi_mode*.log, serial_mode*.log)."""
    from balsam.services.agent import AGENT_LOG

    log = root / "log"
    return {
        "site agent": str(log / AGENT_LOG),
        "mpi-mode launchers": str(log / "mpi_mode_*.log"),
        "serial-mode launchers": str(log / "serial_mode_*.log"),
        "batch scripts": str(root / "qsubmit"),
        "hooks": str(root / "data" / "<workdir>" / "balsam.log"),
        "jobs": str(root / "data" / "<workdir>" / "job.out"),
    }


@service.command(hidden=True)
@site_option
def run(site: Optional[str]) -> None:
    """Run the site agent in the foreground (what ``start`` runs in the background)."""
    from balsam.services.agent import run_agent

    raise SystemExit(run_agent(site_root(site)))
