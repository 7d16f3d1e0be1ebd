"""A linked site's agent and the relay, end to end: a running agent starts syncing when the site is linked and
stops when it is unlinked (no restart); DAGs are saved, instantiated, run and read from a laptop (this process,
no site) through the relay, and another user sees none of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from tests.test_relay_sync import HELLO, Relay, login_node, node_env, relay, run, wait_for  # noqa: F401  (relay: the fixture)


def services(root: Path) -> Dict[str, Any]:
    try:
        return dict(json.loads((root / ".balsam" / "agent.json").read_text()).get("services") or {})
    except (OSError, ValueError):
        return {}


def make_job(env: Dict[str, str], workdir: str) -> None:
    run(env, "-c", f"from balsam.api import Job; Job({workdir!r}, app_id='Hello', site_name='polaris', "
                   "parameters={'say_hello_to': 'x'}).save()")


@pytest.mark.slow
def test_a_running_agent_syncs_once_linked_and_stops_once_unlinked(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env = node_env(tmp_path)
    root = tmp_path / "polaris"
    run(env, "-m", "balsam", "site", "init", str(root), "-n", "polaris", "--preset", "local")
    run(env, "-c", f"import os; os.chdir({str(root)!r}); exec({HELLO!r})")
    run(env, "-m", "balsam", "login", relay.url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        from balsam.sync import login as relay_login
        from balsam.sync import user_client

        user = user_client(relay_login(relay.url, "alice", "alice-password"))
        make_job(env, "before/1")
        wait_for("the agent's status", lambda: "processing" in services(root))
        assert "sync" not in services(root)
        linked = run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root))
        assert "starts syncing" in linked.stdout
        wait_for("the site's jobs at the relay", lambda: user.request("GET", "/v1/jobs/count")["count"] == 1)
        make_job(env, "linked/1")
        wait_for("a new job at the relay", lambda: user.request("GET", "/v1/jobs/count")["count"] == 2)
        assert services(root)["sync"]["alive"]
        unlinked = run(env, "-m", "balsam", "site", "unlink", "--site", str(root))
        assert "no longer linked" in unlinked.stdout
        wait_for("the sync service to stop", lambda: "sync" not in services(root))
        make_job(env, "unlinked/1")
        updated = json.loads((root / ".balsam" / "agent.json").read_text())["updated"]
        wait_for("two more status reports", lambda: json.loads((root / ".balsam" / "agent.json").read_text())["updated"] > updated + 3)
        assert user.request("GET", "/v1/jobs/count")["count"] == 2  # nothing of the unlinked site reaches the relay
        run(env, "-m", "balsam", "site", "link", relay.url, "--site", str(root))  # linked again: catches up, still no restart
        wait_for("the catch-up", lambda: user.request("GET", "/v1/jobs/count")["count"] == 3)
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


@pytest.mark.slow
def test_a_finished_job_reaches_the_relay_at_once_not_at_the_next_sync_period(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    """With ``sync: period_s`` at ten minutes, only the doorbell of finished jobs can bring a job's end to the
    laptop within the test's wait: JOB_FINISHED is visible through the relay soon after the site finished it."""
    import time

    env, root = login_node(tmp_path, relay)
    settings = root / "settings.yml"
    settings.write_text(settings.read_text() + "sync:\n  period_s: 600\n")
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        from balsam.sync import login as relay_login
        from balsam.sync import user_client

        user = user_client(relay_login(relay.url, "alice", "alice-password"))
        wait_for("the site's first push", lambda: services(root).get("sync", {}).get("cycles", 0) >= 1)
        make_job(env, "quick/1")  # pushed by the sync's first cycles, or not: the finish is what is timed
        run(env, "-c", "from balsam.api import Job\n"
                       "job = Job.objects.get(workdir='quick/1', site_name='polaris')\n"
                       "job.state = 'USER_KILLED'\njob.save()")
        killed = time.monotonic()
        wait_for("the killed job at the relay", lambda: user.request("GET", "/v1/jobs/count?state=USER_KILLED")["count"] == 1,
                 timeout=60.0)
        assert time.monotonic() - killed < 60.0  # well before the sync's period of 600 s
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)


@pytest.mark.slow
def test_dags_saved_instantiated_and_read_from_the_laptop(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    run(env, "-m", "balsam", "site", "start", "--site", str(root))
    try:
        from balsam import _api
        from balsam.api import DAG, BatchJob
        from balsam.sync import login as relay_login
        from balsam.sync import user_client

        user = user_client(relay_login(relay.url, "alice", "alice-password"))  # the laptop: no site here
        _api.sites.reset()
        wait_for("the site's app at the relay", lambda: user.request("GET", "/v1/apps")["results"])
        dag = DAG("greetings", site="polaris")
        first = dag.node("hello", "Hello", "greet/{who}/hello", params={"say_hello_to": "{who}"})
        dag.node("again", "Hello", "greet/{who}/again", params={"say_hello_to": "again {who}"}, parents=[first])
        dag.save()  # applied by the site while the laptop waits: the DAG's real id
        site_id = user.request("GET", "/v1/sites")["results"][0]["id"]
        assert dag.id is not None and dag.id >> 32 == site_id
        made = dag.instantiate([{"who": "ann"}, {"who": "bob"}])
        assert [i.id >> 32 for i in made] == [site_id, site_id]
        found = wait_for("the DAG at the relay", lambda: DAG.objects.filter("greetings", site="polaris"))
        assert found[0].id == dag.id and {n.name for n in found[0].nodes} == {"hello", "again"}
        wait_for("the instances at the relay", lambda: len(dag.instances()) == 2)
        assert sorted(i.params["who"] for i in dag.instances()) == ["ann", "bob"]
        BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local", site_name="polaris")
        wait_for("both instances finished", lambda: all(i.state() == {"JOB_FINISHED": 2} for i in dag.instances()), timeout=240)
        assert dag.instances().filter(state="JOB_FINISHED").count() == 2
        assert dag.status() == {"instances": 2, "done": 2, "failed": 0, "jobs": {"JOB_FINISHED": 4}}
        assert (root / "data" / "greet" / "bob" / "again" / "job.out").read_text().strip() == "Hello, again bob!"
        mallory = user_client(relay_login(relay.url, "mallory", "mallory-password"))
        assert mallory.request("GET", "/v1/dags")["results"] == []
        assert mallory.request("GET", f"/v1/dag-instances?dag_id={dag.id}")["results"] == []
        assert mallory.request("POST", "/v1/dag-instances/counts", {"ids": [made[0].id]})["counts"] == {str(made[0].id): {}}
    finally:
        run(env, "-m", "balsam", "site", "stop", "--site", str(root), check=False)
