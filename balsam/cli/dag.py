"""``balsam dag``: DAG templates (workflows) and their instances.

Examples::

    balsam dag create sweep.yml                  # store a DAG written in YAML (apps by name)
    balsam dag ls
    balsam dag show md-sweep                     # nodes, edges, placeholders
    balsam dag run md-sweep --params runs.jsonl  # one instance per record (JSONL, CSV or YAML)
    balsam dag status md-sweep --instance 7
    balsam dag kill md-sweep --instance 7
    balsam dag retry md-sweep --instance 7
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Dict, List, Optional, Tuple

import click

from balsam.cli import SuggestingGroup
from balsam.cli._common import CLIError, echo_json, echo_queued, echo_table, json_option, one_site, progress, site_option


def _dag(name: str, sites: Tuple[str, ...]) -> Any:
    from balsam.api import DAG

    ref = one_site(sites, "this DAG command")
    return DAG.objects.get(name, site=ref.name)


def _scalar(value: Any) -> Any:
    """A CSV cell as JSON when it reads as a number, boolean or JSON value; else the text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@click.group(cls=SuggestingGroup)
def dag() -> None:
    """DAG templates: create, list, show, run (instantiate), watch, kill and retry instances.

    \b
    Example:
      balsam dag run md-sweep --params runs.jsonl
    """


@dag.command("create")
@click.argument("path", type=click.Path(dir_okay=False))
@site_option("The site to store the DAG at (default: the current site).")
@json_option()
def dag_create(path: str, sites: Tuple[str, ...], as_json: bool) -> None:
    """Store the DAG written in a YAML file (replacing one of the same name).

    \b
    Example sweep.yml:
      name: md-sweep
      nodes:
        - {name: prep, app: Prep, workdir: "{run}/prep", params: {seed: "{seed}"}}
        - {name: sim, app: Simulate, workdir: "{run}/sim", params: {temp: "{temp}"}, num_nodes: 2, parents: [prep]}
    """
    from balsam.api import DAG

    ref = one_site(sites, "dag create")
    dag_obj = DAG.from_yaml(path, site=ref.name).save()
    if dag_obj.queued is not None:
        if as_json:
            echo_json({"name": dag_obj.name, "queued_command": dag_obj.queued_command})
        else:
            echo_queued([dag_obj.queued])
        return
    if as_json:
        echo_json({"id": dag_obj.id, "name": dag_obj.name, "version": dag_obj.version, "placeholders": sorted(dag_obj.placeholders)})
        return
    click.echo(f"Saved DAG {dag_obj.name} (id {dag_obj.id}, version {dag_obj.version}) with {len(dag_obj.nodes)} nodes; "
               f"placeholders: {', '.join(sorted(dag_obj.placeholders)) or 'none'}")


@dag.command("ls")
@site_option()
@json_option()
def dag_ls(sites: Tuple[str, ...], as_json: bool) -> None:
    """List DAG templates with their node and instance counts.

    \b
    Example:
      balsam dag ls --site my-site
    """
    from balsam._api import sites as _sites
    from balsam.api import DAG

    rows: List[Dict[str, Any]] = []
    for ref in _sites.select(sites):
        for d in DAG.objects.all(site=ref.name):
            rows.append({"site": ref.name, "id": d.id, "name": d.name, "nodes": len(d.nodes), "instances": d.instances().count(),
                         "placeholders": sorted(d.placeholders), "description": d.description})
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No DAGs (create one with 'balsam dag create FILE' or DAG(...).save() in Python).")
        return
    echo_table(["Site", "ID", "Name", "Nodes", "Instances", "Placeholders"],
               [[r["site"], r["id"], r["name"], r["nodes"], r["instances"], ", ".join(r["placeholders"])] for r in rows],
               flex=["Placeholders"])


@dag.command("show")
@click.argument("name")
@site_option()
@json_option()
def dag_show(name: str, sites: Tuple[str, ...], as_json: bool) -> None:
    """Show a DAG as text: nodes (app, workdir, parameters, resources), edges and placeholders.

    \b
    Example:
      balsam dag show md-sweep
    """
    d = _dag(name, sites)
    if as_json:
        echo_json({"id": d.id, "name": d.name, "version": d.version, "description": d.description, **d.spec()})
        return
    click.echo(d.show())


@dag.command("run")
@click.argument("name")
@click.option("--params", "params_file", required=True, metavar="FILE",
              help="Placeholder values, one instance per record (JSONL, CSV, YAML or JSON; '-' for stdin).")
@click.option("--format", "file_format", type=click.Choice(["yaml", "csv", "jsonl", "json"]), help="Format of FILE (default: by extension).")
@site_option()
@json_option()
def dag_run(name: str, params_file: str, file_format: Optional[str], sites: Tuple[str, ...], as_json: bool) -> None:
    """Instantiate a DAG once per record of placeholder values (all in one transaction).

    \b
    Example:
      balsam dag run md-sweep --params runs.csv     (header: run,seed,temp)
    """
    from balsam.cli._jobfile import detect_format, read_records

    d = _dag(name, sites)
    fmt = detect_format(params_file, file_format)
    records = [{k: _scalar(v) for k, v in fields.items()} if fmt == "csv" else fields
               for _, fields in read_records(params_file, fmt)]
    if not records:
        raise CLIError(f"{params_file}: no records", 2)
    # All or nothing, as `job create --from` is: one transaction on the home host (the count shown as it goes), one
    # request from another host (the agent's one transaction). Through the relay, each part is a command of its own.
    site = d.site
    atomic = site.store.write() if site.is_home else contextlib.nullcontext()
    with progress(len(records) * len(d.nodes), f"Creating {len(records) * len(d.nodes)} jobs") as advance, atomic:
        done = [0]

        def step(n: int) -> None:
            advance(n - done[0])
            done[0] = n

        instances = d.instantiate(records, progress=step if site.is_home or site.via_relay else None)
        if done[0] == 0:
            step(len(instances) * len(d.nodes))
    queued = [i.queued for i in instances if i.queued is not None]
    if queued:
        if as_json:
            echo_json({"dag": d.name, "queued_commands": sorted({h.command_id for h in queued}), "jobs": len(instances) * len(d.nodes)})
        else:
            echo_queued(queued)
        if len(queued) == len(instances):
            return
    ids = [i.id for i in instances if i.id is not None]
    if as_json:
        echo_json({"dag": d.name, "instances": ids, "jobs": len(ids) * len(d.nodes)})
        return
    span = f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"
    click.echo(f"Created {len(ids)} instance(s) of DAG {d.name} (ids {span}), {len(ids) * len(d.nodes)} jobs. "
               f"Watch: balsam dag status {d.name}")


@dag.command("status")
@click.argument("name")
@click.option("--instance", "instance_id", type=int, metavar="ID", help="One instance: its jobs and their states.")
@site_option()
@json_option()
def dag_status(name: str, instance_id: Optional[int], sites: Tuple[str, ...], as_json: bool) -> None:
    """Counts of a DAG's jobs by state and how many instances are done or failed; with --instance, its jobs.

    \b
    Example:
      balsam dag status md-sweep --instance 7
    """
    d = _dag(name, sites)
    if instance_id is None:
        status = d.status()
        if as_json:
            echo_json(status)
            return
        click.echo(f"DAG {d.name}: {status['instances']} instances, {status['done']} done, {status['failed']} with failures")
        for state, n in sorted(status["jobs"].items()):
            click.echo(f"  {state:<18} {n}")
        return
    inst = d.instances().get(instance_id)
    jobs = list(inst.jobs().order_by("id"))
    if as_json:
        echo_json({"instance": inst.id, "params": inst.params, "states": inst.state(),
                   "jobs": [{"id": j.id, "node": j.tags.get("dag_node"), "workdir": j.workdir, "state": str(j.state)} for j in jobs]})
        return
    click.echo(f"DAG {d.name} instance {inst.id} ({json.dumps(inst.params)}): "
               + ", ".join(f"{n} {s}" for s, n in sorted(inst.state().items())))
    echo_table(["ID", "Node", "Workdir", "State"], [[j.id, j.tags.get("dag_node", ""), j.workdir, str(j.state)] for j in jobs],
               flex=["Workdir"])


@dag.command("kill")
@click.argument("name")
@click.option("--instance", "instance_id", type=int, required=True, metavar="ID", help="The instance to kill.")
@site_option()
def dag_kill(name: str, instance_id: int, sites: Tuple[str, ...]) -> None:
    """Kill the unfinished jobs of one instance (its children fail with the reason).

    \b
    Example:
      balsam dag kill md-sweep --instance 7
    """
    n = _dag(name, sites).instances().get(instance_id).kill()
    if not echo_queued(getattr(n, "queued", [])):
        click.echo(f"Killed {n} job(s) of instance {instance_id}.")


@dag.command("retry")
@click.argument("name")
@click.option("--instance", "instance_id", type=int, required=True, metavar="ID", help="The instance to retry.")
@site_option()
def dag_retry(name: str, instance_id: int, sites: Tuple[str, ...]) -> None:
    """Run the failed and killed jobs of one instance again (descendants wait for their parents again).

    \b
    Example:
      balsam dag retry md-sweep --instance 7
    """
    n = _dag(name, sites).instances().get(instance_id).retry_failed()
    if not echo_queued(getattr(n, "queued", [])):
        click.echo(f"Reset {n} job(s) of instance {instance_id}.")


@dag.command("rm")
@click.argument("name")
@site_option()
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def dag_rm(name: str, sites: Tuple[str, ...], yes: bool) -> None:
    """Forget a DAG template and its instance records (its jobs stay; remove them with 'balsam job rm --tag dag=NAME').

    \b
    Example:
      balsam dag rm md-sweep -y
    """
    from balsam.cli._common import confirm

    d = _dag(name, sites)
    confirm(f"Forget DAG {d.name}?", yes, f"refusing to forget DAG {d.name} without confirmation")
    if not echo_queued([type(d).objects.delete(d.name, site=d.site.name)]):
        click.echo(f"Forgot DAG {d.name}.")
