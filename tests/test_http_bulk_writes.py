"""Writes of many rows from another host, through the agent's HTTP API: each is one request and one transaction at the
site, so the rows change all at once or not at all (as on the home host), whether the client is killed -9 or the
agent is killed and restarted at the worst moment; a retry applies once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from balsam.api import App, BatchJob, Job
from balsam.exceptions import ValidationError
from tests.cli_helpers import ROOT
from tests.conftest import FOREIGN_HOST
from tests.launcher_support import wait_for

CLIENT = """
import sys
from balsam.api import BatchJob, Job
what = sys.argv[1]
if what == "delete_jobs":
    n = Job.objects.filter(tags={"batch": "big"}).delete()
elif what == "update_jobs":
    n = Job.objects.filter(tags={"batch": "big"}).update(tags={"batch": "big", "seen": "yes"})
else:
    n = BatchJob.objects.filter(queue="local").update(wall_time_min=99)
print(n)
"""


def _answers(store: Any) -> int:
    """Answers the agent keeps for retries: one per mutating request."""
    return int(store.execute("SELECT count(*) FROM http_answer")[0][0])


@pytest.fixture
def foreign(site: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process on another host, reaching the site through an API server (as its agent serves it)."""
    from balsam._api import sites
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=site.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    sites.reset()
    try:
        assert sites.resolve("test-site").backend.kind == "http"
        yield None
    finally:
        sites.reset()
        server.stop()


def _jobs(n: int, prefix: str = "b") -> None:
    Job.objects.bulk_create([Job(f"{prefix}/{i}", app_id="Hello", parameters={"say_hello_to": "x"}, tags={"batch": "big"})
                             for i in range(n)])


def test_a_query_delete_of_many_jobs_is_one_request(site: Any, home: Any, hello: Any, foreign: None) -> None:
    _jobs(1200)  # from this host: one request of 1,200 jobs
    before = _answers(home)
    assert Job.objects.filter(tags={"batch": "big"}).delete() == 1200
    assert _answers(home) == before + 1  # one request (it was one per 500 ids, each its own transaction)
    assert home.execute("SELECT count(*) FROM job")[0][0] == 0


def test_batch_job_and_app_writes_of_many_rows_are_all_or_nothing(site: Any, home: Any, hello: Any, foreign: None) -> None:
    waiting = [BatchJob.objects.create(num_nodes=1, wall_time_min=5, queue="local") for _ in range(3)]
    ended = BatchJob.objects.create(num_nodes=1, wall_time_min=5, queue="local")
    ended.state = "finished"
    ended.save()
    before = _answers(home)
    with pytest.raises(ValidationError, match="finished"):  # one of four may not go back to queued: none changes
        BatchJob.objects.filter(queue="local").update(state="queued")
    assert sorted(str(bj.state) for bj in BatchJob.objects.all()) == ["finished"] + ["pending_submission"] * 3
    assert BatchJob.objects.filter(queue="local").update(wall_time_min=42) == 4
    assert _answers(home) == before + 1  # the refused request kept no answer; the good one is one request
    assert {bj.wall_time_min for bj in BatchJob.objects.all()} == {42}
    for bj in waiting:
        bj.wall_time_min = 7
    waiting[0].num_nodes = 0  # refused: none of the three is written
    with pytest.raises(ValidationError, match="num_nodes"):
        BatchJob.objects.bulk_update(waiting)
    assert {bj.wall_time_min for bj in BatchJob.objects.all()} == {42}
    waiting[0].num_nodes = 2
    BatchJob.objects.bulk_update(waiting)
    assert sorted((bj.num_nodes, bj.wall_time_min) for bj in BatchJob.objects.filter(id=[b.id for b in waiting])) == [(1, 7), (1, 7), (2, 7)]
    assert BatchJob.objects.filter(queue="local").delete() == 4
    assert BatchJob.objects.count() == 0

    from balsam.api import ApplicationDefinition

    class Other(ApplicationDefinition):
        site = "test-site"
        command_template = "echo {{ x }}"

    Other.sync()
    Job.objects.bulk_create([Job(f"o/{i}", app_id="Other", parameters={"x": i}) for i in range(5)])
    before = _answers(home)
    assert App.objects.filter(name=["Other", "Hello"]).delete() == 2
    assert _answers(home) == before + 1 and App.objects.count() == 0 and home.execute("SELECT count(*) FROM job")[0][0] == 0


def test_transfer_item_writes_of_many_items_are_all_or_nothing(site: Any, home: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam._api import sites
    from balsam.api import ApplicationDefinition, TransferItem
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings, SiteSettings, TransferSettings
    from balsam.site import refresh_site_row

    class Moves(ApplicationDefinition):
        site = "test-site"
        command_template = "true"
        transfers = {"deck": {"required": True, "direction": "in", "local_path": "deck.txt"}}

    refresh_site_row(site.store, SiteSettings(transfers=TransferSettings(transfer_locations={"here": "local"})))
    Moves.sync()
    for i in range(4):
        Moves.submit(workdir=f"t/{i}", transfers={"deck": f"here:{tmp_path}/deck{i}.txt"})
    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=site.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    sites.reset()
    try:
        items = list(TransferItem.objects.all())
        assert len(items) == 4 and {str(i.state) for i in items} == {"pending"}
        before = _answers(home)
        for item in items:
            item.task_id = f"task-{item.id}"
        items[-1].state = "teleported"  # refused: none of the four is written
        with pytest.raises(ValidationError, match="unknown transfer item state 'teleported'"):
            TransferItem.objects.bulk_update(items)
        assert {i.task_id for i in TransferItem.objects.all()} == {""}
        items[-1].state = "done"
        TransferItem.objects.bulk_update(items)
        assert sorted(i.task_id for i in TransferItem.objects.all()) == sorted(f"task-{i.id}" for i in items)
        assert TransferItem.objects.filter(state="pending").update(state="done") == 3
        assert _answers(home) == before + 2  # two writes, two requests
        assert {str(j.state) for j in Job.objects.all()} == {"STAGED_IN"}  # every job's stage-in done in those writes
    finally:
        sites.reset()
        server.stop()


def _client(site: Any, what: str) -> "subprocess.Popen[str]":
    env = dict(os.environ, BALSAM_HOSTNAME=FOREIGN_HOST, BALSAM_SITE_PATH=str(site.path),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", CLIENT, what], env=env, cwd=str(site.path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def agent(site: Any, hello: Any) -> Iterator[List[int]]:
    """The site's real agent process ([pid]; a test may kill and restart it)."""
    from balsam.services.agent import start_agent, stop_agent

    pid = [start_agent(site.path)]
    try:
        yield pid
    finally:
        stop_agent(site.path)
        _cancel_local_batch_jobs(site.path)


def _cancel_local_batch_jobs(site_path: Path) -> None:
    """A BatchJob the agent submitted to the local scheduler runs on after the agent stops, as a Slurm job does; the
    BatchJobs made here only to be updated are cancelled as ``scancel`` would (the agent may submit them first)."""
    from balsam.settings import SchedulerSettings
    from balsam.site.layout import SiteLayout
    from balsam.site.submission import scheduler_for

    scheduler = scheduler_for(SiteLayout(site_path), SchedulerSettings(options={"kill_grace_s": "1"}))
    for record in sorted(scheduler.state_dir.glob("*.job")):
        scheduler.delete(int(record.stem))


def _progress(home: Any, what: str, n: int) -> int:
    """How many of the ``n`` rows the client's write has changed so far."""
    if what == "delete_jobs":
        return n - int(home.execute("SELECT count(*) FROM job")[0][0])
    if what == "update_jobs":
        return int(home.execute("SELECT count(*) FROM job WHERE tags LIKE '%seen%'")[0][0])
    return int(home.execute("SELECT count(*) FROM batch_job WHERE wall_time_min = 99")[0][0])


def _setup(site: Any, what: str) -> int:
    if what == "update_batch_jobs":
        for _ in range(10):  # as many as the queue takes
            BatchJob.objects.create(num_nodes=1, wall_time_min=5, queue="local")
        return 10
    _jobs(20_000)
    return 20_000


@pytest.mark.slow
@pytest.mark.parametrize("what", ["delete_jobs", "update_jobs", "update_batch_jobs"])
def test_a_client_killed_at_the_first_row_its_write_changed_leaves_all_or_nothing(site: Any, home: Any, agent: List[int],
                                                                                 what: str) -> None:
    n = _setup(site, what)
    client = _client(site, what)
    try:
        wait_for(lambda: _progress(home, what, n) > 0 or client.poll() is not None, 60.0, 0.002, "the first row changed")
        client.kill()  # kill -9 the moment the write shows
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    time.sleep(0.5)  # whatever the agent still had in hand
    assert _progress(home, what, n) == n  # seen to start, so all of it: no half-done write


@pytest.mark.slow
def test_an_agent_killed_as_a_big_delete_commits_answers_its_retry_once(site: Any, home: Any, agent: List[int]) -> None:
    from balsam.services.agent import start_agent

    _jobs(20_000)
    client = _client(site, "delete_jobs")
    try:
        wait_for(lambda: home.execute("SELECT count(*) FROM job")[0][0] == 0 or client.poll() is not None, 60.0, 0.002, "the delete's commit")
        os.kill(agent[0], signal.SIGKILL)  # the moment it committed, likely before its answer went out: the client retries
        time.sleep(0.3)
        agent[0] = start_agent(site.path)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err
    assert out.strip() == "20000" and home.execute("SELECT count(*) FROM job")[0][0] == 0
