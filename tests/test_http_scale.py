"""The /v1 API under many launchers: each request reaches the route Starlette would pick without its router;
concurrent acquires share one transaction and still give every job once, a retry its first answer, and a bad
request its own error; the agent's processing reads the jobs in a state, not every job of the app."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from tests.launcher_support import runnable


@pytest.fixture
def api(site: Any) -> Iterator[Any]:
    """The site's API server on 127.0.0.1, with group commit (as the agent runs it)."""
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    yield server
    server.stop()


def _starlette_choice(app: Any, method: str, path: str) -> Tuple[Optional[Any], dict]:
    """The endpoint of the route Starlette's router gives the request (None: none matches fully) and its parameters."""
    from starlette.routing import Match

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": [], "query_string": b""}
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "app", None), dict(child.get("path_params") or {})
    return None, {}


def test_each_request_reaches_the_route_starlette_would_pick(site: Any, api: Any) -> None:
    from balsam.http.dispatch import SegmentRouter
    from balsam.http.routes import ROUTES

    app = api.app
    router = app.middleware_stack
    assert isinstance(router, SegmentRouter)
    paths = {r.path.replace("{id}", "123").replace("{path:path}", "js/app.js").replace("{name}", "x") for r in ROUTES}
    paths |= {"/v1/jobs/", "/v1/jobs//acquire", "/v1/sessions/abc/acquire", "/v1/sessions/7/acquire/", "/v1/nope", "/", "//"}
    direct = 0
    for path in sorted(paths):
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"):
            endpoint, params = router.match(method, path)
            if endpoint is None:
                continue  # left to Starlette itself
            direct += 1
            assert (endpoint, params) == _starlette_choice(app, method, path), f"{method} {path}"
    acquire, params = router.match("POST", "/v1/sessions/42/acquire")
    assert acquire is not None and acquire.route.name == "acquire" and params == {"id": "42"}
    assert router.match("POST", "/v1/status-batches")[0].route.name == "status_batch"  # type: ignore[union-attr]
    assert direct >= len([r for r in ROUTES if r.kind in ("json", "acquire")]), "the API's own routes are found directly"


def test_concurrent_acquires_give_each_job_once_and_retries_their_first_answer(site: Any, api: Any, hello: Any) -> None:
    from balsam.exceptions import SessionExpired
    from balsam.http.client import HttpBackend

    ids = runnable(site.store, [hello.submit(f"c/{i}", say_hello_to=str(i)) for i in range(90)])
    client = HttpBackend.for_site(site.path, retry_s=20).client
    sessions = [client.request("POST", "/v1/sessions", {"host": f"n{i}"})["id"] for i in range(16)]
    gone = sessions.pop()
    client.request("DELETE", f"/v1/sessions/{gone}")
    start = threading.Barrier(len(sessions) + 1)

    def acquire(sid: int) -> List[int]:
        start.wait(timeout=30)
        jobs = client.request("POST", f"/v1/sessions/{sid}/acquire", {"max_num_jobs": 5}, idempotency_key=f"acq-{sid}")["jobs"]
        return [j["id"] for j in jobs]

    with ThreadPoolExecutor(len(sessions) + 1) as pool:
        futures = [pool.submit(acquire, sid) for sid in sessions + [gone]]
        first = [f.result() for f in futures[:-1]]
        with pytest.raises(SessionExpired):
            futures[-1].result()
    taken = [i for js in first for i in js]
    assert len(taken) == 75 and len(set(taken)) == 75 and set(taken) <= set(ids), "every job to one lease only"
    held = dict(site.store.execute("SELECT id, session_id FROM job WHERE session_id IS NOT NULL"))
    assert {i: held[i] for i in taken} == {i: sid for sid, js in zip(sessions, first) for i in js}
    retries = [client.request("POST", f"/v1/sessions/{sid}/acquire", {"max_num_jobs": 5}, idempotency_key=f"acq-{sid}")["jobs"]
               for sid in sessions]
    assert [[j["id"] for j in r] for r in retries] == first, "a retried acquire returns the same jobs"


def test_a_batch_of_acquires_answers_each_on_its_own(site: Any, hello: Any) -> None:
    """One call of the writer runs many acquires: a retry in the batch replays the first, a reused key and an
    ended lease fail alone, an empty try stores nothing (the key stays free), the others commit."""
    from balsam.db.backend import LocalBackend
    from balsam.exceptions import SessionExpired, ValidationError

    backend = LocalBackend(site.store)
    ids = runnable(site.store, [hello.submit(f"b/{i}", say_hello_to=str(i)) for i in range(6)])
    s1, s2, s3, s4 = (backend.create_session(host="n", pid=1, batch_job_id=None, label="") for _ in range(4))
    backend.release(s3)

    def answer(jobs: List[Any]) -> Tuple[int, bytes]:
        return 200, ",".join(str(j["id"]) for j in jobs).encode()

    out = backend.acquire_batch([("k1", "f1", s1, 2, {}, False), ("k1", "f1", s1, 2, {}, False), ("k2", "f2", s2, 3, {}, False),
                                 ("k3", "f3", s3, 1, {}, False), ("k2", "other", s2, 3, {}, False), (None, "f4", s4, 1, {"bogus": 1}, False)],
                                answer)
    assert out[0] == (200, f"{ids[0]},{ids[1]}".encode(), False) and out[1] == (200, out[0][1], True)
    assert out[2] == (200, f"{ids[2]},{ids[3]},{ids[4]}".encode(), False)
    assert isinstance(out[3], SessionExpired) and isinstance(out[4], ValidationError) and isinstance(out[5], ValidationError)
    again = backend.acquire_batch([("k1", "f1", s1, 2, {}, True), ("k2", "f2", s2, 3, {}, True), ("k4", "f4", s4, 5, {"states": ["RUNNING"]}, False)],
                                  answer)
    assert again[0] == (200, out[0][1], True) and again[1] == (200, out[2][1], True), "answers kept in the DB"
    assert again[2] is None, "nothing runnable and not final: no answer kept"
    last = backend.acquire_batch([("k4", "f4", s4, 5, {}, True)], answer)
    assert last == [(200, str(ids[5]).encode(), False)], "the key was free for the next try"
    held = dict(site.store.execute("SELECT id, session_id FROM job"))
    assert held == {ids[0]: s1, ids[1]: s1, ids[2]: s2, ids[3]: s2, ids[4]: s2, ids[5]: s4}


def test_a_launchers_answers_are_kept_an_hour_others_a_day_and_then_forgotten(site: Any, hello: Any,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers kept for retries do not fill the disk: an acquire's answer (its jobs' ids) and a status batch's
    are kept an hour (past the lease and every client's retries), another write's a day; a sweep about once a minute
    forgets the expired ones, and a retry within the time still gets its answer."""
    from balsam.db import once
    from balsam.db.backend import LocalBackend
    from balsam.db.jobs import StateChange

    backend = LocalBackend(site.store)
    ids = runnable(site.store, [hello.submit(f"k/{i}", say_hello_to=str(i)) for i in range(3)])
    sid = backend.create_session(host="n", pid=1, batch_job_id=None, label="")
    got = backend.acquire_batch([("acq", "f", sid, 2, {}, False)], lambda jobs: (200, b"jobs"))
    assert got[0][2] is False
    backend.apply_batches_once([("st", "g", sid, [StateChange(ids[0], "RUNNING")])], lambda refused: (200, b"ok"))
    backend.once("other", "h", lambda: (201, b"made"))
    kept = {k: e - c for k, e, c in site.store.execute("SELECT key, expires, created FROM http_answer")}
    assert kept == pytest.approx({"acq": 3600.0, "st": 3600.0, "other": 86400.0})

    with site.store.write() as conn:  # the launcher's answers' hour has passed; the other's day has not
        conn.execute("UPDATE http_answer SET expires = expires - 3601")
    monkeypatch.setattr(once, "_last_sweep", [0.0])
    backend.once("next", "i", lambda: (201, b"made"))
    left = {k for (k,) in site.store.execute("SELECT key FROM http_answer")}
    assert left == {"other", "next"}
    assert backend.once("other", "h", lambda: (201, b"again")) == (201, b"made", True), "a retry within its day"


def test_processing_reads_the_jobs_in_a_state_not_every_job_of_the_app(site: Any, hello: Any) -> None:
    """The agent's processing looks for unlocked jobs in a state every cycle: the SQLite steps it takes stay the
    same when the app has thousands more finished jobs (it used to walk them all)."""
    from balsam.db import job_reads

    def steps() -> int:
        count = [0]
        conn = site.store.conn
        conn.set_progress_handler(lambda: count.__setitem__(0, count[0] + 1) or 0, 10)
        try:
            assert len(job_reads.unlocked_in_state(conn, ["RUN_DONE"], app_ids=[int(hello.__app_id__)], limit=1000)) == 5
        finally:
            conn.set_progress_handler(None, 0)
        return count[0]

    done = runnable(site.store, [hello.submit(f"p/{i}", say_hello_to=str(i)) for i in range(5)])
    with site.store.write() as conn:
        conn.execute(f"UPDATE job SET state='RUN_DONE' WHERE id IN ({','.join(map(str, done))})")
    few = steps()
    from balsam.api import Job

    Job.objects.bulk_create([Job(f"f/{i}", app_id=hello, parameters={"say_hello_to": str(i)}) for i in range(3000)])
    with site.store.write() as conn:
        conn.execute("UPDATE job SET state='JOB_FINISHED' WHERE workdir LIKE 'f/%'")
    assert site.store.execute("SELECT count(*) FROM job WHERE state='JOB_FINISHED'")[0][0] == 3000
    assert steps() < 2 * few + 50, "the finished jobs are not read"


def test_acquired_jobs_read_the_same_whichever_json_writer_wrote_them(site: Any, api: Any) -> None:
    """An acquire answer's jobs are written with orjson when it is installed: the launcher reads exactly what the
    standard library would have written (unicode, floats, None, bytes as base64)."""
    import json

    from balsam.http import server

    row = {"id": 2**62 + 3, "workdir": "runs/été/日本/x y", "wall_time_min": 12.5, "threads_per_core": 1, "batch_job_id": None,
           "parameters_pickled": b"\x00\x01\xff", "state": "PREPROCESSED", "tags": '{"a":"b"}', "parameters": '{"x":[1,2.0,"\\u00e9"]}'}
    text = server._acquired_text(dict(row))
    assert json.loads(text) == json.loads(server._json(server._acquired({**row, "tags": {"a": "b"}})))
    assert json.loads(text)["workdir"] == "runs/été/日本/x y" and json.loads(text)["parameters_pickled"] == {"__b64__": "AAH/"}


def test_idempotency_keys_are_unique_and_grow_with_time() -> None:
    """The client's keys sort in the order they were made (the server's B-tree of answers is appended to, not
    written all over) and never repeat, across threads."""
    from balsam.http.client import new_key

    keys: List[str] = []
    lock = threading.Lock()

    def make(_: int) -> None:
        mine = [new_key() for _ in range(2000)]
        assert mine == sorted(mine)
        with lock:
            keys.extend(mine)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, range(4)))
    assert len(set(keys)) == len(keys) == 8000 and all(len(k) == 32 for k in keys)


def test_idle_launchers_waiting_for_work_share_one_watch_and_the_first_job_wakes_them(site: Any, api: Any, hello: Any,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """24 launchers with free slots wait in acquire (wait_s) on an empty site: the agent polls the DB once for all
    of them, not once each, and a job made runnable meanwhile goes to one of them before the others' waits end."""
    import time

    from balsam.http.client import HttpBackend

    backend = HttpBackend.for_site(site.path, retry_s=20)
    sessions = [backend.create_session(host=f"n{i}", pid=1, batch_job_id=None, label="") for i in range(24)]
    looks = [0]
    version = site.store.data_version

    def counted() -> int:
        looks[0] += 1
        return int(version())

    monkeypatch.setattr(site.store, "data_version", counted)  # what the agent reads to see that something changed
    started = threading.Barrier(len(sessions) + 1)

    def wait_for_work(sid: int) -> Tuple[List[int], float]:
        started.wait(timeout=30)
        t0 = time.monotonic()
        jobs = backend.acquire(sid, 5, wait_s=4.0)
        return [int(j["id"]) for j in jobs], time.monotonic() - t0

    with ThreadPoolExecutor(len(sessions)) as pool:
        futures = [pool.submit(wait_for_work, sid) for sid in sessions]
        started.wait(timeout=30)
        time.sleep(1.0)  # they are all waiting now
        [job_id] = runnable(site.store, [hello.submit("w/1", say_hello_to="w")])
        results = [f.result() for f in futures]
    winners = [(jobs, took) for jobs, took in results if jobs]
    assert [jobs for jobs, _ in winners] == [[job_id]], "one launcher took the job"
    assert winners[0][1] < min(took for jobs, took in results if not jobs), "it did not wait for the others' timeout"
    assert 0 < looks[0] < 24 * 4.0 / 0.02 / 4, "one poll serves every waiting launcher"


def test_an_acquire_answer_kept_whole_by_an_earlier_balsam_is_still_replayed(site: Any, hello: Any) -> None:
    """Answers kept before an upgrade (the whole JSON body) are answered as they were kept; new ones keep the ids and
    a retry reads the same jobs again, in the order first answered."""
    from balsam.db.backend import LocalBackend

    backend = LocalBackend(site.store)
    ids = runnable(site.store, [hello.submit(f"u/{i}", say_hello_to=str(i)) for i in range(3)])
    sid = backend.create_session(host="n", pid=1, batch_job_id=None, label="")
    with site.store.write() as conn:
        conn.execute("INSERT INTO http_answer(key, fingerprint, status, body, created, expires) VALUES ('old', 'f', 200, ?, 0, 9e12)",
                     (b'{"jobs":[{"id":1}]}',))
    assert backend.acquire_batch([("old", "f", sid, 2, {}, False)]) == [(200, b'{"jobs":[{"id":1}]}', True)]
    new = backend.acquire_batch([("new", "f", sid, 3, {}, False)])[0]
    kept = site.store.execute("SELECT body FROM http_answer WHERE key='new'")[0][0]
    assert bytes(kept) == b"ids:" + ",".join(str(j["id"]) for j in new[1]).encode() and sorted(j["id"] for j in new[1]) == sorted(ids)
    again = backend.acquire_batch([("new", "f", sid, 3, {}, False)])[0]
    assert again == (200, new[1], True)


def test_a_retry_in_the_same_group_gets_the_same_answer_when_the_server_encodes_both(site: Any, hello: Any) -> None:
    """Two requests with one key in one group: the server makes each answer from its own jobs (making one takes the
    JSON columns out of its jobs), and both answers are the same."""
    from balsam.db.backend import LocalBackend
    from balsam.http.server import _acquire_answer

    backend = LocalBackend(site.store)
    runnable(site.store, [hello.submit(f"d/{i}", say_hello_to=str(i)) for i in range(2)])
    sid = backend.create_session(host="n", pid=1, batch_job_id=None, label="")
    first, retry = backend.acquire_batch([("k", "f", sid, 2, {}, False), ("k", "f", sid, 2, {}, False)])
    assert first[2] is False and retry[2] is True and len(first[1]) == 2
    one, two = _acquire_answer(first[1]), _acquire_answer(retry[1])
    assert one == two and b'"tags":{}' in one[1] and b'"workdir":"d/0"' in one[1]
