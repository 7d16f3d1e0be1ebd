"""Hostile and out-of-order site pushes at a real relay server, on SQLite and PostgreSQL: one user's site cannot take
the (predictable) submission id of another user's next push; a push replayed under a new id, or overtaken by a
newer one, never puts old states back; values no column can hold (NUL, lone surrogates, NaN, integers past 64
bits, text wider than the column, JSON that is not JSON) are stored or refused in one line, never a 503, and
every listing of the user's keeps answering; malformed command answers and site links get one-line 400s. And a
real site whose DB is put back from a backup catches the relay up instead of being ignored."""

from __future__ import annotations

import http.client
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import pytest

from tests.relay_support import created_at
from tests.test_relay_server import SITE_A, SITE_B, relay, two_users  # noqa: F401  (the fixtures)

A = SITE_A << 32


def raw(url: str, token: str, method: str, path: str, body: Any = None, data: Optional[bytes] = None) -> Tuple[int, Any]:
    """One request as any HTTP client can send it: (status, parsed answer)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
    try:
        payload = data if data is not None else (None if body is None else json.dumps(body, allow_nan=True).encode())
        conn.request(method, path, body=payload, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read()
    finally:
        conn.close()
    return answer.status, json.loads(text) if text else None


def job(n: int, state: str, version: int, **extra: Any) -> Dict[str, Any]:
    now = time.time()
    row = {"id": A + n, "app_id": A + 1, "workdir": f"w/{n}", "state": state, "tags": "{}", "parent_ids": "[]", "parameters": "{}",
           "created": created_at(A + n), "last_update": now, "version": version, **extra}
    return {"entity": "job", "op": "upsert", "id": A + n, "row": row}


def states(users: Dict[str, Any]) -> Dict[str, int]:
    return users["alice"].request("GET", "/v1/jobs/count?group_by=state")["counts"]  # type: ignore[no-any-return]


def test_another_users_site_cannot_take_the_id_of_your_next_push(two_users: Dict[str, Any]) -> None:  # noqa: F811
    url, alice_agent, bob_agent = two_users["url"], two_users["agent_a"], two_users["agent_b"]
    # A site's submission ids say what they cover ("s<site>o<first>-<last>e<from>-<to>"): anyone can guess the next.
    guessed = f"s{SITE_A}o11-11e0-0"
    status, _ = raw(url, bob_agent.token, "POST", "/v1/sync/push", {"submission_id": guessed, "last_seq": 11, "items": []})
    assert status == 200
    status, answer = raw(url, alice_agent.token, "POST", "/v1/sync/push",
                         {"submission_id": guessed, "last_seq": 11, "items": [job(1, "JOB_FINISHED", 2)]})
    assert (status, answer) == (200, {"pushed_seq": 11, "applied": 1})  # it was refused 409 forever: the site stuck
    assert states(two_users) == {"JOB_FINISHED": 2, "RUNNING": 1}
    again = alice_agent.request("POST", "/v1/sync/push", {"submission_id": guessed, "last_seq": 11, "items": [job(1, "RUNNING", 1)]})
    assert again["replayed"] is True and states(two_users) == {"JOB_FINISHED": 2, "RUNNING": 1}


def test_a_push_overtaken_or_replayed_under_a_new_id_never_puts_old_states_back(two_users: Dict[str, Any]) -> None:  # noqa: F811
    agent = two_users["agent_a"]
    older = {"last_seq": 20, "items": [job(1, "RUNNING", 2), job(3, "RUNNING", 2)]}
    newer = {"last_seq": 30, "items": [job(1, "JOB_FINISHED", 3), {"entity": "job", "op": "delete", "id": A + 3}]}
    # Reordered on the way: the newer push arrives first, then the older one.
    assert agent.request("POST", "/v1/sync/push", {"submission_id": "push-seq-30", **newer}) == {"pushed_seq": 30, "applied": 2}
    late = agent.request("POST", "/v1/sync/push", {"submission_id": "push-seq-20", **older})
    assert late == {"pushed_seq": 30, "applied": 0, "stale": True}
    # The older push again under yet another id: still nothing changes.
    assert agent.request("POST", "/v1/sync/push", {"submission_id": "push-20-again", **older})["stale"] is True
    jobs = {j["id"]: (j["state"], j["version"]) for j in two_users["alice"].request("GET", "/v1/jobs")["results"]}
    assert jobs == {A + 1: ("JOB_FINISHED", 3), A + 2: ("JOB_FINISHED", 1)}  # job 3 stays deleted, job 1 finished
    assert states(two_users) == {"JOB_FINISHED": 2}


HOSTILE_ITEMS: List[Tuple[str, Dict[str, Any]]] = [
    ("NUL in a workdir, tags and event data", {"items": [job(10, "RUNNING", 1, workdir="a\x00b", tags={"k\x00": "v\x00"}),
                                                          {"entity": "event", "op": "upsert", "id": A + 10,
                                                           "row": {"job_id": A + 10, "to_state": "RUN\x00", "data": "x\x00y"}}]}),
    ("lone surrogates", {"items": [job(11, "RUNNING", 1, workdir="\ud800", parameters='{"x": "\\ud800"}')]}),
    ("text wider than its column", {"items": [job(12, "R" * 300, 1, tags={"k" * 1000: "v" * 1000}),
                                              {"entity": "batch_job", "op": "upsert", "id": A + 12,
                                               "row": {"queue": "q" * 1000, "project": "p" * 1000, "state": "s" * 100}},
                                              {"entity": "app", "op": "upsert", "id": A + 12, "row": {"name": "N" * 1000}}]}),
    ("integers past every column", {"items": [job(13, "RUNNING", 2**40, app_id=2**100, return_code=2**40, parent_ids=[2**80, -1, "x"],
                                                  batch_job_id=2**70)]}),
    ("NaN and infinities", {"items": [job(14, "RUNNING", 1, created=float("nan"), last_update=float("inf"), data={"n": float("nan")})],
                            "site": {"row": {"x": float("inf")}, "backlog": {"RUNNING": float("nan")}}}),
    ("JSON columns that are not JSON", {"items": [job(15, "RUNNING", 1, tags="not json", parameters="{", data="[")]}),
    ("a site row of surrogates and huge numbers", {"items": [], "site": {"row": {"name": "\udcff", "n": 10**400},
                                                                          "backlog": {"\ud800": 2**70}}}),
]


@pytest.mark.parametrize("name, push", HOSTILE_ITEMS, ids=[n for n, _ in HOSTILE_ITEMS])
def test_values_no_column_can_hold_are_stored_and_every_listing_still_answers(two_users: Dict[str, Any], name: str,  # noqa: F811
                                                                             push: Dict[str, Any]) -> None:
    url, token = two_users["url"], two_users["agent_a"].token
    status, answer = raw(url, token, "POST", "/v1/sync/push", {"submission_id": f"hostile-{name[:40]}", "last_seq": 50, **push})
    assert status in (200, 400), (status, answer)  # never 503 ("try again"): the site would retry it forever
    user = two_users["alice"].token
    for path in ("/v1/jobs", "/v1/events", "/v1/batch-jobs", "/v1/apps", "/v1/sites", "/v1/jobs/count?group_by=state",
                 "/v1/jobs?tags=exp:1", f"/v1/jobs/{A + 1}", f"/v1/sites/{SITE_A}"):
        status, body = raw(url, user, "GET", path)
        assert status == 200, (path, status, body)
    # The site's next ordinary push still goes in.
    assert two_users["agent_a"].request("POST", "/v1/sync/push", {"submission_id": "after-hostile", "last_seq": 60,
                                                                  "items": [job(2, "RUNNING", 5)]})["applied"] == 1


def test_a_batch_job_queue_the_site_allows_but_no_column_holds_keeps_the_site_in_sync(two_users: Dict[str, Any]) -> None:  # noqa: F811
    # A site's store takes queue and project names of up to 1,024 characters; the relay's columns hold 255. On
    # PostgreSQL such a push failed (503) every time it was retried, and nothing the site did after it arrived.
    queue = "q" * 1000
    agent = two_users["agent_a"]
    agent.request("POST", "/v1/sync/push", {"submission_id": "long-queue", "last_seq": 40, "items": [
        {"entity": "batch_job", "op": "upsert", "id": A + 5, "row": {"id": A + 5, "state": "queued", "queue": queue, "project": "p",
                                                                      "num_nodes": 1, "created": time.time(), "version": 1}}]})
    agent.request("POST", "/v1/sync/push", {"submission_id": "after-long-queue", "last_seq": 41, "items": [job(2, "RUNNING", 2)]})
    batch = two_users["alice"].request("GET", f"/v1/batch-jobs/{A + 5}")
    assert batch["queue"] == queue  # the whole name, as the site has it
    assert states(two_users) == {"RUNNING": 3}


def test_malformed_answers_and_links_are_one_line_400s(two_users: Dict[str, Any]) -> None:  # noqa: F811
    url, agent, user = two_users["url"], two_users["agent_a"].token, two_users["alice"].token
    for results in ([{"state": "applied"}], [{"id": "abc", "state": "applied"}], [{"id": 2**80, "state": "applied"}],
                    [{"id": 1, "state": "done"}]):
        status, answer = raw(url, agent, "POST", "/v1/sync/answers", {"results": results})
        assert status == 400 and "\n" not in answer["error"]["message"], (results, status, answer)
    status, answer = raw(url, agent, "POST", "/v1/sync/push", {"submission_id": "seq-too-big", "last_seq": 2**70, "items": []})
    assert status == 400 and "last_seq" in answer["error"]["message"]
    for body, word in (({"site_id": 77, "name": "a\x00b"}, "control characters"), ({"site_id": 78, "name": "n" * 10_000}, "at most 200"),
                       ({"site_id": 79, "name": "ok", "path": "/a\x00"}, "control characters"),
                       ({"site_id": 80, "name": "ok", "hostname": "h" * 300}, "at most 255")):
        status, answer = raw(url, user, "POST", "/v1/sites", body)
        assert status == 400 and word in answer["error"]["message"], (body, status, answer)
    assert [s["id"] for s in two_users["alice"].request("GET", "/v1/sites")["results"]] == [SITE_A]


@pytest.mark.slow
def test_a_site_db_put_back_from_a_backup_catches_the_relay_up(tmp_path: Path) -> None:
    from tests.relay_support import relay_store
    from tests.test_relay_faults import assert_equal_sides, site_db, site_process
    from tests.test_relay_sync import Relay, login_node, run

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        server = Relay(store).start()
        try:
            env, root = login_node(tmp_path, server)
            make = ("import sys; from balsam.api import Job; Job.objects.bulk_create([Job(f'{sys.argv[1]}/{i}', app_id='Hello', "
                    "site_name='polaris', parameters={'say_hello_to': str(i)}) for i in range(5)])")
            run(env, "-c", make, "before")
            assert site_process(env, root).returncode == 0
            backup = tmp_path / "backup"
            backup.mkdir()
            for f in (root / ".balsam").glob("site.db*"):
                shutil.copy2(f, backup / f.name)
            run(env, "-c", make, "after")  # pushed, then lost with the DB
            assert site_process(env, root).returncode == 0
            for f in (root / ".balsam").glob("site.db*"):
                f.unlink()
            for f in backup.iterdir():
                shutil.copy2(f, root / ".balsam" / f.name)
            run(env, "-c", make, "restored")
            done = site_process(env, root)
            assert done.returncode == 0, done.stderr[-2000:]
            db = site_db(root)
            workdirs = sorted(r[0].split("/")[0] for r in db.execute("SELECT workdir FROM job"))
            db.close()
            assert workdirs == ["before"] * 5 + ["restored"] * 5
            assert_equal_sides(server, root)  # the relay shows the site as it is (it ignored the restored site before)
        finally:
            server.stop()


def test_a_cursor_or_a_guessed_id_of_another_users_listing_shows_only_your_own_rows(two_users: Dict[str, Any]) -> None:  # noqa: F811
    alice, bob = two_users["alice"], two_users["bob"]
    page = alice.request("GET", "/v1/jobs?limit=1&ordering=id")
    assert page["next_cursor"] and page["results"][0]["id"] == A + 1
    for ordering in ("id", "-id"):
        theirs = bob.request("GET", f"/v1/jobs?limit=50&ordering={ordering}&cursor={page['next_cursor']}")
        assert all(j["id"] >> 32 == SITE_B for j in theirs["results"]), theirs
    for guess in range(1, 6):  # ids are the site's id and a counter: easy to guess, never readable by another user
        status, answer = raw(two_users["url"], bob.token, "GET", f"/v1/jobs/{A + guess}")
        assert status == 404 and str(SITE_A) not in answer["error"]["message"].replace(str(A + guess), "")


@pytest.mark.parametrize("depth", [300, 5000, 100_000])
def test_a_row_nested_deeper_than_any_store_holds_is_refused_in_one_line(two_users: Dict[str, Any], depth: int) -> None:  # noqa: F811
    url, token = two_users["url"], two_users["agent_a"].token
    deep = "[" * depth + "]" * depth
    body = (f'{{"submission_id": "deep-{depth}", "last_seq": 70, "items": [{{"entity": "job", "op": "upsert", "id": {A + 20}, '
            f'"row": {{"workdir": "deep", "state": "RUNNING", "data": {deep}}}}}]}}').encode()
    status, answer = raw(url, token, "POST", "/v1/sync/push", data=body)
    assert status in (200, 400), (status, answer)  # was a 503 from 2,000 levels: the site retried it forever
    if status == 400:
        assert "nested too deep" in answer["error"]["message"]
    assert raw(url, two_users["alice"].token, "GET", "/v1/jobs")[0] == 200
    assert two_users["agent_a"].request("POST", "/v1/sync/push", {"submission_id": f"after-deep-{depth}", "last_seq": 71,
                                                                  "items": [job(2, "RUNNING", 6)]})["applied"] == 1


def test_nul_and_lone_surrogates_in_logins_and_filters_are_plain_answers(two_users: Dict[str, Any]) -> None:  # noqa: F811
    # PostgreSQL refuses a NUL in text and no database encodes a lone surrogate: these were 503s, with a traceback
    # in the relay's log, for anyone who could reach the login route.
    url = two_users["url"]
    for user in ("al\x00ice", "\ud800", "alice\x00"):
        status, answer = raw(url, "", "POST", "/v1/tokens", {"user": user, "password": "alice-password"})
        assert status == 401 and answer["error"]["message"] == "wrong user name or password", (user, status, answer)
    status, answer = raw(url, "", "POST", "/v1/tokens", {"user": "alice", "password": "alice-password", "label": "lab\x00el\ud800"})
    assert status == 201 and answer["token"].startswith("bt_")
    token = two_users["alice"].token
    for query in ("workdir=a%00b", "tags=a%00:b", "workdir__contains=%00", "app_name=a%00", "state=RUN%00", "tags=k:%ED%A0%80"):
        status, answer = raw(url, token, "GET", f"/v1/jobs?{query}")
        assert (status, answer["results"]) == (200, []), (query, status, answer)
    status, answer = raw(url, token, "GET", "/v1/batch-jobs?queue=q%00")
    assert (status, answer["results"]) == (200, [])


def test_integer_filters_past_64_bits_or_of_the_wrong_type_are_plain_answers(two_users: Dict[str, Any]) -> None:  # noqa: F811
    """Each reached the database, which cannot bind such a value (SQLite: OverflowError; return_code=None: a TypeError
    before it): a 503 and a logged traceback. A row's id past 64 bits names no row, as at a site; other integers past
    64 bits, and text that is no integer, are refused by name."""
    url, token = two_users["url"], two_users["alice"].token
    huge = 2**64
    for query in (f"id={huge}", f"id={A + 1}&id={huge}"):
        status, answer = raw(url, token, "GET", f"/v1/jobs?{query}")
        assert status == 200 and [j["id"] for j in answer["results"]] == [A + 1][: query.count("&")], (query, status, answer)
    assert raw(url, token, "GET", f"/v1/events?id={huge}")[0] == 200
    status, answer = raw(url, token, "PUT", "/v1/jobs", {"filters": {"id": [huge * 2**6]}, "state": "USER_KILLED"})
    assert (status, answer) == (200, {"updated": 0})
    for query, name in ((f"batch_job_id={huge}", "batch_job_id"), (f"app_id={huge}", "app_id"), ("parent_id=x", "parent_id"),
                        (f"return_code={huge}", "return_code"), ("return_code=1.5", "return_code")):
        status, answer = raw(url, token, "GET", f"/v1/jobs?{query}")
        assert status == 400 and answer["error"]["message"].startswith(f"{name}: "), (query, status, answer)
    before = states(two_users)
    status, answer = raw(url, token, "PUT", "/v1/jobs", {"filters": {"return_code": None}, "state": "USER_KILLED"})
    assert status in (200, 202), (status, answer)
    assert states(two_users) == before  # nothing above changed a job (a kill is queued for the site)
