"""The launcher on another host than the site's home host: it must not open SQLite, and goes through the site
agent's /v1 HTTP API instead (signed requests). Tested on one machine with ``BALSAM_HOSTNAME=some-compute-node``
for the launcher, against an API server started here."""

from __future__ import annotations

import os
import pickle
import time
from typing import Any, Iterator, List

import pytest

from tests.launcher_support import (
    events,
    job_row,
    kill_quietly,
    launcher_log,
    pid_alive,
    read_pid,
    runnable,
    set_state,
    start,
    states,
    wait_for,
)

REMOTE = {"BALSAM_HOSTNAME": "some-compute-node"}


@pytest.fixture
def channel(site: Any) -> Iterator[Any]:
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    yield server
    server.stop()


@pytest.mark.parametrize("mode", ["mpi", "serial"])
def test_remote_launcher_runs_jobs_through_the_channel(site: Any, channel: Any, hello: Any, adder: Any, mode: str) -> None:
    jobs = [hello.submit(f"r/{i}", say_hello_to=str(i), node_packing_count=2) for i in range(3)]
    jobs += [adder.submit("r/ok", x=1, y=2, node_packing_count=2), adder.submit("r/bad", x=1, y=None, node_packing_count=2)]
    ids = runnable(site.store, jobs)
    proc = start(site.path, mode, idle_ttl_s=0.5, env=REMOTE)
    assert proc.wait(timeout=60) == 0
    assert states(site.store, ids) == {**{i: "JOB_FINISHED" for i in ids[:4]}, ids[4]: "RUN_ERROR"}
    assert pickle.loads(job_row(site.store, ids[3])["serialized_return_value"]) == 3
    exc, tb = pickle.loads(job_row(site.store, ids[4])["serialized_exception"])
    assert isinstance(exc, TypeError) and "Traceback" in tb
    log = launcher_log(site.path, mode)
    assert "launcher on some-compute-node" in log and "transport http" in log
    assert site.store.execute("SELECT count(*) FROM session")[0][0] == 0


def test_remote_launcher_notices_user_kills(site: Any, channel: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Sleeper(ApplicationDefinition):
        site = "test-site"
        command_template = "echo $$ > pid; exec sleep 60"

    [job_id] = runnable(site.store, [Sleeper.submit("rk")])
    proc = start(site.path, "mpi", idle_ttl_s=0.5, env=REMOTE)
    pids: List[int] = []
    try:
        pids.append(read_pid(site.path, "rk"))
        wait_for(lambda: states(site.store, [job_id])[job_id] == "RUNNING", what="RUNNING")
        set_state(site.store, job_id, "USER_KILLED")
        wait_for(lambda: not pid_alive(pids[0]), timeout=6, what="the killed job to stop")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            kill_quietly(pid)
    assert [e["to"] for e in events(site.store, job_id)][-1] == "USER_KILLED"


def _finished_acquires(store: Any, session_id: int) -> int:
    """Acquire requests of a lease the API server has answered (it keeps each answer for a retry)."""
    import hashlib

    fingerprint = hashlib.sha256(f"acquire {session_id}".encode()).hexdigest()
    return int(store.execute("SELECT count(*) FROM http_answer WHERE fingerprint=?", (fingerprint,))[0][0])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mpi", "serial"])
def test_a_busy_remote_launcher_with_free_slots_waits_at_the_agent_for_jobs(site: Any, channel: Any, hello: Any, mode: str) -> None:
    """A remote launcher running a long job with room for more asks the agent for jobs about once per long poll
    (2 s), not once per poll period (a write transaction at the agent each time), and still starts a job made
    runnable meanwhile at once."""
    from balsam.api import ApplicationDefinition

    class Napper(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep 30"

    [long_id] = runnable(site.store, [Napper.submit("busy/long", node_packing_count=4)])
    proc = start(site.path, mode, idle_ttl_s=30, env=REMOTE)
    try:
        wait_for(lambda: states(site.store, [long_id])[long_id] == "RUNNING", timeout=30, what="the long job to run")
        session_id = int(job_row(site.store, long_id)["session_id"])
        before = _finished_acquires(site.store, session_id)
        time.sleep(3.0)
        asked = _finished_acquires(site.store, session_id) - before
        assert asked <= 4, f"a busy launcher with nothing to acquire asked {asked} times in 3 s"
        [quick] = runnable(site.store, [hello.submit("busy/quick", say_hello_to="meanwhile", node_packing_count=4)])
        wait_for(lambda: states(site.store, [quick])[quick] == "JOB_FINISHED", timeout=10, what="the new job to run")
        assert states(site.store, [long_id])[long_id] == "RUNNING"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert states(site.store, [long_id])[long_id] == "RUN_TIMEOUT"


def test_remote_launcher_without_a_channel_says_why(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam.exceptions import LauncherError
    from balsam.launcher import run_launcher

    monkeypatch.setenv("BALSAM_HOSTNAME", "some-compute-node")
    with pytest.raises(LauncherError, match="agent of .* is not running"):
        run_launcher(site.path, job_mode="mpi", wall_time_min=1, idle_ttl_s=0.1)


def test_client_job_source_and_idempotent_status_batches(site: Any, channel: Any, hello: Any) -> None:
    from balsam.db.jobs import StateChange
    from balsam.exceptions import SessionExpired
    from balsam.http.client import HttpBackend
    from balsam.launcher.remote import RemoteJobSource, api_sink

    backend = HttpBackend.for_site(site.path, retry_s=5)
    [job_id] = runnable(site.store, [hello.submit("c/1", say_hello_to="x")])
    source = RemoteJobSource(backend, host="some-compute-node", batch_job_id=None, label="test", heartbeat_period_s=60).start()
    jobs = source.acquire(10)
    assert [j["id"] for j in jobs] == [job_id] and jobs[0]["workdir"] == "c/1"
    sink = api_sink(backend)
    assert sink([StateChange(job_id, "RUNNING", session_id=source.session_id)]) == []
    batch = {"changes": [{"job_id": job_id, "state": "RUN_DONE", "timestamp": time.time(), "data": {"returncode": 0},
                          "fields": {"return_code": 0}, "session_id": source.session_id}]}
    client = backend.client
    assert client.request("POST", "/v1/status-batches", batch, idempotency_key="same-batch") == {"rejected": []}
    assert client.request("POST", "/v1/status-batches", batch, idempotency_key="same-batch") == {"rejected": []}, \
        "a retried batch is answered, not applied again"
    assert [e["to"] for e in events(site.store, job_id)].count("RUN_DONE") == 1
    rejected = sink([StateChange(job_id, "RUNNING", session_id=source.session_id)])
    assert len(rejected) == 1 and "not allowed" in rejected[0][1]
    source.release()
    with pytest.raises(SessionExpired):
        backend.tick(12345)
    channel.stop()
    assert not (site.path / ".balsam" / "api.json").exists()


def test_site_agent_serves_remote_launchers(site: Any, hello: Any) -> None:
    from balsam.services.agent import start_agent, stop_agent

    [job_id] = runnable(site.store, [hello.submit("agent/1", say_hello_to="agent")])
    start_agent(site.path)
    try:
        wait_for(lambda: (site.path / ".balsam" / "api.json").exists(), what="the agent's API")
        proc = start(site.path, "mpi", idle_ttl_s=0.3, env=REMOTE)
        assert proc.wait(timeout=60) == 0
    finally:
        stop_agent(site.path)
    assert states(site.store, [job_id])[job_id] in ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
    assert "transport http" in launcher_log(site.path, "mpi")
    assert not (site.path / ".balsam" / "api.json").exists(), "the agent unpublishes its address when it stops"


@pytest.mark.slow
def test_an_agent_killed_and_restarted_under_a_remote_launcher_loses_nothing(site: Any) -> None:
    import signal

    from balsam.api import ApplicationDefinition
    from balsam.services.agent import read_status, start_agent, stop_agent

    class Nap(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep 0.4; echo napped {{ i }}"

    ids = runnable(site.store, [Nap.submit(f"nap/{i}", i=i, node_packing_count=4) for i in range(16)])
    pid = start_agent(site.path)
    proc = start(site.path, "mpi", idle_ttl_s=3.0, env=REMOTE)
    try:
        wait_for(lambda: "RUNNING" in states(site.store, ids).values(), timeout=60, what="a job to run")
        os.kill(pid, signal.SIGKILL)  # the agent dies without unpublishing its address
        time.sleep(3.0)  # the launcher keeps running its jobs; its status batches wait and retry
        pid = start_agent(site.path)  # a new port, a new address file; the launcher finds it
        assert read_status(site.layout)["pid"] == pid
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_agent(site.path)
    final = states(site.store, ids)
    assert all(s in ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED") for s in final.values()), final
    for job_id in ids:
        to = [e["to"] for e in events(site.store, job_id)]
        assert to.count("RUNNING") == 1 and to.count("RUN_DONE") == 1, (job_id, to)
    assert "transport http" in launcher_log(site.path, "mpi")
