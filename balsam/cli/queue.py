"""``balsam queue``: submit, list and cancel BatchJobs (pilot allocations the site agent submits)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import (
    CLIError,
    echo_json,
    echo_queued,
    echo_table,
    format_kv,
    format_time,
    json_option,
    kv_option,
    note_if_agent_stopped,
    one_site,
    plural,
    scope_sites,
    site_option,
)
from balsam.states import BATCH_ACTIVE_STATES, BATCH_LISTED_STATES, BatchJobState

B = BatchJobState


@click.group(cls=SuggestingGroup)
def queue() -> None:
    """Submit, list and cancel BatchJobs (pilot allocations that run launchers).

    \b
    Examples:
      balsam queue submit -n 1 -t 10 -q local -A local -j mpi
      balsam queue ls
      balsam queue term 3
    """


def batch_job_dict(b: Any, site_name: Optional[str]) -> Dict[str, Any]:
    """A BatchJob as plain data."""
    return {"id": b.id, "site": site_name, "site_id": b.site_id, "scheduler_id": b.scheduler_id, "project": b.project, "queue": b.queue,
            "num_nodes": b.num_nodes, "wall_time_min": b.wall_time_min, "job_mode": b.job_mode, "filter_tags": b.filter_tags,
            "partitions": b.partitions, "optional_params": b.optional_params, "state": b.state, "status_info": b.status_info,
            "start_time": b.start_time, "end_time": b.end_time, "created": b.created}


@queue.command("submit")
@click.option("-n", "--num-nodes", type=click.IntRange(min=1), required=True, help="Nodes to allocate.")
@click.option("-t", "--wall-time-min", type=click.IntRange(min=1), required=True, help="Wall time in minutes.")
@click.option("-q", "--queue", "queue_name", help="Scheduler queue (default: the site's only queue).")
@click.option("-A", "--project", help="Project to charge (default: the site's only project).")
@click.option("-j", "--job-mode", type=click.Choice(["mpi", "serial"]), default="mpi", show_default=True,
              help="Launcher mode: mpi (any job) or serial (many single-node jobs).")
@kv_option("-tag", "--tag", "filter_tags", help="Run only jobs having tag KEY=VALUE")  # -tag: Balsam 0.7's spelling
@click.option("-p", "--part", "partitions", multiple=True, metavar="MODE:NODES[:K=V,...]",
              help="A partition of the allocation with its own mode and tags (repeatable; nodes must add up to -n).")
@kv_option("-x", "--extra-param", "optional_params", help="Extra job-template parameter KEY=VALUE")
@click.option("--dry-run", is_flag=True, help="Print the batch script and the scheduler command line; submit nothing.")
@site_option("The site (default: the current site).")
@json_option()
def queue_submit(num_nodes: int, wall_time_min: int, queue_name: Optional[str], project: Optional[str], job_mode: str,
                 filter_tags: Dict[str, str], partitions: Tuple[str, ...], optional_params: Dict[str, str], dry_run: bool,
                 sites: Sequence[str], as_json: bool) -> None:
    """Ask the site agent to submit a BatchJob (checked against the site's queues and projects first).

    \b
    Examples:
      balsam queue submit -n 1 -t 10 -q local -A local -j mpi
      balsam queue submit -n 128 -t 60 -q prod -A MyProj -j serial --tag workflow=sweep
      balsam queue submit -n 4 -t 30 -q debug -A MyProj -p mpi:1:role=leader -p serial:3:role=worker
      balsam queue submit -n 1 -t 10 --dry-run                        (show the script and sbatch/qsub line)
      balsam submit-launch -n 2 -t 20 -q debug -A MyProj -j mpi      (the Balsam 0.x name)
    """
    from balsam.api import BatchJob

    ref = one_site(sites, "queue submit")
    if dry_run:
        draft = BatchJob(num_nodes=num_nodes, wall_time_min=wall_time_min, job_mode=job_mode, queue=queue_name, project=project,
                         optional_params=optional_params, filter_tags=filter_tags, partitions=list(partitions) or None,
                         site_id=ref.id)
        draft.validate()
        _show_submission(ref, draft, None, as_json,
                         f"Dry run: nothing was submitted. BatchJob {{id}} at site {ref.name} would be submitted as:")
        return
    bj = BatchJob.objects.create(num_nodes=num_nodes, wall_time_min=wall_time_min, job_mode=job_mode, queue=queue_name, project=project,
                                 optional_params=optional_params, filter_tags=filter_tags, partitions=list(partitions) or None,
                                 site_id=ref.id)
    if bj.queued is not None:  # the relay keeps it for its offline site
        if as_json:
            echo_json({"site": ref.name, "queued_command": bj.queued_command})
        else:
            echo_queued([bj.queued])
        return
    if as_json:
        echo_json(batch_job_dict(bj, ref.name))
        return
    click.echo(f"Submitted BatchJob {bj.id} at site {ref.name}: {plural(bj.num_nodes, 'node')}, {bj.wall_time_min} min, {bj.job_mode} mode, "
               f"queue {bj.queue}, project {bj.project} ({bj.state}; the site agent submits it)")
    note_if_agent_stopped(ref, "it waits in pending_submission")


def _show_submission(ref: Any, bj: Any, bj_id: Optional[int], as_json: bool, heading: str) -> None:
    """Print the batch script and scheduler command line the agent would use for ``bj`` (id ``bj_id``; None: new)."""
    import shlex

    from balsam._api.diagnosis import preview_submission

    preview = preview_submission(bj, bj_id)
    bj_id, text, path, argv = preview.batch_job_id, preview.script, preview.script_path, preview.command
    if as_json:
        echo_json({"batch_job_id": bj_id, "site": ref.name, "script_path": str(path), "script": text, "command": argv})
        return
    click.echo(f"# {heading.format(id=bj_id)}")
    click.echo(f"# {shlex.join(argv)}")
    click.echo(f"# ---- {path} ----")
    click.echo(text.rstrip("\n"))


@queue.command("show")
@click.argument("batch_job_id", type=int)
@site_option()
@json_option()
def queue_show(batch_job_id: int, sites: Sequence[str], as_json: bool) -> None:
    """Show the batch script a BatchJob was submitted with (or, before submission, the one it will get).

    \b
    Examples:
      balsam queue show 3
      balsam queue show 3 --json
    """
    from pathlib import Path

    from balsam._api import sites as site_refs
    from balsam.api import BatchJob

    refs, scope = scope_sites(sites)
    found = list(BatchJob.objects.filter(id=batch_job_id, **scope)[:2])
    if not found:  # Balsam 0.7's 'queue term SCHED_ID': the id the scheduler gave it (qstat, squeue)
        found = list(BatchJob.objects.filter(scheduler_id=batch_job_id, **scope)[:2])
    if not found:
        raise CLIError(f"no BatchJob {batch_job_id} at {', '.join(r.name for r in refs)} (see 'balsam queue ls --history')", 1)
    if len(found) > 1:
        raise CLIError(f"BatchJob {batch_job_id} exists at several sites: choose one with --site", 2)
    bj = found[0]
    ref = next(r for r in refs if r.id == bj.site_id) if any(r.id == bj.site_id for r in refs) else site_refs.resolve(str(bj.site_id))
    submitted = (bj.status_info or {}).get("submit_script")
    if not submitted:
        _show_submission(ref, bj, int(bj.id), as_json, f"BatchJob {{id}} ({bj.state}) is not submitted yet; it would be submitted as:")
        return
    path = Path(submitted)
    try:
        text = path.read_text()
    except OSError as exc:
        raise CLIError(f"BatchJob {bj.id} was submitted with {path}, which cannot be read now: {exc.strerror or exc}", 1) from None
    if as_json:
        echo_json({"batch_job_id": bj.id, "site": ref.name, "state": bj.state, "scheduler_id": bj.scheduler_id,
                   "script_path": str(path), "script": text})
        return
    click.echo(f"# BatchJob {bj.id} ({bj.state}, scheduler id {bj.scheduler_id}) was submitted with {path}:")
    click.echo(text.rstrip("\n"))


@queue.command("ls")
@click.option("-h", "--history", is_flag=True, help="Include finished and failed BatchJobs (newest first).")
@click.option("-n", "--num", "limit", type=click.IntRange(min=0), default=50, show_default=True, help="With --history, at most this many (0: all).")
@click.option("--scheduler-id", "--scheduler_id", "scheduler_id", type=int, help="Only the BatchJob with this scheduler id.")
@click.option("-v", "--verbose", is_flag=True, help="Show every field (partitions, status info, times).")
@site_option()
@json_option()
def queue_ls(history: bool, limit: int, scheduler_id: Optional[int], verbose: bool, sites: Sequence[str], as_json: bool) -> None:
    """List BatchJobs: the active ones, or all of them with --history.

    \b
    Examples:
      balsam queue ls
      balsam queue ls --history -n 10 --json
    """
    from balsam.api import BatchJob

    refs, scope = scope_sites(sites)
    filters: Dict[str, Any] = dict(scope)
    if not history:
        filters["state"] = sorted(BATCH_LISTED_STATES)
    if scheduler_id is not None:
        filters["scheduler_id"] = scheduler_id
    query = BatchJob.objects.filter(**filters).order_by("-id")
    items: List[Any] = list(query[:limit] if history and limit else query)
    names = {r.id: r.name for r in refs}
    if as_json:
        echo_json([batch_job_dict(b, names.get(b.site_id or 0)) for b in items])
        return
    if not items:
        click.echo("No BatchJobs" + ("." if history else " active (see --history)."))
        return
    if verbose:
        for b in items:
            d = batch_job_dict(b, names.get(b.site_id or 0))
            click.echo(f"BatchJob {d.pop('id')}")
            width = max(len(k) for k in d) + 2  # 'optional_params:' keeps a space before its value
            for k, v in d.items():
                if v not in (None, {}, []):
                    click.echo(f"  {k + ':':{width}}{format_time(v) if hasattr(v, 'astimezone') else v}")
        return
    multi = len(refs) > 1
    rows = []
    for b in items:
        info = b.status_info or {}
        note = info.get("error") or info.get("message") or ""
        rows.append([b.id, *([names.get(b.site_id or 0)] if multi else []), b.scheduler_id, b.queue, b.project, b.num_nodes,
                     b.wall_time_min, b.job_mode, b.state, format_kv(b.filter_tags), format_time(b.start_time), note])
    echo_table(["ID", *(["Site"] if multi else []), "Sched ID", "Queue", "Project", "Nodes", "Minutes", "Mode", "State", "Tags",
                "Started", "Info"], rows, flex=["Tags", "Info", "Project"])


def _cancel(batch_job_id: int, sites: Sequence[str], delete_inactive: bool) -> None:
    from balsam.api import BatchJob

    refs, scope = scope_sites(sites)
    found = list(BatchJob.objects.filter(id=batch_job_id, **scope)[:2])
    if not found:  # Balsam 0.7's 'queue term SCHED_ID': the id the scheduler gave it (qstat, squeue)
        found = list(BatchJob.objects.filter(scheduler_id=batch_job_id, **scope)[:2])
    if not found:
        raise CLIError(f"no BatchJob {batch_job_id} at {', '.join(r.name for r in refs)} (see 'balsam queue ls --history')", 1)
    if len(found) > 1:
        raise CLIError(f"BatchJob {batch_job_id} exists at several sites: choose one with --site", 2)
    bj = found[0]
    if bj.state in BATCH_ACTIVE_STATES:
        bj.state = B.pending_deletion.value
        bj.save()
        if echo_queued([bj.queued]):
            return
        click.echo(f"BatchJob {bj.id} marked for deletion: the site agent cancels it" +
                   (f" (scheduler id {bj.scheduler_id})" if bj.scheduler_id else "") + "; its running jobs end as RUN_TIMEOUT")
    elif bj.state == B.pending_deletion:
        click.echo(f"BatchJob {bj.id} is already marked for deletion")
    elif delete_inactive:
        bj.delete()
        if not echo_queued([bj.queued]):
            click.echo(f"Deleted the record of BatchJob {bj.id} ({bj.state})")
    else:
        raise CLIError(f"BatchJob {bj.id} is {bj.state}: nothing to cancel", 1)


@queue.command("term")
@click.argument("batch_job_id", type=int)
@site_option()
def queue_term(batch_job_id: int, sites: Sequence[str]) -> None:
    """Cancel a BatchJob: the site agent deletes it from the scheduler (ID as in 'queue ls', or its scheduler id).

    \b
    Example:
      balsam queue term 3
    """
    _cancel(batch_job_id, sites, delete_inactive=False)


@queue.command("rm")
@click.argument("batch_job_id", type=int)
@site_option()
def queue_rm(batch_job_id: int, sites: Sequence[str]) -> None:
    """Cancel an active BatchJob like 'term', or delete the record of a finished one.

    \b
    Example:
      balsam queue rm 3
    """
    _cancel(batch_job_id, sites, delete_inactive=True)
