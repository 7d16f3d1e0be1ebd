"""``balsam transfer``: list the stage-in and stage-out items of jobs (thin over TransferItem)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import CLIError, echo_json, echo_table, format_time, json_option, scope_sites, site_option
from balsam.states import TransferItemState

if TYPE_CHECKING:
    from balsam._api.models import TransferItem
    from balsam._api.sites import SiteRef

ITEM_STATES = tuple(state.value for state in TransferItemState)
PROTOCOLS = ("local", "rsync", "globus")


@click.group(cls=SuggestingGroup)
def transfer() -> None:
    """Show the data staged in and out of jobs (the transfer service moves it).

    \b
    Example:
      balsam transfer ls -s error
    """


def protocol_of(url: str) -> str:
    """The protocol of a transfer_locations URL (local, rsync or globus; '' if unknown)."""
    text = str(url).strip()
    if text.startswith("rsync://"):
        return "rsync"
    if text.startswith("globus://"):
        return "globus"
    if text in ("local", "cp", "cp://", "file://"):
        return "local"
    return ""


def site_locations(refs: Sequence["SiteRef"]) -> Dict[int, Dict[str, str]]:
    """Each site's alias -> URL map."""
    from balsam._api.models import Site

    return {int(s.id or 0): dict(s.transfer_locations) for s in Site.objects.filter(id=[r.id for r in refs])}


def item_dict(t: "TransferItem", url: str = "") -> Dict[str, Any]:
    """A transfer item as plain data (what --json prints)."""
    return {"id": t.id, "job_id": t.job_id, "direction": t.direction, "slot": t.slot, "state": t.state,
            "location_alias": t.location_alias, "protocol": protocol_of(url), "remote_path": t.remote_path,
            "local_path": t.local_path, "recursive": t.recursive, "task_id": t.task_id, "transfer_info": t.transfer_info,
            "last_update": t.last_update}


def item_rows(items: Sequence["TransferItem"]) -> List[List[Any]]:
    """Table rows: what, where, state, task, and the reason or the rate."""
    rows = []
    for t in items:
        info = t.transfer_info or {}
        note = info.get("error") or info.get("last_error") or info.get("status") or ""
        if not note and info.get("bytes_per_s"):
            note = f"{info.get('bytes', 0)} B at {info['bytes_per_s']:.0f} B/s"
        arrow = "<-" if t.direction == "in" else "->"
        rows.append([t.id, t.job_id, t.slot, f"{t.local_path} {arrow} {t.location_alias}:{t.remote_path}", t.state,
                     t.task_id or "-", note])
    return rows


TABLE_HEADERS = ["ID", "Job", "Slot", "Transfer", "State", "Task", "Note"]


@transfer.command("ls")
@click.option("-s", "--state", "states", multiple=True, type=click.Choice(ITEM_STATES), help="Items in this state (repeatable).")
@click.option("-d", "--direction", type=click.Choice(["in", "out"]), help="Stage-in or stage-out items only.")
@click.option("-p", "--protocol", type=click.Choice(PROTOCOLS), help="Items whose location uses this protocol.")
@click.option("-j", "--job", "job_ids", multiple=True, type=int, help="Items of this job (repeatable).")
@click.option("-n", "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="Show at most this many (0: all).")
@site_option()
@json_option()
def transfer_ls(states: Tuple[str, ...], direction: Optional[str], protocol: Optional[str], job_ids: Tuple[int, ...],
                limit: int, sites: Sequence[str], as_json: bool) -> None:
    """List transfer items with their state and task id (the error or the rate in the last column).

    \b
    Examples:
      balsam transfer ls
      balsam transfer ls -s error -d in
      balsam transfer ls --protocol globus --json
    """
    from balsam._api.models import TransferItem

    refs, scope = scope_sites(sites)
    locations = site_locations(refs)
    filters: Dict[str, Any] = dict(scope)
    if states:
        filters["state"] = list(states)
    if direction:
        filters["direction"] = direction
    if job_ids:
        filters["job_id"] = list(job_ids)
    if protocol:
        if not any(protocol_of(u) == protocol for urls in locations.values() for u in urls.values()):
            raise CLIError(f"no transfer location uses {protocol} (settings.yml transfers.transfer_locations)", 1)
        filters["protocol"] = protocol
    query = TransferItem.objects.filter(**filters).order_by("id")
    items = list(query[:limit]) if limit else list(query)
    if as_json:
        echo_json([item_dict(t, locations.get(t.site_id or 0, {}).get(t.location_alias, "")) for t in items])
        return
    if not items:
        click.echo("No transfer items match." if len(filters) > len(scope) else "No transfer items.")
        return
    echo_table(TABLE_HEADERS, item_rows(items), flex=["Transfer", "Note"])
    shown_all = not limit or len(items) < limit
    if not shown_all:
        click.echo(f"... {query.count() - len(items)} more (show them with -n 0, or narrow with filters)")
    last = max((t.last_update for t in items if t.last_update is not None), default=None)
    if last is not None:
        click.echo(f"Last change: {format_time(last)}")
