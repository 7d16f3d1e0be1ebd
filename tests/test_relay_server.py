"""The relay's /v1 server on SQLite and PostgreSQL: password login (401, 429), tokens (list, revoke, logout),
site linking, idempotent pushes, the same routes as a site agent's over the caller's mirrors, writes queued as
commands that the site pulls and answers, plain HTTP refused for tokens, and two users: every route that names
a row answers the other user 404."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

pytest.importorskip("sqlalchemy", reason="the relay needs its extra (balsam[relay])")

from balsam import exceptions as exc
from tests.relay_support import DATABASES, created_at, relay_store, served

SITE_A, SITE_B = 7, 9


@pytest.fixture(params=DATABASES)
def relay(request: Any, tmp_path: Path) -> Iterator[Tuple[Any, str]]:
    """A relay server (writes wait 0.5 s for their site) over a fresh store; (store, URL)."""
    for store in relay_store(request.param, tmp_path):
        store.add_user("alice", "alice-password")
        store.add_user("bob", "bob-password")
        with served(store, wait_s=0.5) as (_server, url):
            yield store, url


def client(url: str, token: str) -> Any:
    from balsam.http.client import HttpClient

    return HttpClient(url=url, token=token, retry_s=2)


def login(url: str, user: str, password: str) -> Any:
    anonymous = client(url, "none")
    anonymous.token = ""
    return client(url, anonymous.request("POST", "/v1/tokens", {"user": user, "password": password})["token"])


def site_rows(site_id: int, n: int) -> List[Dict[str, Any]]:
    base = site_id << 32
    now = time.time()
    items: List[Dict[str, Any]] = [{"entity": "app", "op": "upsert", "id": base + 1,
                                    "row": {"id": base + 1, "name": "Hello", "parameters": "{}", "var_keyword": 0,
                                            "source_code": "print('secret')", "version": 1}},
                                   {"entity": "batch_job", "op": "upsert", "id": base + 1,
                                    "row": {"id": base + 1, "state": "queued", "queue": "debug", "project": "p", "num_nodes": 1,
                                            "wall_time_min": 10, "job_mode": "mpi", "created": created_at(base + 1), "version": 1}}]
    for i in range(1, n + 1):
        items.append({"entity": "job", "op": "upsert", "id": base + i,
                      "row": {"id": base + i, "app_id": base + 1, "workdir": f"w/{i}", "state": "RUNNING" if i % 2 else "JOB_FINISHED",
                              "tags": json.dumps({"exp": str(i % 2)}), "parent_ids": "[]", "parameters": "{}",
                              "created": created_at(base + i), "last_update": now, "version": 1}})
        items.append({"entity": "event", "op": "upsert", "id": base + i,
                      "row": {"id": base + i, "job_id": base + i, "timestamp": now, "from_state": "READY", "to_state": "RUNNING",
                              "data": json.dumps({"message": f"started {i}"})}})
    return items


@pytest.fixture
def two_users(relay: Tuple[Any, str]) -> Dict[str, Any]:
    """alice with site 7 (3 jobs) and bob with site 9 (2 jobs), each linked and pushed."""
    _, url = relay
    alice, bob = login(url, "alice", "alice-password"), login(url, "bob", "bob-password")
    out: Dict[str, Any] = {"url": url, "alice": alice, "bob": bob}
    for who, user, site_id, n in (("a", alice, SITE_A, 3), ("b", bob, SITE_B, 2)):
        link = user.request("POST", "/v1/sites", {"site_id": site_id, "name": f"site-{who}", "hostname": "h", "path": "/p"})
        agent = client(url, link["token"])
        answer = agent.request("POST", "/v1/sync/push", {"submission_id": f"first-push-{who}", "last_seq": 10,
                                                          "items": site_rows(site_id, n),
                                                          "site": {"backlog": {"RUNNING": 1}, "row": {"name": f"site-{who}"}}})
        assert answer["applied"] == 2 + 2 * n
        out[f"agent_{who}"] = agent
    return out


def test_login_tokens_and_logout(relay: Tuple[Any, str]) -> None:
    _, url = relay
    anonymous = client(url, "none")
    anonymous.token = ""
    with pytest.raises(exc.ServiceError, match="wrong user name or password"):
        anonymous.request("POST", "/v1/tokens", {"user": "alice", "password": "not-her-password"})
    for _ in range(4):
        with pytest.raises(exc.ServiceError):
            anonymous.request("POST", "/v1/tokens", {"user": "alice", "password": "still-wrong"})
    from balsam.http.client import HttpClient

    raw = HttpClient(url=url, token="x", retry_s=1)
    raw.token = ""
    with pytest.raises(exc.BalsamError, match="too many failed logins"):  # 429, even with the right password now
        raw.request("POST", "/v1/tokens", {"user": "alice", "password": "alice-password"})
    bob = login(url, "bob", "bob-password")
    assert bob.request("GET", "/v1/whoami") == {"user": "bob", "sites": [], "kind": "user"}
    tokens = bob.request("GET", "/v1/tokens")["results"]
    assert len(tokens) == 1 and tokens[0]["current"] and "bt_" not in json.dumps(tokens)
    second = login(url, "bob", "bob-password")
    second.request("DELETE", f"/v1/tokens/{tokens[0]['id']}")
    with pytest.raises(exc.ServiceError, match="unknown, expired or revoked"):
        bob.request("GET", "/v1/whoami")
    second.request("DELETE", "/v1/token")
    with pytest.raises(exc.ServiceError, match="unknown, expired or revoked"):
        second.request("GET", "/v1/sites")


def test_reads_over_the_mirror_and_idempotent_push(two_users: Dict[str, Any]) -> None:
    alice, agent = two_users["alice"], two_users["agent_a"]
    jobs = alice.request("GET", "/v1/jobs?ordering=id")["results"]
    assert [j["workdir"] for j in jobs] == ["w/1", "w/2", "w/3"]
    assert alice.request("GET", "/v1/jobs/count?group_by=state")["counts"] == {"RUNNING": 2, "JOB_FINISHED": 1}
    assert alice.request("GET", "/v1/jobs/count?tags=exp:1")["count"] == 2
    assert alice.request("GET", f"/v1/jobs?site_id={SITE_A}")["results"] and not alice.request("GET", f"/v1/jobs?site_id={SITE_B}")["results"]
    apps = alice.request("GET", "/v1/apps")["results"]
    assert [a["name"] for a in apps] == ["Hello"] and "secret" not in json.dumps(apps)  # code never leaves its site
    job_id = (SITE_A << 32) + 1
    assert alice.request("GET", f"/v1/jobs/{job_id}/message")["message"] == "started 1"
    sites = alice.request("GET", "/v1/sites")["results"]
    assert [(s["id"], s["name"], s["backlog"], s["agent"]["running"]) for s in sites] == [(SITE_A, "site-a", {"RUNNING": 1}, True)]
    # A retried push (same submission_id) changes nothing and says so, even with other content.
    again = agent.request("POST", "/v1/sync/push", {"submission_id": "first-push-a", "last_seq": 10, "items": site_rows(SITE_A, 1)[:2]})
    assert again["replayed"] is True
    assert alice.request("GET", "/v1/jobs/count")["count"] == 3
    # A site's token cannot write another site's rows, nor act as a user.
    with pytest.raises(exc.ValidationError, match="not a row of site"):
        agent.request("POST", "/v1/sync/push", {"submission_id": "forged-push-1", "last_seq": 11, "items": site_rows(SITE_B, 1)})
    with pytest.raises(exc.ServiceError, match="user's token"):
        agent.request("POST", "/v1/sites", {"site_id": 99, "name": "x"})


def test_writes_become_commands_the_site_answers(two_users: Dict[str, Any]) -> None:
    alice, agent = two_users["alice"], two_users["agent_a"]
    job_id = (SITE_A << 32) + 2
    with pytest.raises(exc.CommandPending, match="queued for site .* as command"):  # the site is not syncing
        alice.request("PATCH", f"/v1/jobs/{job_id}", {"state": "RESTART_READY"})
    pulled = agent.request("GET", "/v1/sync/commands?after=0&wait=0")["commands"]
    assert [(c["kind"], c["body"]["changes"][0]["job_id"]) for c in pulled] == [("update_jobs", job_id)]
    agent.request("POST", "/v1/sync/answers", {"results": [{"id": pulled[0]["id"], "state": "rejected",
                                                            "result": {"kind": "IllegalTransition", "message": "no"}}]})
    command = alice.request("GET", f"/v1/commands/{pulled[0]['id']}")
    assert command["state"] == "rejected" and command["result"]["message"] == "no"
    # A command answered while the user waits: the answer is the site's result.
    import threading

    def site_side() -> None:
        for _ in range(100):
            cmds = agent.request("GET", f"/v1/sync/commands?after={pulled[0]['id']}&wait=2")["commands"]
            if cmds:
                agent.request("POST", "/v1/sync/answers", {"results": [{"id": cmds[0]["id"], "state": "applied", "result": 1}]})
                return

    t = threading.Thread(target=site_side)
    t.start()
    assert alice.request("DELETE", f"/v1/jobs/{job_id}") == {"deleted": 1}
    t.join()
    # A refusal while the user waits raises the site's error class.
    t = threading.Thread(target=lambda: _reject_next(agent))
    t.start()
    with pytest.raises(exc.IllegalTransition, match="cannot go"):
        alice.request("PATCH", f"/v1/jobs/{job_id}", {"state": "RESTART_READY"})
    t.join()
    # An edit made on a copy the site has moved on from: 409, saying what the row is now.
    t = threading.Thread(target=lambda: _reject_next(agent, "StaleVersion", "job changed at its site (now version 3, state RUNNING)"))
    t.start()
    with pytest.raises(exc.StaleVersion, match="now version 3"):
        alice.request("PATCH", f"/v1/jobs/{job_id}", {"tags": {"a": "b"}})
    t.join()


def _reject_next(agent: Any, kind: str = "IllegalTransition", message: str = "cannot go") -> None:
    for _ in range(100):
        cmds = agent.request("GET", "/v1/sync/commands?after=0&wait=2")["commands"]
        if cmds:
            agent.request("POST", "/v1/sync/answers", {"results": [{"id": c["id"], "state": "rejected",
                                                                    "result": {"kind": kind, "message": message}}
                                                                   for c in cmds]})
            return


def test_two_users_every_route_is_404_for_the_other(two_users: Dict[str, Any]) -> None:
    from balsam.http.routes import ROUTES
    from balsam.relay.server import RELAY_ROUTES

    alice, bob = two_users["alice"], two_users["bob"]
    a = SITE_A << 32
    ids = {"/v1/jobs/{id}": a + 1, "/v1/apps/{id}": a + 1, "/v1/batch-jobs/{id}": a + 1, "/v1/sites/{id}": SITE_A,
           "/v1/jobs/{id}/output": a + 1, "/v1/jobs/{id}/message": a + 1, "/v1/sessions/{id}": a + 1,
           "/v1/sessions/{id}/acquire": a + 1}
    cid = two_users["agent_a"]  # a command of alice's
    with pytest.raises(exc.CommandPending):
        alice.request("DELETE", f"/v1/jobs/{a + 3}")
    ids["/v1/commands/{id}"] = int(cid.request("GET", "/v1/sync/commands?after=0")["commands"][0]["id"])
    bob_tokens = bob.request("GET", "/v1/tokens")["results"]
    alice_token = alice.request("GET", "/v1/tokens")["results"][0]["id"]
    ids["/v1/tokens/{id}"] = alice_token
    checked = 0
    for route in (*RELAY_ROUTES, *ROUTES):
        if "{id}" not in route.path or route.kind in ("ws", "static"):
            continue
        path = route.path.replace("{id}", str(ids.get(route.path, a + 1)))
        body: Any = {} if route.method in ("PATCH", "POST", "PUT") else None
        if route.path == "/v1/sessions/{id}/acquire":
            body = {"max_num_jobs": 1}
        with pytest.raises(exc.BalsamError) as info:
            bob.request(route.method, path, body)
        generic = ("launchers talk to their site", "only the site's owner", "DAGs cannot be reached")  # refused whoever's the row: says nothing of it
        assert isinstance(info.value, exc.ObjectDoesNotExist) or str(info.value).startswith(generic), (route.path, info.value)
        assert str(SITE_A) not in str(info.value).replace(str(ids.get(route.path, a + 1)), ""), info.value
        checked += 1
    assert checked >= 12
    # Listings, counts and queries name none of alice's rows for bob, whatever the filters.
    for resource in ("jobs", "apps", "batch-jobs", "events", "transfers"):
        assert all(r["id"] >> 32 == SITE_B for r in bob.request("GET", f"/v1/{resource}")["results"]), resource
        assert bob.request("GET", f"/v1/{resource}?site_id={SITE_A}")["results"] == [], resource
    assert bob.request("GET", f"/v1/jobs/count?id={a + 1}")["count"] == 0
    assert bob.request("POST", "/v1/jobs/query", {"filters": {"id": [a + 1, a + 2]}, "aggregate": "ids"})["ids"] == []
    assert bob.request("PUT", f"/v1/jobs?id={a + 1}", {"state": "RESTART_READY"}) == {"updated": 0}
    assert bob.request("DELETE", f"/v1/jobs?id={a + 1}") == {"deleted": 0}
    with pytest.raises((exc.ObjectDoesNotExist, exc.ValidationError), match="no app"):
        bob.request("POST", "/v1/jobs", [{"workdir": "x", "app_id": a + 1}])
    assert [s["id"] for s in bob.request("GET", "/v1/sites")["results"]] == [SITE_B]
    assert all(t["id"] != alice_token for t in bob_tokens)
    assert alice.request("GET", "/v1/jobs/count")["count"] == 3  # nothing of alice's changed


def test_link_conflict_and_plain_http_refused(two_users: Dict[str, Any]) -> None:
    from balsam.http.client import parse_url
    from balsam.relay.server import check_transport

    with pytest.raises(exc.BalsamError, match="taken"):
        two_users["bob"].request("POST", "/v1/sites", {"site_id": SITE_A, "name": "mine"})
    with pytest.raises(exc.ValidationError, match="plain HTTP only to this host"):
        parse_url("http://relay.example.org:8443")
    assert parse_url("https://relay.example.org")["port"] == 443
    with pytest.raises(exc.ConfigError, match="in the clear"):
        check_transport("0.0.0.0", tls=False)
    check_transport("0.0.0.0", tls=True)
    check_transport("127.0.0.1", tls=False)


def _finish(agent: Any, site_id: int, n: int, submission: str) -> int:
    """The site's agent pushes job n of site_id going RUNNING -> JOB_FINISHED (the row and its event); the job id."""
    job_id, now = (site_id << 32) + n, time.time()
    row = {"id": job_id, "app_id": (site_id << 32) + 1, "workdir": f"w/{n}", "state": "JOB_FINISHED", "tags": "{}", "parent_ids": "[]",
           "parameters": "{}", "created": created_at(job_id), "last_update": now, "version": 2}
    event = {"id": (site_id << 32) + 100 + n, "job_id": job_id, "timestamp": now, "from_state": "RUNNING", "to_state": "JOB_FINISHED",
             "data": None}
    agent.request("POST", "/v1/sync/push", {"submission_id": submission, "last_seq": 20 + n, "items": [
        {"entity": "job", "op": "upsert", "id": job_id, "row": row}, {"entity": "event", "op": "upsert", "id": event["id"], "row": event}]})
    return job_id


def test_the_websocket_streams_only_the_callers_own_sites(two_users: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam.http import server
    from tests.relay_support import WsReader

    url = two_users["url"]
    streams = {"a": WsReader(url, two_users["alice"].token), "b": WsReader(url, two_users["bob"].token)}
    try:
        for who, site in (("a", SITE_A), ("b", SITE_B)):
            got = streams[who].read_until("hello and counts", lambda ms: any(m["type"] == "counts" for m in ms))
            assert got[0]["type"] == "hello" and [m["site_id"] for m in got if m["type"] == "counts"] == [site]
        finished = {who: _finish(two_users[f"agent_{who}"], site, 1, f"ws-finish-{who}") for who, site in (("b", SITE_B), ("a", SITE_A))}
        for who, site in (("a", SITE_A), ("b", SITE_B)):
            mine = finished[who]
            got = streams[who].read_until(f"{who}'s job finishing", lambda ms, mine=mine: any(
                m["type"] == "job" and m["id"] == mine and m["state"] == "JOB_FINISHED" for m in ms))
            streams[who].read_until(f"{who}'s new counts", lambda ms: any(
                m["type"] == "counts" and m["counts"].get("JOB_FINISHED") == 2 for m in ms))
            assert all(m["site_id"] == site for m in got if m["type"] != "hello"), got  # never the other user's site
            other = finished["b" if who == "a" else "a"]
            assert str(other) not in json.dumps(got), got
        # A token revoked while its stream is open ends the stream.
        monkeypatch.setattr(server, "REVERIFY_S", 0.5)
        _finish(two_users["agent_a"], SITE_A, 3, "ws-finish-a3")
        streams["a"].read_until("job 3", lambda ms: any(m["type"] == "job" and m["id"] == (SITE_A << 32) + 3 for m in ms))
        two_users["alice"].request("DELETE", "/v1/token")
        streams["a"].read_until("the stream closed", lambda ms: streams["a"].closed is not None)
        assert streams["a"].closed == 4401
    finally:
        for s in streams.values():
            s.close()


def test_a_relay_stops_at_once_while_a_site_long_polls_and_a_user_waits_for_its_site(tmp_path: Path) -> None:
    """Stopping the relay (Ctrl-C, SIGTERM, a restart) with a site's long poll for commands and a user's write
    waiting for its site in flight: both waits end, and the stop returns with none of the relay's threads left.
    Before, the stop cancelled their requests but the threads serving them ran on to their deadline (up to 25 s):
    the server's stop gave up after 10 s and left them running."""
    import threading


    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        with served(store, wait_s=60) as (server, url):
            alice = login(url, "alice", "alice-password")
            link = alice.request("POST", "/v1/sites", {"site_id": SITE_A, "name": "site-a", "hostname": "h", "path": "/p"})
            agent = client(url, link["token"])
            agent.request("POST", "/v1/sync/push", {"submission_id": "first-push", "last_seq": 10, "items": site_rows(SITE_A, 1),
                                                    "site": {"backlog": {}, "row": {"name": "site-a"}}})
            agent.request("GET", "/v1/sync/commands?after=0&wait=0")  # the site is seen online: a write waits for it
            calls = [threading.Thread(target=lambda c=c, p=p: _ignore_errors(c, p), daemon=True)
                     for c, p in ((agent, ("GET", "/v1/sync/commands?after=1000000&wait=25")),
                                  (alice, ("DELETE", f"/v1/jobs/{(SITE_A << 32) + 1}")))]
            for t in calls:
                t.start()
            deadline = time.monotonic() + 30
            while sum(1 for t in threading.enumerate() if t.name.startswith("relay_")) < 2:  # both served, waiting
                assert time.monotonic() < deadline, [t.name for t in threading.enumerate()]
                time.sleep(0.05)
        left = [t.name for t in threading.enumerate() if t.name.startswith("relay_") or t.name == "balsam-api"]
        assert left == [], f"still running after the relay stopped: {left}"
        for t in calls:
            t.join(timeout=60)
        assert [command["kind"] for command in store.pending_commands(store.verify(link["token"]), 0)] == ["delete_jobs"]


def _ignore_errors(who: Any, request: Tuple[str, str]) -> None:
    try:
        who.request(*request)
    except exc.BalsamError:  # cut off by the stop
        pass
