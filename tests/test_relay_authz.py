"""Two users at a real relay server (SQLite; PostgreSQL too when it runs): every write route that takes ids or a
site in its body or query, not in its path, sent with bob's token (his login, then his site agent's) naming alice's
rows and site. Each is refused or touches nothing, no command ever reaches alice's site, her rows and command stay
as they were, and nothing in an answer names her rows."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest

from tests.test_relay_hostile import raw
from tests.test_relay_server import SITE_A, SITE_B, relay, two_users  # noqa: F401  (the fixtures)

A = SITE_A << 32
BATCH = {"queue": "debug", "project": "p", "num_nodes": 1, "wall_time_min": 10, "job_mode": "mpi"}
DAG = {"nodes": {"n": {"app": "Hello", "workdir": "d/{x}"}}}

# (method, target, body): alice's ids and site, by body or query, on every route that takes them there.
ATTEMPTS: List[Tuple[str, str, Any]] = [
    ("PATCH", "/v1/apps", [{"id": A + 1, "description": "bob was here"}]),
    ("POST", "/v1/apps/delete", {"ids": [A + 1]}),
    ("POST", "/v1/apps/code", {"ids": [A + 1]}),
    ("POST", "/v1/apps", {"name": "Hello", "kind": "shell", "serialized_class": "x", "source_code": "x", "site_id": SITE_A}),
    ("POST", "/v1/jobs", [{"workdir": "bob/1", "app_id": A + 1}]),
    ("POST", "/v1/jobs", [{"workdir": "bob/1", "app_id": A + 1, "site_id": SITE_A}]),
    ("PATCH", "/v1/jobs", [{"id": A + 1, "state": "USER_KILLED"}]),
    ("PATCH", "/v1/jobs", [{"id": A + 2, "tags": {"owner": "bob"}}]),
    ("PUT", f"/v1/jobs?id={A + 1}&site_id={SITE_A}", {"state": "USER_KILLED"}),
    ("PUT", "/v1/jobs", {"filters": {"id": [A + 1, A + 2, A + 3]}, "state": "USER_KILLED"}),
    ("DELETE", f"/v1/jobs?id={A + 1}&site_id={SITE_A}", None),
    ("POST", "/v1/jobs/delete", {"ids": [A + 1, A + 2, A + 3]}),
    ("POST", "/v1/uploads/jobs", {"upload": "bob", "part": 0, "jobs": [{"workdir": "bob/1", "app_id": A + 1}], "site_id": SITE_A}),
    ("POST", "/v1/uploads/jobs/commit", {"upload": "bob", "parts": 1, "site_id": SITE_A}),
    ("DELETE", f"/v1/uploads/jobs?upload=bob&site_id={SITE_A}", None),
    ("POST", "/v1/batch-jobs", {**BATCH, "site_id": SITE_A}),
    ("POST", "/v1/batch-jobs/preview", {**BATCH, "site_id": SITE_A}),
    ("PATCH", "/v1/batch-jobs", [{"id": A + 1, "state": "pending_deletion"}]),
    ("POST", "/v1/batch-jobs/delete", {"ids": [A + 1]}),
    ("PATCH", "/v1/transfers", [{"id": A + 1, "state": "done"}]),
    ("POST", "/v1/sessions", {"batch_job_id": A + 1}),
    ("POST", "/v1/status-batches", {"session_id": A + 1, "changes": [{"job_id": A + 1, "state": "RUN_DONE"}]}),
    ("PUT", "/v1/dags", {"name": "bobs", "spec": DAG, "site_id": SITE_A}),
    ("DELETE", f"/v1/dags?name=bobs&site_id={SITE_A}", None),
    ("POST", "/v1/dags/instantiate", {"name": "bobs", "records": [{"x": 1}], "site_id": SITE_A}),
    ("POST", "/v1/db/check", {"fix": True}),
    ("POST", "/v1/db/backup", {"dest": "/tmp/bob.db"}),
    ("POST", "/v1/db/vacuum", {}),
    ("POST", "/v1/sync/push", {"submission_id": "bob-1", "last_seq": 99, "items": [
        {"entity": "job", "op": "upsert", "id": A + 1, "row": {"id": A + 1, "app_id": A + 1, "workdir": "w/1", "state": "FAILED",
                                                               "tags": "{}", "parent_ids": "[]", "parameters": "{}", "created": 1.0,
                                                               "last_update": 1.0, "version": 99}}]}),
]


def _alice(users: Dict[str, Any]) -> Dict[str, Any]:
    """Everything of alice's a write could change, as she sees it."""
    alice = users["alice"]
    return {resource: sorted(json.dumps(r, sort_keys=True) for r in alice.request("GET", f"/v1/{resource}")["results"])
            for resource in ("jobs", "apps", "batch-jobs", "transfers")}


def test_bobs_tokens_naming_alices_rows_in_bodies_and_queries_change_nothing_of_hers(two_users: Dict[str, Any]) -> None:  # noqa: F811
    url, agent_a = two_users["url"], two_users["agent_a"]
    before = _alice(two_users)
    for who in ("bob", "agent_b"):
        token = two_users[who].token
        for method, target, body in ATTEMPTS:
            status, answer = raw(url, token, method, target, body)
            assert status in (200, 400, 401, 404) or (status == 202 and "site-b" in json.dumps(answer)), (who, method, target, answer)
            text = json.dumps(answer)
            assert "site-a" not in text and "alice" not in text, (who, method, target, answer)
            if status == 200 and isinstance(answer, dict):  # an answer that did something did it to none of alice's rows
                assert all(v in (0, [], {}, None) for k, v in answer.items() if k in ("updated", "deleted", "counts", "finished")), \
                    (who, method, target, answer)
    # Nothing reached alice's site, and nothing of hers changed.
    assert agent_a.request("GET", "/v1/sync/commands?after=0")["commands"] == []
    assert _alice(two_users) == before
    # Reads by body or query name none of her rows either.
    bob = two_users["bob"]
    counts = bob.request("POST", "/v1/dag-instances/counts", {"ids": [A + 1, A + 2]})["counts"]
    assert all(c == {} for c in counts.values()), counts  # as for ids that exist nowhere
    assert bob.request("GET", f"/v1/dag-instances?dag_id={A + 1}")["results"] == []
    assert bob.request("GET", f"/v1/dags?site_id={SITE_A}")["results"] == []
    for resource in ("jobs", "apps", "batch-jobs", "events", "transfers"):
        found = bob.request("POST", f"/v1/{resource}/query", {"filters": {"id": [A + 1, A + 2, A + 3]}, "aggregate": "ids"})
        assert found["ids"] == [], resource


def test_bobs_agent_cannot_answer_or_read_alices_commands(two_users: Dict[str, Any]) -> None:  # noqa: F811
    from balsam import exceptions as exc

    url, alice, agent_a, agent_b = two_users["url"], two_users["alice"], two_users["agent_a"], two_users["agent_b"]
    with pytest.raises(exc.CommandPending):
        alice.request("PATCH", f"/v1/jobs/{A + 1}", {"tags": {"k": "v"}})
    mine = agent_a.request("GET", "/v1/sync/commands?after=0")["commands"]
    assert len(mine) == 1
    command = int(mine[0]["id"])
    assert agent_b.request("GET", "/v1/sync/commands?after=0")["commands"] == []
    for guess in range(max(1, command - 3), command + 4):  # ids guessed in sequence
        status, answer = raw(url, agent_b.token, "POST", "/v1/sync/answers", {"results": [
            {"id": guess, "state": "applied", "result": {"forged": True}}]})
        assert status in (200, 400, 404) and "forged" not in json.dumps(answer), answer
        status, answer = raw(url, two_users["bob"].token, "GET", f"/v1/commands/{guess}")
        assert status == 404, answer
    assert alice.request("GET", f"/v1/commands/{command}")["state"] == "pending"
    assert [int(c["id"]) for c in agent_a.request("GET", "/v1/sync/commands?after=0")["commands"]] == [command]


def _trickle(stop: Any, socks: List[Any]) -> None:
    """One more byte of each login body every 2 s, until ``stop`` is set."""
    while not stop.wait(2.0):
        for s in socks:
            try:
                s.sendall(b" ")
            except OSError:
                pass


@pytest.mark.slow
def test_logins_trickled_a_byte_at_a_time_cannot_hold_the_relay_from_its_users(tmp_path: Any) -> None:
    """Anyone who reaches the relay may start a login. Before, a login body trickled a byte every few seconds held its
    connection for as long as the trickle went on, and enough of them (the server's connection limit: 1,000 by
    default, 40 here) answered every user 503. Now a body without credentials must arrive within 10 s."""
    import socket
    import threading
    import time

    from balsam.http.client import HttpClient
    from balsam.http.serve import ServeOptions
    from tests.relay_support import relay_store, served
    from tests.test_relay_server import login

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        with served(store, wait_s=0.5, options=ServeOptions(bind="127.0.0.1", port=0, max_connections=40)) as (server, url):
            alice = HttpClient(url=url, token=login(url, "alice", "alice-password").token, retry_s=0, timeout_s=10)
            stop = threading.Event()
            socks: List[Any] = []
            try:
                for _ in range(60):
                    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    s.sendall(b"POST /v1/tokens HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{")
                    socks.append(s)
                threading.Thread(target=_trickle, args=(stop, socks), daemon=True).start()
                refused, answered, started = 0, None, time.monotonic()
                while answered is None and time.monotonic() - started < 45:
                    try:
                        answered = alice.request("GET", "/v1/whoami")
                    except Exception as e:  # 503 while the slots are held
                        assert "503" in str(e), e
                        refused += 1
                        time.sleep(1.0)
                assert answered is not None and answered["user"] == "alice", f"alice was refused for 45 s ({refused} tries)"
                assert time.monotonic() - started < 30
                said = b""
                for s in socks[:5]:  # the trickling logins were told why
                    s.settimeout(5)
                    try:
                        said += s.recv(4096)
                    except OSError:
                        pass
                assert b"without credentials sends its body within 10 s" in said or b"503" in said, said[:300]
            finally:
                stop.set()
                for s in socks:
                    s.close()


@pytest.mark.slow
def test_clients_without_credentials_cannot_keep_connections_open_to_hold_the_relay(tmp_path: Any) -> None:
    """A /v1/health (or a dashboard file, or a wrong token) repeated on kept-alive connections held every slot of the
    server (40 here, 1,000 by default): every user got 503 for as long as it went on. Answers to callers without good
    credentials now close their connection; alice, with her token, is answered."""
    import socket
    import time

    from balsam.http.client import HttpClient
    from balsam.http.serve import ServeOptions
    from tests.relay_support import relay_store, served
    from tests.test_relay_server import login

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        with served(store, wait_s=0.5, options=ServeOptions(bind="127.0.0.1", port=0, max_connections=40)) as (server, url):
            alice = HttpClient(url=url, token=login(url, "alice", "alice-password").token, retry_s=0, timeout_s=10)
            socks: List[Any] = []
            try:
                for target, auth in (("/v1/health", b""), ("/v1/openapi.json", b""), ("/v1/jobs", b"Authorization: Bearer wrong\r\n")):
                    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                    s.sendall(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: relay\r\n" + auth + b"\r\n")
                    answer = b""
                    while True:  # the server answers, then closes: recv ends with b""
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                    s.close()
                    assert answer.startswith(b"HTTP/1.1 ") and b"connection: close" in answer.lower(), (target, answer[:200])
                for _ in range(60):  # more kept-alive anonymous clients than the server has slots
                    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: relay\r\n\r\n")
                    socks.append(s)
                for _ in range(3):
                    time.sleep(2)
                    for s in socks:  # each asks again on its connection, if the server kept it
                        try:
                            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: relay\r\n\r\n")
                        except OSError:
                            pass
                    assert alice.request("GET", "/v1/whoami")["user"] == "alice"
            finally:
                for s in socks:
                    s.close()


def test_a_site_learns_the_states_of_its_own_users_jobs_only(two_users: Dict[str, Any]) -> None:  # noqa: F811
    """``POST /v1/sync/parents`` (a site's jobs waiting on parents at another site) answers the states of the jobs
    named that are its user's, at any of their sites: bob's agent naming alice's jobs learns nothing, and neither
    a user's token nor a guessed id beyond them gets an answer."""
    from balsam import exceptions as exc

    agent_a, agent_b, bob = two_users["agent_a"], two_users["agent_b"], two_users["bob"]
    asked = {"ids": [A + 1, A + 2, A + 3, A + 99, (SITE_B << 32) + 1]}
    assert agent_a.request("POST", "/v1/sync/parents", asked)["states"] == {
        str(A + 1): "RUNNING", str(A + 2): "JOB_FINISHED", str(A + 3): "RUNNING"}
    assert agent_b.request("POST", "/v1/sync/parents", asked)["states"] == {str((SITE_B << 32) + 1): "RUNNING"}
    with pytest.raises(exc.ServiceError, match="site agent's token"):
        bob.request("POST", "/v1/sync/parents", asked)
    status, answer = raw(two_users["url"], agent_b.token, "POST", "/v1/sync/parents", {"ids": ["x"]})
    assert status == 400 and "ids" in json.dumps(answer)
