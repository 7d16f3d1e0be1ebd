"""An agent serving its /v1 API from several processes on one port (``api.workers``): connections reach every
process; a request replayed to another process is refused as at the first; a retry that reaches another process
gets the first answer (an acquire its jobs, a status batch applied once); many launchers spread over the
processes run every job exactly once; a worker that dies is started again."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.launcher_support import runnable


@pytest.fixture
def api2(site: Any) -> Iterator[Any]:
    """The site's API served by this process and one worker process, on 127.0.0.1."""
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1", workers=2), host=this_host())
    try:
        yield server
    finally:
        server.stop()


def _secret(site: Any) -> bytes:
    return (site.path / ".balsam" / "api.secret").read_bytes().strip()


def _connection_to(api: Any, pid: int, within_s: float = 30.0) -> Any:
    """A keep-alive connection whose requests the process ``pid`` answers (connections are spread by the kernel)."""
    from balsam.http.wire import Connection

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        conn = Connection("127.0.0.1", api.port, timeout=10)
        status, _headers, body = conn.exchange("GET", "/v1/health", b"", {})
        assert status == 200
        if json.loads(body)["pid"] == pid:
            return conn
        conn.close()
    raise AssertionError(f"no connection reached process {pid} within {within_s:g} s")


def _signed(site: Any, method: str, target: str, payload: Any = None, key: Optional[str] = None) -> Tuple[bytes, Dict[str, str]]:
    from balsam.http.auth import sign_request

    body = b"" if payload is None else json.dumps(payload).encode()
    headers = dict(sign_request(_secret(site), method, target, body), **{"Content-Type": "application/json"})
    if key:
        headers["Idempotency-Key"] = key
    return body, headers


def test_connections_reach_every_process_and_a_replay_is_refused_at_the_other(site: Any, api2: Any) -> None:
    from balsam.http.wire import Connection

    assert len(api2.workers.pids) == 1
    worker = api2.workers.pids[0]
    assert worker != os.getpid()
    seen = set()
    for _ in range(40):
        conn = Connection("127.0.0.1", api2.port, timeout=10)
        seen.add(json.loads(conn.exchange("GET", "/v1/health", b"", {})[2])["pid"])
        conn.close()
    assert seen == {os.getpid(), worker}, "the kernel spreads connections over both processes"

    here, there = _connection_to(api2, os.getpid()), _connection_to(api2, worker)
    body, headers = _signed(site, "POST", "/v1/sessions", {"host": "n1"})
    status, _h, answer = there.exchange("POST", "/v1/sessions", body, headers)
    assert status == 201 or status == 200, answer
    for conn in (here, there):  # the exact same request again, at the other process and at the same one
        status, _h, answer = conn.exchange("POST", "/v1/sessions", body, headers)
        assert status == 401 and "replayed" in json.loads(answer)["error"]["message"]
    body, headers = _signed(site, "GET", "/v1/whoami")
    assert here.exchange("GET", "/v1/whoami", body, headers)[0] == 200
    assert there.exchange("GET", "/v1/whoami", body, headers)[0] == 401
    assert site.store.execute("SELECT count(*) FROM session")[0][0] == 1, "the replayed session was not created"


def test_a_retry_at_the_other_process_gets_the_first_answer(site: Any, api2: Any, hello: Any) -> None:
    ids = runnable(site.store, [hello.submit(f"r/{i}", say_hello_to=str(i)) for i in range(6)])
    here, there = _connection_to(api2, os.getpid()), _connection_to(api2, api2.workers.pids[0])
    body, headers = _signed(site, "POST", "/v1/sessions", {"host": "n1"})
    sid = json.loads(here.exchange("POST", "/v1/sessions", body, headers)[2])["id"]

    target = f"/v1/sessions/{sid}/acquire"
    first = here.exchange("POST", target, *_signed(site, "POST", target, {"max_num_jobs": 3}, key="acq-1"))
    retry = there.exchange("POST", target, *_signed(site, "POST", target, {"max_num_jobs": 3}, key="acq-1"))
    got = [j["id"] for j in json.loads(first[2])["jobs"]]
    assert first[0] == retry[0] == 200 and len(got) == 3 and set(got) <= set(ids)
    assert [j["id"] for j in json.loads(retry[2])["jobs"]] == got, "the retry returns the same jobs"
    assert retry[1].get("idempotent-replayed") == "true"

    batch = {"session_id": sid, "changes": [{"job_id": j, "state": "RUNNING"} for j in got]}
    first = there.exchange("POST", "/v1/status-batches", *_signed(site, "POST", "/v1/status-batches", batch, key="st-1"))
    retry = here.exchange("POST", "/v1/status-batches", *_signed(site, "POST", "/v1/status-batches", batch, key="st-1"))
    assert first[0] == retry[0] == 200 and json.loads(first[2])["rejected"] == []
    assert retry[1].get("idempotent-replayed") == "true"
    runs = site.store.execute("SELECT job_id, count(*) FROM event WHERE to_state='RUNNING' GROUP BY job_id")
    assert sorted(runs) == [(j, 1) for j in sorted(got)], "each job started once"


@pytest.mark.slow
def test_many_launchers_over_both_processes_run_every_job_once(site: Any, api2: Any, hello: Any) -> None:
    from balsam.api import Job
    from balsam.db.jobs import StateChange
    from balsam.http.client import HttpBackend

    jobs = Job.objects.bulk_create([Job(f"m/{i}", app_id=hello, parameters={"say_hello_to": str(i)}) for i in range(600)])
    ids = runnable(site.store, jobs)
    backend = HttpBackend.for_site(site.path, retry_s=60)
    ran: List[int] = []
    lock = threading.Lock()

    def launcher(n: int) -> None:
        sid = backend.create_session(host=f"node{n}", pid=os.getpid(), batch_job_id=None, label="test")
        try:
            while True:
                got = backend.acquire(sid, 7)
                if not got:
                    return
                now = time.time()
                backend.apply_changes([StateChange(j["id"], "RUNNING", now, session_id=sid) for j in got])
                backend.apply_changes([c for j in got for c in (
                    StateChange(j["id"], "RUN_DONE", now, {"returncode": 0}, {"return_code": 0}, sid),
                    StateChange(j["id"], "POSTPROCESSED", now, None, None, sid))])
                with lock:
                    ran.extend(j["id"] for j in got)
        finally:
            backend.release(sid)

    with ThreadPoolExecutor(24) as pool:
        for f in [pool.submit(launcher, n) for n in range(24)]:
            f.result(timeout=120)
    assert sorted(ran) == sorted(ids), "every job was acquired exactly once"
    done = site.store.execute("SELECT job_id, count(*) FROM event WHERE to_state='RUN_DONE' GROUP BY job_id")
    assert sorted(done) == [(j, 1) for j in sorted(ids)]
    assert {s for (s,) in site.store.execute("SELECT DISTINCT state FROM job")} == {"JOB_FINISHED"}


@pytest.mark.slow
def test_a_worker_that_dies_is_started_again_and_clients_ride_through(site: Any, api2: Any, caplog: Any) -> None:
    from balsam.http.client import HttpClient

    client = HttpClient(site.path / ".balsam", retry_s=60)
    old = api2.workers.pids[0]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not api2.workers.pids or api2.workers.pids == [old]):
        time.sleep(0.1)
    assert api2.workers.pids and api2.workers.pids[0] != old, "the agent started the worker again"
    new = api2.workers.pids[0]
    assert _connection_to(api2, new) is not None
    assert all(client.request("GET", "/v1/whoami")["kind"] == "site" for _ in range(20))
    assert f"API worker 0 (pid {old}) exited with -9: starting it again" in caplog.text, "the agent's log says so"


def test_the_processes_share_one_replay_memory(tmp_path: Path) -> None:
    from balsam.db import nonces
    from balsam.db.nonces import SharedNonces

    a, b = SharedNonces(tmp_path / "nonces.db", window_s=10), SharedNonces(tmp_path / "nonces.db", window_s=10)
    now = time.time()
    assert a.add("n1", now) and not b.add("n1", now) and not a.add("n1", now + 1)
    assert b.add("old", now - 100)  # seen more than twice the window ago: forgotten at the next pruning
    for i in range(nonces.PRUNE_EVERY):
        b.add(f"x{i}", now)
    assert a.add("old", now), "a nonce older than twice the window is forgotten (no request that old is accepted)"
    assert not a.add("n1", now), "a recent one is not"


def test_a_bad_number_of_workers_is_one_clear_error(site: Any) -> None:
    import yaml

    from balsam.exceptions import ConfigError
    from balsam.settings import load_settings

    path = site.layout.settings_path
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("api", {})["workers"] = 0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="api.workers: must be between 1 and 64"):
        load_settings(path)


def test_a_port_another_agent_serves_from_several_processes_is_never_shared() -> None:
    from balsam.exceptions import ServiceError
    from balsam.http.serve import bind_socket

    other = bind_socket("127.0.0.1", [0], reuse_port=True)  # another site's agent, serving from several processes
    port = int(other.getsockname()[1])
    try:
        with pytest.raises(ServiceError, match="cannot listen"):
            bind_socket("127.0.0.1", [port], reuse_port=True)
        own = bind_socket("127.0.0.1", [port], reuse_port=True, join=True)  # that agent's own worker joins it
        assert own.getsockname()[1] == port
        own.close()
    finally:
        other.close()


@pytest.mark.slow
def test_an_agent_set_to_two_workers_serves_from_both_and_leaves_none_behind(site: Any, hello: Any) -> None:
    import yaml

    from balsam.http.client import HttpBackend
    from balsam.http.wire import Connection
    from balsam.services.agent import start_agent, stop_agent

    path = site.layout.settings_path
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("api", {}).update(workers=2, bind="127.0.0.1")
    path.write_text(yaml.safe_dump(data))
    agent = start_agent(site.path)
    try:
        port = json.loads((site.path / ".balsam" / "api.json").read_text())["port"]
        pids = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            conn = Connection("127.0.0.1", port, timeout=10)
            pids.add(json.loads(conn.exchange("GET", "/v1/health", b"", {})[2])["pid"])
            conn.close()
        assert agent in pids and len(pids) == 2, "the agent and its worker both answer"
        worker = (pids - {agent}).pop()
        ids = [int(hello.submit(f"a/{i}", say_hello_to=str(i)).id) for i in range(5)]
        backend = HttpBackend.for_site(site.path, retry_s=30)
        sid = backend.create_session(host="node1", pid=os.getpid(), batch_job_id=None, label="test")
        got: List[int] = []
        while len(got) < len(ids) and time.monotonic() < deadline + 30:  # the agent's processing makes them runnable
            got += [j["id"] for j in backend.acquire(sid, 10, wait_s=1.0)]
        assert sorted(got) == sorted(ids)
        backend.release(sid)
    finally:
        stop_agent(site.path)
    with pytest.raises(ProcessLookupError):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            os.kill(worker, 0)  # the worker is gone with its agent (a zombie until reaped would still answer)
            time.sleep(0.1)
