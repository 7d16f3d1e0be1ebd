"""``balsam dag``: create from YAML, ls, show, run with JSONL/CSV/YAML parameters, status, kill, retry, rm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from balsam.api import DAG, ApplicationDefinition, Job
from balsam.exceptions import ValidationError
from tests.cli_helpers import fails, ok
from tests.helpers import advance

YAML = """\
name: md-sweep
description: prep, two sims, reduce
nodes:
  - {name: prep, app: Prep, workdir: "{run}/prep", params: {seed: "{seed}"}}
  - {name: sim0, app: Simulate, workdir: "{run}/sim0", params: {k: 0, temp: "{temp}"}, parents: [prep]}
  - {name: sim1, app: Simulate, workdir: "{run}/sim1", params: {k: 1, temp: "{temp}"}, parents: [prep]}
  - {name: reduce, app: Reduce, workdir: "{run}/reduce", parents: [sim0, sim1]}
"""


@pytest.fixture
def dag_file(site: Any, tmp_path: Path) -> Path:
    class Prep(ApplicationDefinition):
        site = "test-site"
        command_template = "echo prep {{ seed }}"

    class Simulate(ApplicationDefinition):
        site = "test-site"
        command_template = "echo sim {{ k }} {{ temp }}"

    class Reduce(ApplicationDefinition):
        site = "test-site"
        command_template = "echo reduce"

    for a in (Prep, Simulate, Reduce):
        a.sync()
    path = tmp_path / "dag.yml"
    path.write_text(YAML)
    return path


def test_create_ls_show(dag_file: Path) -> None:
    out = ok("dag", "create", dag_file).stdout
    assert "Saved DAG md-sweep" in out and "4 nodes" in out and "placeholders: run, seed, temp" in out
    listing = ok("dag", "ls").stdout
    assert "md-sweep" in listing and "run, seed, temp" in listing
    shown = ok("dag", "show", "md-sweep").stdout
    assert "[1] sim0: Simulate(k=0, temp='{temp}') in {run}/sim0  after prep" in shown
    assert "  sim1 -> reduce" in shown
    data = json.loads(ok("dag", "show", "md-sweep", "--json").stdout)
    assert [n["name"] for n in data["nodes"]] == ["prep", "sim0", "sim1", "reduce"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "yaml"])
def test_run_one_instance_per_record(dag_file: Path, tmp_path: Path, fmt: str) -> None:
    ok("dag", "create", dag_file)
    params = tmp_path / f"runs.{fmt}"
    rows = [{"run": f"r{i}", "seed": i, "temp": 300 + i} for i in range(5)]
    if fmt == "jsonl":
        params.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        params.write_text("run,seed,temp\n" + "".join(f"{r['run']},{r['seed']},{r['temp']}\n" for r in rows))
    else:
        params.write_text("".join(f"- {{run: {r['run']}, seed: {r['seed']}, temp: {r['temp']}}}\n" for r in rows))
    out = ok("dag", "run", "md-sweep", "--params", params).stdout
    assert "Created 5 instance(s) of DAG md-sweep" in out and "20 jobs" in out
    assert Job.objects.filter(tags={"dag": "md-sweep"}).count() == 20
    third = DAG.objects.get("md-sweep").instances()[2]
    prep = Job.objects.filter(tags={"dag_node": "prep", "dag_instance": str(third.id)}).get()
    assert prep.parameters == {"seed": 2}  # CSV cells that read as numbers are numbers
    status = json.loads(ok("dag", "status", "md-sweep", "--json").stdout)
    assert status == {"instances": 5, "done": 0, "failed": 0, "jobs": {"STAGED_IN": 5, "AWAITING_PARENTS": 15}}


def test_status_kill_retry_and_rm(dag_file: Path, tmp_path: Path) -> None:
    ok("dag", "create", dag_file)
    params = tmp_path / "runs.jsonl"
    params.write_text('{"run": "a", "seed": 1, "temp": 2}\n{"run": "b", "seed": 2, "temp": 3}\n')
    ok("dag", "run", "md-sweep", "--params", params)
    first, second = (str(i.id) for i in DAG.objects.get("md-sweep").instances())
    text = ok("dag", "status", "md-sweep", "--instance", first).stdout
    assert f"instance {first}" in text and "a/reduce" in text and "AWAITING_PARENTS" in text
    assert "Killed 4 job(s)" in ok("dag", "kill", "md-sweep", "--instance", second).stdout
    assert DAG.objects.get("md-sweep").instances().get(int(second)).state() == {"USER_KILLED": 4}
    prep = Job.objects.filter(tags={"dag_node": "prep", "dag_instance": first}).get()
    advance(prep, "PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED")
    assert "Reset 4 job(s)" in ok("dag", "retry", "md-sweep", "--instance", first).stdout
    states = {j.tags["dag_node"]: str(j.state) for j in Job.objects.filter(tags={"dag_instance": first})}
    assert states["prep"] in ("READY", "STAGED_IN") and states["reduce"] == "AWAITING_PARENTS"
    assert "Forgot DAG md-sweep" in ok("dag", "rm", "md-sweep", "-y").stdout
    assert Job.objects.filter(tags={"dag": "md-sweep"}).count() == 8  # the jobs stay


def test_errors_are_one_line(dag_file: Path, tmp_path: Path) -> None:
    assert "no DAG named 'nope'" in fails("dag", "show", "nope")
    ok("dag", "create", dag_file)
    params = tmp_path / "bad.jsonl"
    params.write_text('{"run": "a", "seed": 1}\n')
    assert "no value for placeholder 'temp'" in fails("dag", "run", "md-sweep", "--params", params, code=2)
    cyclic = tmp_path / "cyc.yml"
    cyclic.write_text("name: c\nnodes:\n  - {name: a, app: Reduce, workdir: '{r}/a', parents: [a]}\n")
    assert "its own parent" in fails("dag", "create", cyclic, code=2)
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    assert "not valid YAML" in fails("dag", "create", bad, code=2)
    assert Job.objects.count() == 0


def test_a_dag_file_that_names_a_node_or_key_twice_is_refused_by_line(dag_file: Path, tmp_path: Path) -> None:
    """A node copied and not renamed replaced the first one silently (a DAG one node short); a key given twice inside
    a node's params kept the last value."""
    twice = tmp_path / "twice.yml"
    twice.write_text("name: twice\nnodes:\n  prep: {app: Prep, workdir: '{r}/a'}\n  sim: {app: Simulate, workdir: '{r}/s', parents: [prep]}\n"
                     "  prep: {app: Prep, workdir: '{r}/b'}\n")
    assert "twice.yml line 5: the key 'prep' is given twice" in fails("dag", "create", twice, code=2)
    twice.write_text("name: twice\nnodes:\n  prep:\n    app: Prep\n    workdir: '{r}/a'\n    params: {seed: 1, seed: 2}\n")
    assert "twice.yml line 6: the key 'seed' is given twice" in fails("dag", "create", twice, code=2)
    twice.write_text("name: ok\nnodes:\n  prep: {app: Prep, workdir: '{r}/a', params: {seed: [{a: 1}, {a: 2}]}}\n"
                     "  sim: {app: Simulate, workdir: '{r}/s', parents: [prep], params: {k: {a: 1}, temp: {a: 2}}}\n")
    ok("dag", "create", twice)  # the same key in sibling mappings is no repeat
    assert [d.name for d in DAG.objects.all()] == ["ok"]


@pytest.mark.parametrize("backend", ["local", "http"], indirect=True)
def test_a_run_refused_in_a_later_part_makes_no_instance(dag_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instances are written in parts (the count shows as they go), but a run makes all of them or none: on the home
    host in one transaction, from another host in one request."""
    import balsam._api.dag as dag_api

    monkeypatch.setattr(dag_api, "INSTANTIATE_CHUNK", 2)  # five records, three parts; the refused one is in the last
    ok("dag", "create", dag_file)
    Job("r4/reduce", app_id="Reduce").save()  # its workdir is taken
    params = tmp_path / "runs.jsonl"
    params.write_text("".join(json.dumps({"run": f"r{i}", "seed": i, "temp": 300 + i}) + "\n" for i in range(5)))
    assert "workdir 'r4/reduce' is already used" in fails("dag", "run", "md-sweep", "--params", params, code=2)
    assert Job.objects.count() == 1 and DAG.objects.get("md-sweep").instances().count() == 0
    params.write_text("".join(json.dumps({"run": f"s{i}", "seed": i, "temp": 300 + i}) + "\n" for i in range(5)))
    assert "Created 5 instance(s) of DAG md-sweep" in ok("dag", "run", "md-sweep", "--params", params).stdout
    assert Job.objects.count() == 21


def test_long_chains_cycles_and_huge_dags_get_one_line_answers(dag_file: Path, tmp_path: Path) -> None:
    # A chain of 3,000 nodes written children first: checking it recursed once per node (a RecursionError traceback).
    n = 3000
    chain = tmp_path / "chain.yml"
    parents = [f", parents: [n{i - 1}]" if i else "" for i in range(n)]
    chain.write_text("name: chain\nnodes:\n" + "".join(
        f"  - {{name: n{i}, app: Reduce, workdir: '{{r}}/n{i}'{parents[i]}}}\n" for i in reversed(range(n))))
    assert "chain" in ok("dag", "create", chain).stdout
    assert len(DAG.objects.get("chain").nodes) == n
    # A cycle through all of them: one short line naming where it goes round.
    ring = tmp_path / "ring.yml"
    ring.write_text("name: ring\nnodes:\n" + "".join(
        f"  - {{name: n{i}, app: Reduce, workdir: '{{r}}/n{i}', parents: [n{(i + 1) % n}]}}\n" for i in range(n)))
    error = fails("dag", "create", ring, code=2)
    assert "has a cycle: n0 -> n1" in error and f"({n - 9} more)" in error and len(error) < 300
    # More nodes than a DAG may hold is refused at once, whatever door it comes through.
    with pytest.raises(ValidationError, match="at most 100,000"):
        DAG.from_dict({"name": "huge", "nodes": [{"name": f"n{i}", "app": "Reduce", "workdir": "{r}/n" + str(i)}
                                                 for i in range(100_001)]}).save()
    assert [d.name for d in DAG.objects.all()] == ["chain"]
