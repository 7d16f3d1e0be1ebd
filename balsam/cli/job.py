"""``balsam job``: create (one, or many from a file), list, show, modify, reset, kill, remove jobs; add
dependencies; read a job's output.

Every state change goes through the store's state machine (a refused transition is a one-line error and
nothing is written). ``job ls --by-state`` counts in SQL and never loads jobs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import click

from balsam.cli import SuggestingGroup, did_you_mean
from balsam.cli._common import (
    CLIError,
    color_state,
    confirm,
    echo_json,
    echo_queued,
    echo_table,
    format_kv,
    format_time,
    is_interactive,
    job_filter_options,
    job_filters,
    json_option,
    kv_option,
    note_if_agent_stopped,
    one_site,
    plural,
    progress,
    render_table,
    scope_sites,
    site_option,
    state_option,
    visible,
    working,
    yes_option,
)
from balsam.states import DISPLAY_ORDER, DONE_STATES, RESET_DEFAULT_STATES, JobState

S = JobState

if TYPE_CHECKING:
    from balsam._api.jobs import Job
    from balsam._api.sites import SiteRef

BULK_CHUNK = 10_000
PROGRESS_MIN = 2000  # selections at least this large show a counter on a terminal


@click.group(cls=SuggestingGroup)
def job() -> None:
    """Create, list, modify, reset, kill and remove jobs.

    \b
    Examples:
      balsam job create -a Hello -w demo/hello -p say_hello_to=world
      balsam job ls --tag experiment=xyz --state FAILED
      balsam job reset -s FAILED -y
    """


# ------------------------------------------------------------------------------------------- helpers
def _app_names(refs: Sequence["SiteRef"]) -> Dict[Tuple[int, int], str]:
    out: Dict[Tuple[int, int], str] = {}
    for ref in refs:
        for app_id, name in ref.backend.select("app", {}, columns=("id", "name")):
            out[(ref.id, app_id)] = name
    return out


def job_dict(j: "Job", app_name: Optional[str] = None, site_name: Optional[str] = None) -> Dict[str, Any]:
    """A job as plain data (what --json prints)."""
    return {
        "id": j.id, "site": site_name, "site_id": j.site_id, "app": app_name, "app_id": j.app_id, "workdir": j.workdir,
        "state": j.state, "tags": j.tags, "parameters": j.parameters, "data": j.data, "num_nodes": j.num_nodes,
        "ranks_per_node": j.ranks_per_node, "threads_per_rank": j.threads_per_rank, "threads_per_core": j.threads_per_core,
        "gpus_per_rank": j.gpus_per_rank, "node_packing_count": j.node_packing_count, "launch_params": j.launch_params,
        "wall_time_min": j.wall_time_min, "parent_ids": j.parent_ids, "batch_job_id": j.batch_job_id,
        "return_code": j.return_code, "pending_file_cleanup": j.pending_file_cleanup, "created": j.created,
        "last_update": j.last_update,
    }


def _echo_fields(d: Dict[str, Any], indent: str = "") -> None:
    width = max((len(k) for k in d), default=0) + 2
    for key, value in d.items():
        if value is None or value == {} or value == []:
            continue
        if hasattr(value, "astimezone"):
            value = format_time(value)
        elif isinstance(value, dict):
            value = json.dumps({str(k): v for k, v in value.items()}, default=str, ensure_ascii=False)
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        click.echo(f"{indent}{key + ':':{width}}{visible(str(value))}")


def _query(sites: Sequence[str], filters: Dict[str, Any]) -> Tuple[List["SiteRef"], Any]:
    from balsam._api.jobs import Job  # not balsam.api: listing jobs need not load the app machinery

    refs, scope = scope_sites(sites)
    return refs, Job.objects.filter(**scope, **filters)


def _require_selection(filters: Dict[str, Any], all_jobs: bool, what: str) -> None:
    if not filters and not all_jobs:
        raise click.UsageError(f"say which jobs to {what}: give ids, or filters (--tag, -s, -w, -a), or --all for every job")


def _get_job(job_id: int, sites: Sequence[str]) -> Tuple["Job", List["SiteRef"]]:
    from balsam.api import Job

    refs, scope = scope_sites(sites)
    found = list(Job.objects.filter(id=job_id, **scope)[:2])
    where = ", ".join(r.name for r in refs)
    if not found:
        raise CLIError(f"no job {job_id} at {'site ' if len(refs) == 1 else 'sites '}{where}", 1)
    if len(found) > 1:
        raise CLIError(f"job {job_id} exists at several sites ({where}): choose one with --site", 2)
    return found[0], refs


def _id_args(f: Any) -> Any:
    return click.argument("job_ids", nargs=-1, type=int, metavar="[ID]...")(f)


# ------------------------------------------------------------------------------------------- create
def _typed_params(params: Dict[str, Any], kind: str) -> Dict[str, Any]:
    """Parameters typed on the command line or in CSV are text: a Python app gets JSON values where the text
    parses as JSON (x=3 is the number 3, x='"3"' the string); a shell app gets the text."""
    if kind != "python":
        return dict(params)
    out: Dict[str, Any] = {}
    for k, v in params.items():
        try:
            out[k] = json.loads(v) if isinstance(v, str) else v
        except (ValueError, RecursionError):  # not JSON (or nested past the recursion limit): the text itself
            out[k] = v
    return out


def _find_app(key: str) -> Tuple[int, str, str]:
    """(id, name, kind) of an app of the current site, by name, id, or Balsam 0.7's class path ``module.ClassName``
    (``balsam job create -a demo.Hello``: an app is named by its class)."""
    from balsam.api import App

    name = key.rsplit(".", 1)[1] if "." in key and not key.isdigit() else key
    found = (App.objects.filter(id=int(key)) if key.isdigit() else App.objects.filter(name=name)).first()
    if found is None:
        names = [a.name for a in App.objects.order_by("name")]
        raise CLIError(f"no app {key!r} here{did_you_mean(name, names)} (apps: {', '.join(names) or 'none'}); "
                       "define it and run 'balsam app sync FILE'", 1)
    return int(found.id or 0), found.name, found.kind


RESOURCE_FLAGS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count",
                  "wall_time_min")


@job.command("create")
@click.option("-w", "--workdir", help="Working directory, relative to the site's data/ folder.")
@click.option("-a", "--app", help="App name or id.")
@kv_option("-p", "--param", "params", help="App parameter NAME=VALUE", metavar="NAME=VALUE")
@kv_option("-tag", "--tag", "tags", help="Tag the job KEY=VALUE")  # -tag: Balsam 0.7's spelling
@click.option("--workflow", metavar="NAME", help="Shortcut for --tag workflow=NAME.")
@click.option("-n", "--num-nodes", type=int, help="Nodes per run [1].")
@click.option("-rpn", "--ranks-per-node", type=int, help="MPI ranks per node [1].")
@click.option("-tpr", "--threads-per-rank", type=int, help="Threads per rank [1].")
@click.option("-tpc", "--threads-per-core", type=int, help="Hardware threads per core [1].")
@click.option("-g", "--gpus-per-rank", type=float, help="GPUs per rank, may be a fraction [0].")
@click.option("-npc", "--node-packing-count", type=int, help="Most jobs of this kind sharing a node [1].")
@kv_option("-lp", "--launch-param", "launch_params", help="Pass-through MPI launcher option KEY=VALUE")
@click.option("-t", "--wall-time-min", type=int, help="Estimated run time in minutes, used to fit jobs into allocations [0].")
@click.option("-pid", "--parent-id", "parent_ids", type=int, multiple=True, metavar="ID", help="Run after this job finishes (repeatable).")
@kv_option("-s", "--stage-data", "transfers", help="Transfer slot SLOT=ALIAS:PATH", metavar="SLOT=ALIAS:PATH")
@click.option("--from", "from_file", metavar="FILE", help="Create many jobs from a YAML, CSV or JSONL file ('-' for stdin).")
@click.option("--format", "file_format", type=click.Choice(["yaml", "csv", "jsonl", "json"]), help="Format of --from (default: by extension).")
@site_option("The site (default: the current site).")
@yes_option("Create without showing the job and asking.")
@json_option()
def job_create(workdir: Optional[str], app: Optional[str], params: Dict[str, str], tags: Dict[str, str], workflow: Optional[str],
               launch_params: Dict[str, str], parent_ids: Tuple[int, ...], transfers: Dict[str, str], from_file: Optional[str],
               file_format: Optional[str], sites: Sequence[str], yes: bool, as_json: bool, **resources: Any) -> None:
    """Create a job, or many jobs from a file (--from).

    Without -y, the job is shown and confirmed on a terminal. With --from, each record of the file has the
    same fields as these flags (by long name: workdir, app, parameters, tags, num_nodes, ...); flags given
    here are defaults for records that lack them. All jobs are created in one transaction, or none.

    \b
    Examples:
      balsam job create -a Hello -w demo/hello -p say_hello_to=world --tag experiment=demo -y
      balsam job create -a Sim -w runs/big -n 4 -rpn 64 -t 30 -pid 12
      balsam job create --from jobs.csv -a Hello
    """
    ref = one_site(sites, "job create")
    if workflow:
        tags = dict(tags, workflow=workflow)
    given = {k: v for k, v in resources.items() if v is not None}
    if from_file is not None:
        if workdir is not None:
            raise click.UsageError("--from and -w/--workdir do not go together: each record of the file names its workdir")
        _bulk_create(ref, from_file, file_format, app, params, tags, launch_params, parent_ids, transfers, given, as_json)
        return
    if not workdir or not app:
        raise click.UsageError("give -w/--workdir and -a/--app (or --from FILE)")
    from balsam.api import Job

    app_id, app_name, kind = _find_app(app)
    new = Job(workdir, app_id=app_id, tags=tags, parameters=_typed_params(params, kind), launch_params=launch_params,
              parent_ids=list(parent_ids), transfers=dict(transfers) or None, **given)
    new.validate()
    if not yes and is_interactive():
        click.echo(f"New job at site {ref.name}:")
        _echo_fields({"app": app_name, "workdir": new.workdir, "parameters": new.parameters, "tags": new.tags,
                      **{k: getattr(new, k) for k in RESOURCE_FLAGS}, "launch_params": new.launch_params,
                      "parent_ids": new.parent_ids, "transfers": dict(transfers)}, "  ")
        if not click.confirm("Create it?", default=True):
            raise CLIError("nothing created", 1)
    new.save()
    if new.queued_command is not None:
        if as_json:
            echo_json({"site": ref.name, "workdir": str(new.workdir), "queued_command": new.queued_command})
            return
        click.echo(f"Job {app_name} in {new.workdir} {new.queued.message if new.queued else ''}")
        return
    if as_json:
        echo_json(job_dict(new, app_name, ref.name))
        return
    click.echo(f"Created job {new.id} ({new.state}) at site {ref.name}: {app_name} in {new.workdir}")
    note_if_agent_stopped(ref, f"it waits in {new.state}")


def _bulk_create(ref: "SiteRef", path: str, fmt: Optional[str], app: Optional[str], params: Dict[str, str], tags: Dict[str, str],
                 launch_params: Dict[str, str], parent_ids: Tuple[int, ...], transfers: Dict[str, str], resources: Dict[str, Any],
                 as_json: bool) -> None:
    from balsam.api import Job
    from balsam.exceptions import ValidationError
    from balsam.runtime import paused_gc

    with paused_gc():  # 100k records make millions of objects: collections would walk them again and again
        jobs, lines = _build_jobs(ref, path, fmt, app, params, tags, launch_params, parent_ids, transfers, resources)
    import contextlib

    # All or nothing: one transaction on the home host; elsewhere, one request (the agent's one transaction).
    atomic = ref.store.write() if ref.is_home else contextlib.nullcontext()
    step = BULK_CHUNK if ref.is_home else max(1, len(jobs))
    with progress(len(jobs), f"Creating {len(jobs)} jobs", quiet=as_json) as advance, atomic:
        for start in range(0, len(jobs), step):
            chunk = jobs[start : start + step]
            try:
                Job.objects.bulk_create(chunk)
            except ValidationError as exc:
                raise _locate(path, exc, chunk, lines) from None
            advance(len(chunk))
    queued = sorted({j.queued_command for j in jobs if j.queued_command is not None})
    if queued:
        if as_json:
            echo_json({"site": ref.name, "queued": len(jobs), "queued_commands": queued})
            return
        from balsam._api.queued import QueuedWrite

        handles: Dict[int, Any] = {}
        for j in jobs:
            h = j.queued
            if h is not None:
                handles.setdefault(h.command_id, QueuedWrite(ref, h.command_id, "", h.message)).rows += 1
        for h in handles.values():
            h.what = plural(h.rows, "job")
        echo_queued(handles.values())
        return
    if as_json:
        echo_json({"site": ref.name, "created": len(jobs), "first_id": jobs[0].id, "last_id": jobs[-1].id})
        return
    ids = f"id {jobs[0].id}" if len(jobs) == 1 else f"ids {jobs[0].id}-{jobs[-1].id}"
    click.echo(f"Created {plural(len(jobs), 'job')} at site {ref.name} ({ids})")
    note_if_agent_stopped(ref, "they wait")


def _build_jobs(ref: "SiteRef", path: str, fmt: Optional[str], app: Optional[str], params: Dict[str, str], tags: Dict[str, str],
                launch_params: Dict[str, str], parent_ids: Tuple[int, ...], transfers: Dict[str, str],
                resources: Dict[str, Any]) -> Tuple[List["Job"], Dict[str, str]]:
    """Job objects for every record of the file, and each workdir's line; a bad record is a usage error naming its line."""
    from balsam.api import Job
    from balsam.cli import _jobfile

    fmt = _jobfile.detect_format(path, fmt)
    if sys.stderr.isatty() and path != "-" and os.path.isfile(path) and os.path.getsize(path) > 5_000_000:
        click.echo(f"Reading {path} ...", err=True)  # parsing a big YAML file takes seconds before the bar starts
    records = _jobfile.read_records(path, fmt)
    if not records:
        raise CLIError(f"{path}: no job records in it", 2)
    apps: Dict[str, Tuple[int, str, str]] = {}
    jobs: List[Job] = []
    lines: Dict[str, str] = {}
    with progress(len(records), "Reading jobs") as advance:
        for n, (where, record) in enumerate(records, 1):
            try:
                fields = _jobfile.normalize(record)
                key = str(fields.pop("app", None) or app or "")
                if not key:
                    raise ValueError("no app: give an 'app' field, or -a APP for every record")
                info = apps.get(key)
                if info is None:
                    info = apps[key] = _find_app(key)
                if "workdir" not in fields:
                    raise ValueError("no workdir field")
                kind = info[2]
                record_params = _typed_params(params, kind)
                own = fields.pop("parameters", {})
                record_params.update(_typed_params(own, kind) if fmt == "csv" else own)
                kwargs = dict(resources)
                kwargs.update(tags=dict(tags, **fields.pop("tags", {})), launch_params=dict(launch_params, **fields.pop("launch_params", {})),
                              parent_ids=fields.pop("parent_ids", list(parent_ids)),
                              transfers=dict(transfers, **fields.pop("transfers", {})) or None)
                kwargs.update(fields)
                new = Job(kwargs.pop("workdir"), app_id=info[0], parameters=record_params, **kwargs)
            except CLIError as exc:
                raise CLIError(f"{path} {where}: {exc.message}", 2) from None
            except (ValueError, TypeError) as exc:
                raise CLIError(f"{path} {where}: {exc}", 2) from None
            if new.workdir in lines:
                raise CLIError(f"{path} {where}: workdir {new.workdir!r} is already used by the job on {lines[new.workdir]}", 2)
            lines[new.workdir] = where
            jobs.append(new)
            if n % 1000 == 0:
                advance(1000)
        advance(len(records) % 1000)
    return jobs, lines


def _locate(path: str, exc: Exception, chunk: List["Job"], lines: Dict[str, str]) -> CLIError:
    """Name the record that made bulk creation fail (only runs on the error path)."""
    import re

    from balsam.api import Job
    from balsam.exceptions import ValidationError

    for j in chunk:
        try:
            j.validate()
        except ValidationError as bad:
            return CLIError(f"{path} {lines[j.workdir]}: {bad}", 2)
    taken = Job.objects.filter(workdir=[j.workdir for j in chunk]).first()
    if taken is not None and taken.workdir in lines:
        return CLIError(f"{path} {lines[taken.workdir]}: workdir {taken.workdir!r} is already used by job {taken.id}", 2)
    m = re.search(r"parent job (\d+)", str(exc))
    if m:
        pid = int(m.group(1))
        for j in chunk:
            if pid in j.parent_ids:
                return CLIError(f"{path} {lines[j.workdir]}: {exc}", 2)
    named = re.match(r"job '([^']*)': ", str(exc))  # the store's own checks name the job by its workdir
    if named and named.group(1) in lines:
        return CLIError(f"{path} {lines[named.group(1)]}: {exc}", 2)
    return CLIError(f"{path}: {exc}", 2)


# ------------------------------------------------------------------------------------------- ls
def _count_by_state(refs: Sequence["SiteRef"], filters: Dict[str, Any]) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    for ref in refs:
        for state, n in ref.backend.count_by("job", dict(filters), "state").items():
            totals[state] = totals.get(state, 0) + n
    return {s: totals[s] for s in sorted(totals, key=lambda s: DISPLAY_ORDER.index(s) if s in DISPLAY_ORDER else 99)}


@job.command("ls")
@job_filter_options()
@click.option("--by-state", is_flag=True, help="Count the matching jobs per state instead of listing them.")
@click.option("-n", "--limit", type=click.IntRange(min=0), default=100, show_default=True, help="Show at most this many jobs (0: all).")
@click.option("-v", "--verbose", is_flag=True, help="Show every field of each job.")
@site_option()
@json_option()
def job_ls(ids: Tuple[int, ...], tags: Dict[str, str], workflow: Optional[str], states: Tuple[str, ...], exclude_states: Tuple[str, ...],
           workdir: Optional[str], app: Optional[str], by_state: bool, limit: int, verbose: bool, sites: Sequence[str], as_json: bool) -> None:
    """List jobs (by id), or count them per state.

    \b
    Examples:
      balsam job ls
      balsam job ls --tag experiment=xyz -s FAILED -s RUN_ERROR
      balsam job ls --workflow sweep -w run_1 --json
      balsam job ls --by-state --site all
    """
    filters = job_filters(ids, tags, workflow, states, exclude_states, workdir, app)
    if by_state:
        from balsam._api import sites as _sites

        refs = _sites.select(sites)
        counts = _count_by_state(refs, filters)
        if as_json:
            echo_json(counts)
            return
        echo_table(["State", "Jobs"], [*counts.items(), ("total", sum(counts.values()))])
        return
    refs, query = _query(sites, filters)
    jobs = list(query.order_by("id")[:limit]) if limit else list(query.order_by("id"))
    names = {r.id: r.name for r in refs}
    apps = _app_names(refs)
    if as_json:
        echo_json([job_dict(j, apps.get((j.site_id or 0, j.app_id)), names.get(j.site_id or 0)) for j in jobs])
        return
    if verbose:
        for j in jobs:
            d = job_dict(j, apps.get((j.site_id or 0, j.app_id)), names.get(j.site_id or 0))
            click.echo(f"Job {d.pop('id')}")
            _echo_fields(d, "  ")
    elif jobs:
        multi = len(refs) > 1
        headers = ["ID", *(["Site"] if multi else []), "App", "Workdir", "State", "Tags"]
        rows = [[j.id, *([names.get(j.site_id or 0)] if multi else []), apps.get((j.site_id or 0, j.app_id), j.app_id), j.workdir, j.state,
                 format_kv(j.tags)] for j in jobs]
        echo_table(headers, rows, flex=["Workdir", "Tags", "App"], styles={"State": color_state})
    more = query.count() - len(jobs) if limit and len(jobs) == limit else 0
    if not jobs:
        known = sorted(set(apps.values()))
        if app and not app.isdigit() and names and app not in known:  # a mistyped app name matches nothing: say so
            from balsam.cli import did_you_mean

            click.echo(f"No jobs match: no app {app!r} at {', '.join(names.values())} (apps: {', '.join(known) or 'none'})"
                       f"{did_you_mean(app, known)}.")
            return
        click.echo("No jobs match." if filters else f"No jobs at {', '.join(names.values())}." if names
                   else "No jobs: no site is selected ('balsam site ls' lists them; --site all selects every one).")
    elif more > 0:
        click.echo(f"... {more} more (show them with -n 0, or narrow with filters; count with --by-state)")


# ------------------------------------------------------------------------------------------- show, log
@job.command("show")
@click.argument("job_id", type=int)
@site_option()
@json_option()
def job_show(job_id: int, sites: Sequence[str], as_json: bool) -> None:
    """Show every field of a job, why it is in its state (what it waits for), and its event history.

    \b
    Example:
      balsam job show 42
    """
    j, refs = _get_job(job_id, sites)
    names = {r.id: r.name for r in refs}
    d = job_dict(j, _app_names(refs).get((j.site_id or 0, j.app_id)), names.get(j.site_id or 0))
    d["workdir_path"] = str(j.workdir_path)
    events = [{"timestamp": e.timestamp, "from_state": e.from_state, "to_state": e.to_state, "data": e.data} for e in j.history()]
    why = j.why()
    from balsam._api.models import TransferItem
    from balsam.cli.transfer import TABLE_HEADERS, item_dict, item_rows

    transfers = list(TransferItem.objects.filter(job_id=j.id, site_id=j.site_id).order_by("id"))
    if as_json:
        echo_json(dict(d, why=why, events=events, transfers=[item_dict(t) for t in transfers]))
        return
    click.echo(f"Job {d.pop('id')}")
    _echo_fields(d, "  ")
    click.echo("Why: " + visible("; ".join(why)))
    if j.serialized_return_value is not None:
        click.echo("  return value: <stored; Job.result_nowait() in Python>")
    if j.serialized_exception is not None:
        click.echo("  exception: <stored; Job.result_nowait() re-raises it>")
    if transfers:
        click.echo("Transfers:")
        for line in render_table(TABLE_HEADERS[2:], [row[2:] for row in item_rows(transfers)], flex=["Transfer", "Note"]).splitlines():
            click.echo("  " + line)
    click.echo("History:")
    for e in events:
        data = e["data"] or {}
        text = data.get("message") or data.get("error") or (json.dumps(data, default=str) if data else "")
        click.echo(f"  {format_time(e['timestamp'])}  {e['from_state']} -> {e['to_state']}" + (f"  {visible(text)}" if text else ""))


def _tail_lines(path: Any, n: int) -> str:
    """The last ``n`` lines of a file, reading only its end."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        block = 8192
        data = b""
        while size > 0 and data.count(b"\n") <= n:
            step = min(block, size)
            size -= step
            f.seek(size)
            data = f.read(step) + data
            block *= 2
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:]).decode(errors="replace") if n else ""


@job.command("log")
@click.argument("job_id", type=int)
@click.option("--tail", "tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output as it grows, until the job is done (Ctrl-C to stop).")
@site_option()
def job_log(job_id: int, tail: Optional[int], follow: bool, sites: Sequence[str]) -> None:
    """Print a job's output (job.out in its workdir).

    \b
    Examples:
      balsam job log 42
      balsam job log 42 --tail 20 -f
    """
    j, _ = _get_job(job_id, sites)
    path = j.workdir_path / "job.out"
    if not path.exists() and not follow:
        raise CLIError(f"job {job_id} has no output yet ({path} does not exist; the job is {j.state})", 1)
    offset = 0
    if path.exists():
        if tail is not None:
            click.echo(_tail_lines(path, tail), nl=False)
            offset = path.stat().st_size
        else:
            with open(path, "rb") as f:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    click.echo(block.decode(errors="replace"), nl=False)
                offset = f.tell()
    if not follow:
        return
    last_check = 0.0
    done = False
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                block = f.read()
            if block:
                offset += len(block)
                click.echo(block.decode(errors="replace"), nl=False)
                continue
        if done:
            return
        if time.monotonic() - last_check > 1.0:
            j.refresh_from_db()
            last_check = time.monotonic()
            done = j.state in DONE_STATES  # one more read after the job is done, then stop
            if done:
                continue
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------- state changes
def _change_state(filters: Dict[str, Any], by_id: bool, all_jobs: bool, sites: Sequence[str], state: JobState, message: str, what: str,
                  yes: bool) -> Optional[int]:
    """Move the selected jobs to ``state`` (strictly: one refused transition and nothing changes); returns how many
    (None when the relay queued every change for offline sites, which is said).

    A selection by filters that matches several jobs is confirmed first, unless ``by_id`` (explicit ids, or for
    ``modify`` Balsam 0.7's selectors: ids or tags alone)."""
    _require_selection(filters, all_jobs, what)
    _, query = _query(sites, filters)
    n = query.count()
    if n == 0:
        raise CLIError("no jobs match", 1)
    if n > 1 and not by_id:
        confirm(f"{what.capitalize()} {plural(n, 'job')}?", yes, f"not changing {plural(n, 'job')} without confirmation")
    with working(f"Setting {n} jobs to {state}:", enabled=n >= PROGRESS_MIN):
        done = query.update(state=state, state_data={"message": message})
    queued = getattr(done, "queued", [])
    echo_queued(queued)  # writes the relay keeps for offline sites: said, and not counted as done
    applied = int(done) - sum(h.rows for h in queued)
    return None if queued and not applied else applied


@job.command("modify")
@_id_args
@job_filter_options(("--from-state",))
@click.option("--all", "all_jobs", is_flag=True, help="Every job at the selected sites.")
@state_option("-s", "--state", "new_state", multiple=False, help="The new state (through the state machine).")
@site_option()
@yes_option()
def job_modify(job_ids: Tuple[int, ...], ids: Tuple[int, ...], tags: Dict[str, str], workflow: Optional[str], states: Tuple[str, ...],
               exclude_states: Tuple[str, ...], workdir: Optional[str], app: Optional[str], all_jobs: bool, new_state: Optional[str],
               sites: Sequence[str], yes: bool) -> None:
    """Change the state of jobs (by ID, -i, or filters), as in Balsam: -s is the new state.

    Each change goes through the state machine: a transition it refuses is an error and no job changes.
    As in Balsam 0.7, jobs chosen by id or by tags change without a prompt (each change is in the job's
    history, and 'balsam job reset' undoes it); other filters and --all ask first when they match several
    jobs, unless -y.

    \b
    Examples:
      balsam job modify 12 13 -s RESTART_READY
      balsam job modify --tag experiment=xyz --from-state RUN_ERROR -s FAILED -y
    """
    if new_state is None:
        raise click.UsageError("give the new state with -s/--state")
    filters = job_filters([*ids, *job_ids], tags, workflow, states, exclude_states, workdir, app)
    as_07 = bool(ids or job_ids) or bool(tags) and not (workflow or states or exclude_states or workdir or app or all_jobs)
    n = _change_state(filters, as_07, all_jobs, sites, JobState(new_state), "set by the user (balsam job modify)", "modify", yes)
    if n is not None:
        click.echo(f"Set {plural(n, 'job')} to {new_state}")


@job.command("reset")
@_id_args
@job_filter_options()
@click.option("--all", "all_jobs", is_flag=True, help="Every job at the selected sites.")
@click.option("--stage-in", is_flag=True, help="Back to READY (stage-in again) instead of RESTART_READY.")
@site_option()
@yes_option()
def job_reset(job_ids: Tuple[int, ...], ids: Tuple[int, ...], tags: Dict[str, str], workflow: Optional[str], states: Tuple[str, ...],
              exclude_states: Tuple[str, ...], workdir: Optional[str], app: Optional[str], all_jobs: bool, stage_in: bool,
              sites: Sequence[str], yes: bool) -> None:
    """Send failed, killed or finished jobs back to run again (RESTART_READY, or READY with --stage-in).

    Selected by filters without -s, only FAILED, USER_KILLED, RUN_ERROR and RUN_TIMEOUT jobs are reset
    (name JOB_FINISHED with -s, or give ids, to run finished jobs again). Each reset is recorded in the
    job's history.

    \b
    Examples:
      balsam job reset 42
      balsam job reset -s FAILED --tag experiment=xyz -y
    """
    target = S.READY if stage_in else S.RESTART_READY
    by_id = bool(ids or job_ids)
    filters = job_filters([*ids, *job_ids], tags, workflow, states, exclude_states, workdir, app)
    if not by_id and not states and (filters or all_jobs):
        filters["state"] = sorted(RESET_DEFAULT_STATES)
    preprocessed = str(S.PREPROCESSED)
    if not stage_in and (filters or all_jobs) and preprocessed in filters.get("state", [preprocessed]):
        # PREPROCESSED -> RESTART_READY is legal (both wait for a launcher), but such a job has not run: no reset
        _, query = _query(sites, {**filters, "state": [preprocessed]})
        waiting = query.first()
        if waiting is not None:
            raise CLIError(f"job {waiting.id}: cannot move from PREPROCESSED to RESTART_READY with reset: it has not run yet "
                           "(it waits for a launcher)", 2)
    n = _change_state(filters, by_id, all_jobs, sites, target, "reset by the user (balsam job reset)", "reset", yes)
    if n is not None:
        click.echo(f"Reset {plural(n, 'job')} to {target}")


@job.command("kill")
@_id_args
@job_filter_options()
@click.option("--all", "all_jobs", is_flag=True, help="Every unfinished job at the selected sites.")
@site_option()
@yes_option()
def job_kill(job_ids: Tuple[int, ...], ids: Tuple[int, ...], tags: Dict[str, str], workflow: Optional[str], states: Tuple[str, ...],
             exclude_states: Tuple[str, ...], workdir: Optional[str], app: Optional[str], all_jobs: bool, sites: Sequence[str],
             yes: bool) -> None:
    """Kill jobs (USER_KILLED); jobs waiting on them fail too.

    Selected by filters without -s, jobs that already ended are left alone. Killing many jobs by filters
    asks first unless -y.

    \b
    Examples:
      balsam job kill 42
      balsam job kill --workflow sweep -y
    """
    by_id = bool(ids or job_ids)
    filters = job_filters([*ids, *job_ids], tags, workflow, states, exclude_states, workdir, app)
    if not by_id and not states and (filters or all_jobs):
        filters["state__ne"] = sorted(set(exclude_states) | DONE_STATES)
    from balsam.api import Job

    _, scope = scope_sites(sites)
    waiting_before = Job.objects.filter(state=S.AWAITING_PARENTS, **scope).count()
    n = _change_state(filters, by_id, all_jobs, sites, S.USER_KILLED, "killed by the user (balsam job kill)", "kill", yes)
    if n is None:
        return
    failed = waiting_before - Job.objects.filter(state=S.AWAITING_PARENTS, **scope).count()
    click.echo(f"Killed {plural(n, 'job')}" + (f"; {plural(failed, 'job')} waiting on them failed" if failed > 0 else ""))


@job.command("rm")
@_id_args
@job_filter_options()
@click.option("--all", "all_jobs", is_flag=True, help="Every job at the selected sites.")
@site_option()
@yes_option()
def job_rm(job_ids: Tuple[int, ...], ids: Tuple[int, ...], tags: Dict[str, str], workflow: Optional[str], states: Tuple[str, ...],
           exclude_states: Tuple[str, ...], workdir: Optional[str], app: Optional[str], all_jobs: bool, sites: Sequence[str],
           yes: bool) -> None:
    """Delete jobs (by ID, or by filters) with their history; their workdirs stay on disk.

    Asks first unless -y; refused while a launcher holds any of them. Jobs waiting on a deleted job fail.

    \b
    Examples:
      balsam job rm 42 43 -y
      balsam job rm --tag experiment=old --all -y
    """
    filters = job_filters([*ids, *job_ids], tags, workflow, states, exclude_states, workdir, app)
    _require_selection(filters, all_jobs, "delete")
    _, query = _query(sites, filters)
    n = query.count()
    if n == 0:
        click.echo("No jobs match.")
        return
    confirm(f"Delete {plural(n, 'job')}?", yes, f"not deleting {plural(n, 'job')} without confirmation")
    with working(f"Deleting {n} jobs:", enabled=n >= PROGRESS_MIN):
        deleted = query.delete()
    queued = getattr(deleted, "queued", [])
    echo_queued(queued)
    applied = int(deleted) - sum(h.rows for h in queued)
    if applied or not queued:
        click.echo(f"Deleted {plural(applied, 'job')}")


# ------------------------------------------------------------------------------------------- dep
@job.command("dep")
@click.argument("parent", type=int)
@click.argument("child", type=int)
@site_option()
def job_dep(parent: int, child: int, sites: Sequence[str]) -> None:
    """Make job CHILD wait for job PARENT to finish (both at one site).

    Only a job that has not started can gain a parent; it goes back to AWAITING_PARENTS if PARENT is
    unfinished, and fails if PARENT has failed.

    \b
    Example:
      balsam job dep 41 42
    """
    c, _ = _get_job(child, sites)
    p, _ = _get_job(parent, [str(c.site_id)])
    c.parent_ids = [*c.parent_ids, int(p.id or 0)]
    c.save()
    if c.queued is not None:
        echo_queued([c.queued])
        return
    click.echo(f"Job {child} now depends on job {parent} (parents: {', '.join(map(str, c.parent_ids))}); it is {c.state}")
