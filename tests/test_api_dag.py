"""DAG templates: nodes, placeholders, save (cycles, unknown apps), instantiate in one transaction, instance
queries and state, kill and retry, and the YAML form."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from balsam.api import DAG, ApplicationDefinition, Job
from balsam.exceptions import ValidationError
from tests.helpers import advance


@pytest.fixture
def apps(site: Any) -> Dict[str, Any]:
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
    return {"Prep": Prep, "Simulate": Simulate, "Reduce": Reduce}


def sweep(apps: Dict[str, Any], name: str = "md-sweep") -> DAG:
    d = DAG(name, site="test-site")
    prep = d.node("prep", app=apps["Prep"], workdir="{run}/prep", params={"seed": "{seed}"})
    sims = [d.node(f"sim{k}", app=apps["Simulate"], workdir="{run}/sim" + str(k), params={"k": k, "temp": "{temp}"},
                   num_nodes=2, parents=[prep]) for k in range(4)]
    d.node("reduce", app=apps["Reduce"], workdir="{run}/reduce", parents=sims)
    return d


def records(n: int) -> List[Dict[str, Any]]:
    return [{"run": f"r{i}", "seed": i, "temp": 300 + 5 * i} for i in range(n)]


def test_the_documented_sweep_is_instantiated_with_parents_tags_and_typed_values(apps: Dict[str, Any]) -> None:
    d = sweep(apps).save()
    assert d.placeholders == {"run", "seed", "temp"}
    runs = d.instantiate(records(10))
    assert len(runs) == 10 and len({r.id for r in runs}) == 10
    from balsam.db.ids import site_of

    job_site = site_of(Job.objects.first().id)
    assert job_site and {site_of(r.id) for r in runs} == {job_site}  # instance ids carry the site's id too
    seven = runs[7]
    jobs = {j.tags["dag_node"]: j for j in seven.jobs()}
    assert sorted(jobs) == ["prep", "reduce", "sim0", "sim1", "sim2", "sim3"]
    assert jobs["prep"].parameters == {"seed": 7}  # a lone placeholder keeps the int
    assert jobs["sim2"].parameters == {"k": 2, "temp": 335}
    assert jobs["sim2"].num_nodes == 2
    assert jobs["sim2"].workdir == "r7/sim2"
    assert jobs["sim2"].parent_ids == [jobs["prep"].id]
    assert sorted(jobs["reduce"].parent_ids) == sorted(jobs[f"sim{k}"].id for k in range(4))
    assert all(j.tags["dag"] == "md-sweep" and j.tags["dag_instance"] == str(seven.id) for j in jobs.values())
    assert seven.state() == {"STAGED_IN": 1, "AWAITING_PARENTS": 5}
    # Every existing tool works through the tags.
    assert Job.objects.filter(tags={"dag_instance": str(seven.id)}).count() == 6
    assert Job.objects.filter(tags={"dag": "md-sweep"}).count() == 60


def test_stored_dag_is_loaded_by_name_and_lists_its_instances_by_job_state(apps: Dict[str, Any]) -> None:
    sweep(apps).save().instantiate(records(3))
    loaded = DAG.objects.get(name="md-sweep")
    assert [n.name for n in loaded.nodes] == ["prep", "sim0", "sim1", "sim2", "sim3", "reduce"]
    assert loaded.placeholders == {"run", "seed", "temp"}
    insts = list(loaded.instances())
    assert [i.params["run"] for i in insts] == ["r0", "r1", "r2"]
    assert loaded.instances().filter(state="FAILED").count() == 0
    prep = insts[1].jobs().filter(tags={"dag_node": "prep"}).get()
    advance(prep, "PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED")
    failed = loaded.instances().filter(state="FAILED")
    assert [i.id for i in failed] == [insts[1].id]


def test_a_failed_node_fails_its_descendants_in_that_instance_only(apps: Dict[str, Any]) -> None:
    runs = sweep(apps).save().instantiate(records(2))
    sim1 = runs[0].jobs().filter(tags={"dag_node": "sim1"}).get()
    prep = runs[0].jobs().filter(tags={"dag_node": "prep"}).get()
    advance(prep, "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
    advance(sim1, "PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED")
    first = runs[0].state()
    assert first.get("FAILED") == 2  # sim1 and reduce
    assert runs[0].failed() and not runs[0].done()
    assert runs[1].state() == {"STAGED_IN": 1, "AWAITING_PARENTS": 5}
    # retry: sim1 can run again at once, reduce waits for it again
    assert runs[0].retry_failed() == 2
    after = {j.tags["dag_node"]: str(j.state) for j in runs[0].jobs()}
    assert after["reduce"] == "AWAITING_PARENTS"
    assert after["sim1"] in ("READY", "STAGED_IN")


def test_kill_an_instance(apps: Dict[str, Any]) -> None:
    runs = sweep(apps).save().instantiate(records(2))
    assert runs[1].kill() == 6
    assert runs[1].state() == {"USER_KILLED": 6}
    assert runs[1].done()
    assert runs[0].state() == {"STAGED_IN": 1, "AWAITING_PARENTS": 5}


@pytest.mark.parametrize("record, message", [
    ({"run": "x", "seed": 1}, "no value for placeholder 'temp'"),
    ({"run": "x", "seed": 1, "temp": 3, "tmp": 4}, "'tmp' is not a placeholder"),
    ("run=x", "must be a mapping"),
])
def test_missing_or_unknown_placeholder_writes_nothing(apps: Dict[str, Any], record: Any, message: str) -> None:
    d = sweep(apps).save()
    with pytest.raises(ValidationError, match=message):
        d.instantiate([records(1)[0], record])
    assert Job.objects.count() == 0
    assert d.instances().count() == 0


def test_a_bad_value_in_a_later_instance_rolls_everything_back(apps: Dict[str, Any]) -> None:
    d = sweep(apps).save()
    bad = records(3)
    bad[2]["run"] = "../../etc"  # the workdir leaves the data folder
    with pytest.raises(ValidationError, match="leaves the site's data"):
        d.instantiate(bad)
    assert Job.objects.count() == 0 and d.instances().count() == 0
    d.instantiate(records(1))
    with pytest.raises(ValidationError):  # the same workdirs again
        d.instantiate(records(1))
    assert Job.objects.count() == 6 and d.instances().count() == 1


def test_save_refuses_cycles_unknown_apps_and_shared_workdirs(apps: Dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="cycle: a -> b -> a"):
        DAG.from_dict({"name": "c", "nodes": [
            {"name": "a", "app": "Prep", "workdir": "{r}/a", "params": {"seed": 1}, "parents": ["b"]},
            {"name": "b", "app": "Prep", "workdir": "{r}/b", "params": {"seed": 1}, "parents": ["a"]},
        ]}, site="test-site")
    d = DAG("u", site="test-site")
    d.node("a", app="NoSuchApp", workdir="{r}/a")
    with pytest.raises(ValidationError, match="NoSuchApp"):
        d.save()
    d = DAG("w", site="test-site")
    d.node("a", app="Reduce", workdir="fixed/a")
    with pytest.raises(ValidationError, match="uses no placeholder"):
        d.save()
    d = DAG("p", site="test-site")
    with pytest.raises(ValidationError, match="must be a plain name"):
        d.node("a", app="Reduce", workdir="{r.__class__}/a")
        d.save()
    with pytest.raises(ValidationError, match="not a node"):
        DAG("q", site="test-site").node("a", app="Reduce", workdir="{r}/a", parents=["zzz"])
    assert DAG.objects.all() == []


def test_yaml_form_and_placeholders_in_resources_and_tags(apps: Dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "dag.yml"
    path.write_text(
        "name: yaml-sweep\n"
        "description: from a file\n"
        "nodes:\n"
        "  prep: {app: Prep, workdir: '{run}/prep', params: {seed: '{seed}'}, tags: {owner: '{who}'}}\n"
        "  sim: {app: Simulate, workdir: '{run}/sim', params: {k: 0, temp: 'T={temp}'}, num_nodes: '{nodes}', parents: [prep]}\n"
    )
    d = DAG.from_yaml(path, site="test-site").save()
    assert d.placeholders == {"run", "seed", "who", "temp", "nodes"}
    (inst,) = d.instantiate([{"run": "a", "seed": 3, "who": "me", "temp": 7, "nodes": 4}])
    jobs = {j.tags["dag_node"]: j for j in inst.jobs()}
    assert jobs["sim"].num_nodes == 4 and jobs["sim"].parameters == {"k": 0, "temp": "T=7"}
    assert jobs["prep"].tags["owner"] == "me"
    with pytest.raises(ValidationError, match="num_nodes"):
        d.instantiate([{"run": "b", "seed": 3, "who": "me", "temp": 7, "nodes": "many"}])


def test_yaml_aliases_are_refused(site: Any, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yml"
    path.write_text("a: &a [x, x]\nb: &b [*a, *a]\nname: bomb\nnodes: [*b]\n")
    with pytest.raises(ValidationError, match="anchors and aliases"):
        DAG.from_yaml(path, site="test-site")


def test_show_prints_nodes_edges_and_placeholders(apps: Dict[str, Any]) -> None:
    text = sweep(apps).show()
    assert "placeholders: run, seed, temp" in text
    assert "[2] reduce: Reduce() in {run}/reduce  after sim0, sim1, sim2, sim3" in text
    assert "  prep -> sim3" in text


def test_dags_work_from_another_host_through_the_agent(apps: Dict[str, Any], site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a login node or compute node that is not the site's home host, DAGs go through the agent's /v1 API."""
    pytest.importorskip("starlette")
    from balsam._api import sites as _sites
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    try:
        monkeypatch.setenv("BALSAM_HOSTNAME", "node7")
        monkeypatch.setenv("BALSAM_SITE_PATH", str(site.path))
        _sites.reset()
        assert _sites.current_site().backend.kind == "http"  # type: ignore[union-attr]
        d = sweep(apps).save()
        runs = d.instantiate(records(3))
        assert runs[1].state() == {"STAGED_IN": 1, "AWAITING_PARENTS": 5}
        assert [i.id for i in DAG.objects.get("md-sweep").instances()] == [r.id for r in runs]
        with pytest.raises(ValidationError, match="no value for placeholder 'temp'"):
            d.instantiate([{"run": "x", "seed": 1}])
        with pytest.raises(ValidationError, match="already"):  # a duplicate workdir, refused by the site, one error
            d.instantiate(records(1))
        assert runs[2].kill() == 6 and runs[2].retry_failed() == 6
        assert DAG.objects.get("md-sweep").status()["instances"] == 3
    finally:
        server.stop()
    monkeypatch.delenv("BALSAM_HOSTNAME")
    _sites.reset()
    assert Job.objects.filter(tags={"dag": "md-sweep"}).count() == 18


def test_a_site_that_moves_to_a_new_id_keeps_its_dag_instances(apps: Dict[str, Any], site: Any) -> None:
    """Linking to a relay may move a site to a free id: DAG ids and the dag_instance tags move with it."""
    from balsam.db import ids

    runs = sweep(apps).save().instantiate(records(2))
    old = runs[1].id
    with site.store.write() as conn:
        ids.rewrite_site_ids(conn, 4242)
    from balsam._api import sites as _sites

    _sites.reset()
    new_id = (old & ids.LOCAL_MASK) | ids.base(4242)
    moved = DAG.objects.get("md-sweep").instances().get(new_id)
    assert moved.params["run"] == "r1" and moved.state() == {"STAGED_IN": 1, "AWAITING_PARENTS": 5}
    assert Job.objects.filter(tags={"dag_instance": str(new_id)}).count() == 6
    assert Job.objects.filter(tags={"dag_instance": str(old)}).count() == 0


def test_balsam_db_migrate_prefixes_dag_ids_of_an_older_site(apps: Dict[str, Any], site: Any) -> None:
    from balsam.db import ids

    runs = sweep(apps).save().instantiate(records(1))
    local = runs[0].id & ids.LOCAL_MASK
    with site.store.write() as conn:  # how a site made before DAG ids carried the site id looked
        conn.execute("UPDATE dag_instance SET id = id & ?, dag_id = dag_id & ?", (ids.LOCAL_MASK, ids.LOCAL_MASK))
        conn.execute("UPDATE dag SET id = id & ?", (ids.LOCAL_MASK,))
        conn.execute("UPDATE job_tag SET value = ? WHERE key = 'dag_instance'", (str(local),))
        conn.execute("UPDATE job SET tags = json_set(tags, '$.dag_instance', ?)", (str(local),))
        ids.prefix_dag_ids(conn)
    from balsam._api import sites as _sites

    _sites.reset()
    (inst,) = list(DAG.objects.get("md-sweep").instances())
    assert inst.id == runs[0].id and inst.state() == {"STAGED_IN": 1, "AWAITING_PARENTS": 5}
    assert Job.objects.filter(tags={"dag_instance": str(runs[0].id)}).count() == 6
