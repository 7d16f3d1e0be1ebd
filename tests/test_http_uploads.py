"""A bulk creation too large for one request, from another host: sent in parts the agent keeps in the site DB, then
created by one request in one transaction. All or nothing, as on the home host, whether the client is killed
between parts or the agent is killed and restarted at any point; every retry applies once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import pytest

from balsam.api import Job
from balsam.db import uploads
from balsam.exceptions import ValidationError
from tests.cli_helpers import ROOT
from tests.conftest import FOREIGN_HOST
from tests.launcher_support import wait_for

CLIENT = """
import json, sys
import balsam.http.client as client
client.CREATE_CHUNK = int(sys.argv[1])  # parts of this many jobs (5,000 by default)
from balsam.api import Job
jobs = Job.objects.bulk_create([Job(f"{sys.argv[3]}/{i}", app_id="Hello", parameters={"say_hello_to": str(i)})
                                for i in range(int(sys.argv[2]))])
print(json.dumps([j.id for j in jobs]))
"""


def _staged(store: Any) -> int:
    with store.read() as conn:
        return uploads.staged(conn)


def _count(store: Any, prefix: str) -> int:
    with store.read() as conn:
        return int(conn.execute("SELECT count(*) FROM job WHERE workdir LIKE ?", (f"{prefix}/%",)).fetchone()[0])


def _client(site: Any, chunk: int, n: int, prefix: str) -> "subprocess.Popen[str]":
    """A real process on another host (BALSAM_HOSTNAME) that bulk-creates ``n`` jobs in parts of ``chunk``."""
    env = dict(os.environ, BALSAM_HOSTNAME=FOREIGN_HOST, BALSAM_SITE_PATH=str(site.path),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(chunk), str(n), prefix], env=env, cwd=str(site.path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def agent(site: Any, hello: Any) -> Iterator[Dict[str, int]]:
    """The site's real agent process (its pid under "pid"; a test may kill and restart it)."""
    from balsam.services.agent import start_agent, stop_agent

    proc = {"pid": start_agent(site.path)}
    try:
        yield proc
    finally:
        stop_agent(site.path)


@pytest.fixture
def foreign(site: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """This process on another host, reaching the site through an API server (as its agent serves it)."""
    from balsam._api import sites
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=site.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    sites.reset()
    try:
        backend = sites.resolve("test-site").backend
        assert backend.kind == "http"
        yield backend
    finally:
        sites.reset()
        server.stop()


def test_a_bulk_create_in_parts_makes_every_job_at_once_and_reports_them_in_order(site: Any, home: Any, foreign: Any,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.http.client as client

    monkeypatch.setattr(client, "CREATE_CHUNK", 40)
    jobs = Job.objects.bulk_create([Job(f"p/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}) for i in range(230)])
    with home.read() as conn:
        rows = conn.execute("SELECT id, workdir, state FROM job ORDER BY id").fetchall()
        created = {r[0] for r in conn.execute("SELECT created FROM job")}
        applied = conn.execute("SELECT count(*) FROM http_upload WHERE part = ?", (uploads.APPLIED,)).fetchone()[0]
    assert [(j.id, j.workdir, j.state) for j in jobs] == [tuple(r) for r in rows]
    assert len(rows) == 230 and len(created) == 1  # one transaction: one creation time for all 230
    assert applied == 1 and _staged(home) == 0  # six parts, one upload, nothing left staged

    monkeypatch.setattr(client, "CREATE_CHUNK", 3)
    with pytest.raises(ValidationError, match="workdir 'p/7' is already used"):  # refused in the last part: none made
        Job.objects.bulk_create([Job(f"q/{i}", app_id="Hello", parameters={"say_hello_to": "x"}) for i in range(9)]
                                + [Job("p/7", app_id="Hello", parameters={"say_hello_to": "x"})])
    assert _count(home, "q") == 0 and _staged(home) == 0  # the client dropped its parts


def test_a_retried_part_or_commit_applies_once(site: Any, home: Any, foreign: Any) -> None:
    request = foreign.client.request
    app_id = int(home.execute("SELECT id FROM app WHERE name='Hello'")[0][0])

    def part(n: int) -> Dict[str, Any]:
        return {"upload": "up-1", "part": n, "offset": 2 * n,
                "jobs": [{"workdir": f"r/{2 * n + k}", "app_id": app_id, "parameters": {"say_hello_to": "x"}} for k in range(2)]}

    assert request("POST", "/v1/uploads/jobs", part(0), idempotency_key="p0")["kept"] is True
    assert request("POST", "/v1/uploads/jobs", part(1), idempotency_key="p1")["kept"] is True
    assert request("POST", "/v1/uploads/jobs", part(1), idempotency_key="p1-again")["kept"] is True  # a re-send replaces itself
    assert _staged(home) == 2 and _count(home, "r") == 0  # kept, not created
    first = request("POST", "/v1/uploads/jobs/commit", {"upload": "up-1", "parts": 2}, idempotency_key="commit")
    again = request("POST", "/v1/uploads/jobs/commit", {"upload": "up-1", "parts": 2}, idempotency_key="commit")
    assert again == first and _count(home, "r") == 4
    assert sum(n for _, n in first["ids"]) == 4 and first["states"] == [["STAGED_IN", 4]]
    late = request("POST", "/v1/uploads/jobs", part(0), idempotency_key="p0-late")  # a part's retry after the commit
    assert late["kept"] is False and _staged(home) == 0
    with pytest.raises(ValidationError, match="upload 'up-1' was applied already"):
        request("POST", "/v1/uploads/jobs/commit", {"upload": "up-1", "parts": 2}, idempotency_key="another-commit")
    with pytest.raises(ValidationError, match="part 1 of 2 never arrived"):
        request("POST", "/v1/uploads/jobs", dict(part(0), upload="up-2"))
        request("POST", "/v1/uploads/jobs/commit", {"upload": "up-2", "parts": 2})
    assert _count(home, "r") == 4
    with pytest.raises(ValidationError, match="job 's/5': app Hello needs parameter 'say_hello_to'"):  # each part is checked
        request("POST", "/v1/uploads/jobs", {"upload": "up-3", "part": 2, "offset": 4,
                                             "jobs": [{"workdir": "s/4", "app_id": app_id, "parameters": {"say_hello_to": "x"}},
                                                      {"workdir": "s/5", "app_id": app_id}]})
    with pytest.raises(ValidationError, match="job 5: unknown field 'nodes'"):  # named by its index in the whole upload
        request("POST", "/v1/uploads/jobs", {"upload": "up-3", "part": 2, "offset": 4,
                                             "jobs": [{"workdir": "s/4", "app_id": app_id}, {"workdir": "s/5", "app_id": app_id, "nodes": 2}]})
    assert _staged(home) == 1  # up-2's part 0 (up-3's parts were refused)


@pytest.mark.slow
def test_a_client_killed_between_parts_creates_nothing_and_its_parts_expire(site: Any, home: Any, agent: Any) -> None:
    client = _client(site, 200, 20_000, "k")  # 100 parts
    try:
        wait_for(lambda: _staged(home) >= 3 or _count(home, "k") > 0, 60.0, 0.005, "three parts at the agent")
        client.send_signal(signal.SIGSTOP)  # caught between parts
        assert _count(home, "k") == 0
        client.kill()  # kill -9
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert 3 <= _staged(home) < 100 and _count(home, "k") == 0  # nothing half-made: its parts wait, unused
    with home.write() as conn:  # a day and more later
        conn.execute("UPDATE http_upload SET created = created - ?", (uploads.KEEP_S + 60,))
    late = _client(site, 200, 300, "n")  # the next upload expires them
    out, err = late.communicate(timeout=120)
    assert late.returncode == 0, err
    assert _count(home, "n") == 300 and _count(home, "k") == 0 and _staged(home) == 0


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["between_parts", "once_every_part_is_staged"])
def test_an_agent_killed_and_restarted_under_a_bulk_create_makes_every_job_once(site: Any, home: Any, agent: Any, moment: str) -> None:
    from balsam.services.agent import start_agent

    n, chunk = 6000, 200  # 30 parts
    client = _client(site, chunk, n, "a")
    try:
        need = 5 if moment == "between_parts" else n // chunk
        wait_for(lambda: _staged(home) >= need or _count(home, "a") > 0, 60.0, 0.005, f"{need} parts at the agent")
        os.kill(agent["pid"], signal.SIGKILL)  # the agent dies mid-upload (or with the commit on its way)
        time.sleep(0.5)
        agent["pid"] = start_agent(site.path)  # a new process on a new port; the client finds it and retries
        out, err = client.communicate(timeout=180)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err
    ids: List[int] = json.loads(out)
    with home.read() as conn:
        rows = conn.execute("SELECT id, workdir FROM job WHERE workdir LIKE 'a/%' ORDER BY id").fetchall()
    assert len(rows) == n and [r[0] for r in rows] == ids  # every job once, the ids the client was told
    assert [r[1] for r in rows] == [f"a/{i}" for i in range(n)]
    assert _staged(home) == 0


@pytest.mark.slow
def test_a_commit_the_agent_never_answers_says_the_jobs_are_all_or_none(site: Any, home: Any, hello: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.http.client as client
    from balsam._api import sites
    from balsam.exceptions import ServiceError
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=site.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    monkeypatch.setattr(client, "CREATE_CHUNK", 2)
    sites.reset()
    backend = sites.resolve("test-site").backend
    backend.client.retry_s = 1.0
    real = backend.client.request

    def agent_stops_before_the_commit(method: str, path: str, *args: Any, **kw: Any) -> Any:
        if path.endswith("/commit"):
            server.stop()  # the agent goes away with every part staged
        return real(method, path, *args, **kw)

    monkeypatch.setattr(backend.client, "request", agent_stops_before_the_commit)
    try:
        with pytest.raises(ServiceError, match=r"the 5 jobs were created all together or not at all: look for one of them, e\.g\. "
                                               r"workdir 'c/0', before sending them again"):
            Job.objects.bulk_create([Job(f"c/{i}", app_id="Hello", parameters={"say_hello_to": "x"}) for i in range(5)])
    finally:
        sites.reset()
        server.stop()
    assert _count(home, "c") == 0 and _staged(home) == 3  # none made; the parts expire


def test_an_app_changed_between_the_parts_and_the_commit_is_checked_again(site: Any, home: Any, foreign: Any) -> None:
    """Each part's jobs are checked against their app when the part arrives; the commit checks them again only if
    the app was re-synced since, so a job made invalid by the change is refused and none is created."""
    from balsam.api import ApplicationDefinition

    request = foreign.client.request
    app_id = int(home.execute("SELECT id FROM app WHERE name='Hello'")[0][0])
    jobs = [{"workdir": f"v/{k}", "app_id": app_id, "parameters": {"say_hello_to": "x"}} for k in range(3)]
    request("POST", "/v1/uploads/jobs", {"upload": "same", "part": 0, "jobs": jobs})
    assert sum(n for _, n in request("POST", "/v1/uploads/jobs/commit", {"upload": "same", "parts": 1})["ids"]) == 3
    request("POST", "/v1/uploads/jobs", {"upload": "changed", "part": 0, "jobs": [dict(j, workdir=f"w/{k}") for k, j in enumerate(jobs)]})

    class Hello(ApplicationDefinition):  # re-synced at the site's home host: a new required parameter
        site = "test-site"
        command_template = "echo {{ greeting }}, {{ say_hello_to }}!"

    from balsam._api import sites

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BALSAM_HOSTNAME")
        sites.reset()
        Hello.sync()
    sites.reset()
    assert Hello.__app_id__ == app_id
    with pytest.raises(ValidationError, match="job 'w/0': app Hello needs parameter 'greeting'"):
        request("POST", "/v1/uploads/jobs/commit", {"upload": "changed", "parts": 1})
    assert _count(home, "w") == 0 and _count(home, "v") == 3


def test_a_create_can_be_answered_with_ids_and_states_only(site: Any, home: Any, foreign: Any) -> None:
    """``POST /v1/jobs?answer=ids``: the ids and initial states as runs (what the Python API from another host asks
    for: it has the jobs already), instead of every job as created; an unknown answer form is refused by name."""
    request = foreign.client.request
    app_id = int(home.execute("SELECT id FROM app WHERE name='Hello'")[0][0])
    first = Job.objects.create(workdir="parent", app_id="Hello", parameters={"say_hello_to": "p"})
    jobs = [{"workdir": f"a/{k}", "app_id": app_id, "parameters": {"say_hello_to": "x"}} for k in range(4)]
    jobs[2]["parent_ids"] = [first.id]
    answer = request("POST", "/v1/jobs?answer=ids", jobs)
    assert answer["ids"] == [[first.id + 1, 4]] and answer["states"] == [["STAGED_IN", 2], ["AWAITING_PARENTS", 1], ["STAGED_IN", 1]]
    with home.read() as conn:
        created = conn.execute("SELECT created FROM job WHERE id = ?", (first.id + 1,)).fetchone()[0]
    from balsam.http.schemas import epoch

    assert abs(epoch(answer["created"]) - created) < 1e-3
    rows = request("POST", "/v1/jobs", [{"workdir": "b/0", "app_id": app_id, "parameters": {"say_hello_to": "y"}}])
    assert [(r["workdir"], r["state"]) for r in rows] == [("b/0", "STAGED_IN")]
    with pytest.raises(ValidationError, match="answer: 'rows'.*or 'ids'.*got 'xml'") as e:
        request("POST", "/v1/jobs?answer=xml", [{"workdir": "c/0", "app_id": app_id, "parameters": {"say_hello_to": "y"}}])
    assert getattr(e.value, "field", "answer") == "answer" and _count(home, "c") == 0
