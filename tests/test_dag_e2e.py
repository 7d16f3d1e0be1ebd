"""The DAG example end to end on a local site: the agent, a local BatchJob and its launcher run every
instance's jobs in dependency order; a failing node fails its descendants in that instance only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from balsam.api import DAG, ApplicationDefinition, BatchJob, EventLog, Job

SITE = "dag-site"


class Prep(ApplicationDefinition):
    site = SITE
    command_template = "echo prep {{ seed }}"


class Simulate(ApplicationDefinition):
    site = SITE
    command_template = "bash -c 'test {{ temp }} -lt 1000 && cat ../prep/job.out && echo sim {{ k }} {{ temp }}'"


class Reduce(ApplicationDefinition):
    site = SITE

    def run(self) -> str:
        from pathlib import Path

        return " | ".join(sorted(p.read_text().strip().replace("\n", " ") for p in Path("..").glob("sim*/job.out")))


def balsam(*args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture
def dag_site(tmp_path: Path) -> Any:
    root = tmp_path / SITE
    balsam("site", "init", str(root), "-n", SITE, "--preset", "local")
    (root / "settings.yml").write_text((root / "settings.yml").read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 3"))
    balsam("site", "start", "--site", str(root))
    yield root
    balsam("site", "stop", "--site", str(root), check=False)
    for bj in BatchJob.objects.filter(site_name=SITE, state=["pending_submission", "queued", "running"]):
        bj.state = "pending_deletion"
        bj.save()


def _first(events: List[Any], job_id: int, to_state: str) -> float:
    return min(e.timestamp.timestamp() for e in events if e.job_id == job_id and str(e.to_state) == to_state)


def test_the_sweep_runs_in_dependency_order(dag_site: Path) -> None:
    for app in (Prep, Simulate, Reduce):
        app.sync()
    sweep = DAG("md-sweep", site=SITE)
    prep = sweep.node("prep", app=Prep, workdir="{run}/prep", params={"seed": "{seed}"})
    sims = [sweep.node(f"sim{k}", app=Simulate, workdir="{run}/sim" + str(k), params={"k": k, "temp": "{temp}"}, parents=[prep])
            for k in range(3)]
    sweep.node("reduce", app=Reduce, workdir="{run}/reduce", parents=sims)
    sweep.save()
    # Instance 2's temperature makes its sims fail: its reduce fails too; the others are untouched.
    runs = sweep.instantiate([{"run": f"r{i}", "seed": i, "temp": [300, 310, 5000][i]} for i in range(3)])
    BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local", site_id=runs[0].jobs().first().site_id)
    for inst in runs:
        inst.wait(timeout=150)
    assert runs[0].state() == {"JOB_FINISHED": 5} and runs[1].state() == {"JOB_FINISHED": 5}
    assert runs[2].state() == {"JOB_FINISHED": 1, "FAILED": 4}
    reduce0 = runs[0].jobs().filter(tags={"dag_node": "reduce"}).get()
    assert reduce0.result() == " | ".join(f"prep 0 sim {k} 300" for k in range(3))
    # Dependency order, from the history: no job ran before each of its parents finished.
    jobs: Dict[int, Any] = {j.id: j for inst in runs[:2] for j in inst.jobs()}
    events = list(EventLog.objects.filter(job_id=list(jobs)))
    for job in jobs.values():
        for parent in job.parent_ids:
            assert _first(events, job.id, "RUNNING") >= _first(events, parent, "JOB_FINISHED")
    failed_reduce = runs[2].jobs().filter(tags={"dag_node": "reduce"}).get()
    assert "parent job" in EventLog.objects.filter(job_id=failed_reduce.id, to_state="FAILED").first().data["message"]
    assert [i.id for i in DAG.objects.get("md-sweep").instances().filter(state="FAILED")] == [runs[2].id]
    assert Job.objects.filter(tags={"dag": "md-sweep"}, state="JOB_FINISHED").count() == 11


class Child(ApplicationDefinition):
    site = SITE

    def run(self, k: int) -> int:
        return k * k


class Spawner(ApplicationDefinition):
    site = SITE

    def run(self, n: int) -> list:
        from balsam.api import Job

        me = Job.current()
        kids = [me.spawn_child(Child, f"{me.workdir}/child{k}", k=k) for k in range(n)]
        return [kid.id for kid in kids]


def test_a_running_job_spawns_children_that_run_after_it(dag_site: Path) -> None:
    for app in (Child, Spawner):
        app.sync()
    parent = Spawner.submit(workdir="spawn/p", n=3)
    BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="serial", queue="local", project="local", site_id=parent.site_id)
    assert parent.result(timeout=120) and len(parent.result()) == 3
    kids = list(Job.objects.filter(id=parent.result()))
    assert [k.parent_ids for k in kids] == [[parent.id]] * 3
    assert sorted(k.result(timeout=120) for k in kids) == [0, 1, 4]
    assert all(k.workdir.startswith("spawn/p/child") for k in kids)


def test_a_job_on_a_compute_node_spawns_children_through_the_agent(dag_site: Path) -> None:
    """The launcher and its jobs run on "node7" (not the site's home host): they reach the site only through the
    agent's HTTP API, never by opening SQLite there (DESIGN 3)."""
    from tests.launcher_support import start

    for app in (Child, Spawner):
        app.sync()
    parent = Spawner.submit(workdir="remote/p", n=3)
    launcher = start(dag_site, "serial", wall_time_min=3, idle_ttl_s=20, env={"BALSAM_HOSTNAME": "node7"})
    try:
        kid_ids = parent.result(timeout=150)
        kids = list(Job.objects.filter(id=kid_ids))
        assert sorted(k.result(timeout=150) for k in kids) == [0, 1, 4]
        assert [k.parent_ids for k in kids] == [[parent.id]] * 3
    finally:
        launcher.terminate()
        launcher.wait(timeout=60)
    log = (dag_site / "launcher-test.out").read_text()
    assert "launcher on node7" in log and "transport http" in log, log[-2000:]
