"""The relay's database on SQLite and PostgreSQL: users and rate-limited logins, tokens (hashed, expiring,
revocable, scoped), site linking, idempotent pushes into the mirrors, filters as SQL, commands, isolation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from balsam.exceptions import ObjectDoesNotExist, ValidationError
from tests.relay_support import DATABASES, created_at, relay_store

BASE = 7 << 32


@pytest.fixture(params=DATABASES)
def relay(request: Any, tmp_path: Path) -> Iterator[Any]:
    yield from relay_store(request.param, tmp_path)


def job_items(site_id: int, n: int, state: str = "RUNNING", start: int = 1) -> List[Dict[str, Any]]:
    base = site_id << 32
    now = time.time()
    return [{"entity": "job", "op": "upsert", "id": base + i,
             "row": {"id": base + i, "app_id": base + 1, "workdir": f"w/{i}", "state": state if i % 2 else "JOB_FINISHED",
                     "tags": json.dumps({"exp": f"a{i % 3}"}), "parent_ids": "[]", "parameters": '{"x": 1}', "created": created_at(base + i),
                     "last_update": now, "version": 1}} for i in range(start, start + n)]


def test_users_logins_and_tokens(relay: Any) -> None:
    from balsam.relay.store import RateLimited, RelayAuthError

    relay.add_user("alice", "correct horse")
    with pytest.raises(ValidationError, match="already exists"):
        relay.add_user("alice", "another one")
    with pytest.raises(ValidationError, match="user name"):
        relay.add_user("bad name!", "whatever1")
    token, caller = relay.login("alice", "correct horse")
    assert caller.user == "alice" and caller.kind == "user"
    assert relay.verify(token) == caller
    assert relay.verify(token + "x") is None and relay.verify("not a token") is None
    stored = relay.tokens(caller.user_id)
    assert len(stored) == 1 and "token" not in json.dumps(stored).replace("token_hash", "")  # never the token itself
    relay.revoke(caller.user_id, stored[0]["id"])
    assert relay.verify(token) is None
    for _ in range(5):
        with pytest.raises(RelayAuthError, match="wrong user name or password"):
            relay.login("alice", "wrong password")
    with pytest.raises(RateLimited, match="too many failed logins"):
        relay.login("alice", "correct horse")


def test_expired_token_is_refused(relay: Any) -> None:
    uid = relay.add_user("bob", "correct horse")
    token = relay.issue_token(uid, ttl_s=1.5)  # long enough to be verified once under load
    assert relay.verify(token) is not None
    time.sleep(1.6)
    assert relay.verify(token) is None


def test_pushes_are_applied_once_and_mirrors_answer_balsam_filters(relay: Any) -> None:
    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    site = relay.verify(relay.link_site(alice, 7, "polaris", "login1", "/home/alice/site"))
    assert site.kind == "site" and site.site_id == 7
    first = relay.ingest(site, "push-0001", 10, job_items(7, 10))
    assert first == {"pushed_seq": 10, "applied": 10}
    assert relay.ingest(site, "push-0001", 10, job_items(7, 10)) == {**first, "replayed": True}
    assert relay.pushed_seq(site) == 10
    from balsam.relay import mirror

    with relay.connect() as c:
        assert mirror.count_by(c, "job", [7], {}, "state") == {"RUNNING": 5, "JOB_FINISHED": 5}
        rows = mirror.select(c, "job", [7], {"tags": {"exp": "a1"}, "state": ["RUNNING"]}, ["id", "workdir", "parameters"],
                             order_by=["-id"])
        assert rows == [(BASE + 7, "w/7", '{"x": 1}'), (BASE + 1, "w/1", '{"x": 1}')]
        assert mirror.count(c, "job", [7], {"workdir__contains": "w/1"}) == 2  # w/1 and w/10
        assert mirror.count(c, "job", [8], {}) == 0
        with pytest.raises(ValidationError, match="unknown job filter"):
            mirror.count(c, "job", [7], {"colour": "red"})
    # A later push moves jobs on; a delete removes them and their tags.
    relay.ingest(site, "push-0002", 12, job_items(7, 1, "JOB_FINISHED", start=1) + [{"entity": "job", "op": "delete", "id": BASE + 3}])
    with relay.connect() as c:
        assert mirror.count_by(c, "job", [7], {}, "state") == {"RUNNING": 3, "JOB_FINISHED": 6}
        assert mirror.count(c, "job", [7], {"tags": {"exp": "a0"}}) == 2  # 6 and 9: 3 is gone


def test_the_same_push_sent_twice_at_once_is_applied_once_and_replayed_once(relay: Any) -> None:
    """Two agents holding one site token (or an agent's retry racing its first try) push the same batch at the same
    moment. On PostgreSQL both looked for a stored answer before either had one: the second applied the batch again and
    failed on the answer's key, a 503 and a logged traceback, in 28 of 30 rounds."""
    import threading

    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    site = relay.verify(relay.link_site(alice, 7, "polaris"))

    def push(barrier: Any, round_: int, items: List[Dict[str, Any]], answers: List[Any]) -> None:
        barrier.wait()
        try:
            answers.append(relay.ingest(site, f"push-{round_:05d}", round_, items))
        except Exception as exc:  # the failure this test is about: kept to be shown by the assert below
            answers.append(exc)

    for round_ in range(1, 11):
        items, answers = job_items(7, 100), []  # type: List[Dict[str, Any]], List[Any]
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=push, args=(barrier, round_, items, answers)) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(answers, key=lambda a: "replayed" in a if isinstance(a, dict) else 2) == [
            {"pushed_seq": round_, "applied": 100}, {"pushed_seq": round_, "applied": 100, "replayed": True}], answers
    assert relay.pushed_seq(site) == 10


def test_users_and_sites_added_at_the_same_moment_get_the_answers_of_one_after_the_other(relay: Any) -> None:
    """Two users linking the same new site id, one user linking two sites of one name, an admin adding one user from
    two terminals, all at once. On PostgreSQL both transactions looked, found nothing, and the second failed on the
    unique key (a 503 and a logged traceback) in about half of such races; now it is the answer it gets when it comes
    second: a conflict, or "already exists"."""
    import threading

    from balsam.relay.store import Conflict

    relay.add_user("alice", "correct horse")
    relay.add_user("bob", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    _, bob = relay.login("bob", "correct horse")

    def race(*calls: Any) -> List[Any]:
        barrier = threading.Barrier(len(calls))
        out: List[Any] = []

        def one(call: Any) -> None:
            barrier.wait()
            try:
                out.append(call())
            except Exception as exc:  # what each of the two gets is the point of the test
                out.append(exc)

        threads = [threading.Thread(target=one, args=(call,)) for call in calls]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return out

    for i in range(8):
        same_id = race(lambda i=i: relay.link_site(alice, 100 + i, f"a{i}"), lambda i=i: relay.link_site(bob, 100 + i, f"b{i}"))
        same_name = race(lambda i=i: relay.link_site(alice, 200 + 2 * i, f"n{i}"), lambda i=i: relay.link_site(alice, 201 + 2 * i, f"n{i}"))
        same_user = race(lambda i=i: relay.add_user(f"user{i}", "correct horse"), lambda i=i: relay.add_user(f"user{i}", "correct horse"))
        for answers, refusal in ((same_id, Conflict), (same_name, Conflict), (same_user, ValidationError)):
            kinds = sorted(type(a).__name__ for a in answers)
            assert len([a for a in answers if isinstance(a, refusal)]) == 1 and len(answers) == 2, answers
            assert kinds.count("int") + kinds.count("str") == 1, answers  # the other was added (an id) or linked (a token)
    assert {s["name"] for s in relay.sites(alice)} | {s["name"] for s in relay.sites(bob)} >= {f"n{i}" for i in range(8)}


def test_a_site_cannot_write_another_sites_rows(relay: Any) -> None:
    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    site = relay.verify(relay.link_site(alice, 7, "polaris"))
    with pytest.raises(ValidationError, match="is not a row of site 7"):
        relay.ingest(site, "push-0003", 1, job_items(8, 1))
    with pytest.raises(Exception, match="only a site's agent can push"):
        relay.ingest(alice, "push-0004", 1, job_items(7, 1))


def test_site_ids_and_names_are_checked_at_link(relay: Any) -> None:
    from balsam.relay.store import Conflict

    relay.add_user("alice", "correct horse")
    relay.add_user("bob", "battery staple")
    _, alice = relay.login("alice", "correct horse")
    _, bob = relay.login("bob", "battery staple")
    relay.link_site(alice, 7, "polaris")
    relay.link_site(alice, 7, "polaris")  # re-linking is fine
    with pytest.raises(Conflict, match="site id 7 is taken"):
        relay.link_site(bob, 7, "laptop")
    with pytest.raises(Conflict, match="already have a site named 'polaris'"):
        relay.link_site(alice, 9, "polaris")
    assert [s["name"] for s in relay.sites(alice)] == ["polaris"] and relay.sites(bob) == []
    with pytest.raises(ObjectDoesNotExist):
        relay.site_for(bob, 7)  # another user's site is "no such site"


def test_commands_flow_from_user_to_site_and_back(relay: Any) -> None:
    relay.add_user("alice", "correct horse")
    relay.add_user("bob", "battery staple")
    _, alice = relay.login("alice", "correct horse")
    _, bob = relay.login("bob", "battery staple")
    site = relay.verify(relay.link_site(alice, 7, "polaris"))
    cid = relay.add_command(alice, 7, "create_jobs", {"jobs": [{"workdir": "x"}]})
    with pytest.raises(ObjectDoesNotExist):
        relay.add_command(bob, 7, "create_jobs", {"jobs": []})
    pending = relay.pending_commands(site, 0)
    assert [(p["id"], p["kind"]) for p in pending] == [(cid, "create_jobs")]
    assert relay.finish_commands(site, [{"id": cid, "state": "rejected", "result": {"message": "no app Hello"}}]) == 1
    assert relay.finish_commands(site, [{"id": cid, "state": "applied"}]) == 0  # answered once
    done = relay.command(alice, cid)
    assert done["state"] == "rejected" and done["result"] == {"message": "no app Hello"}
    with pytest.raises(ObjectDoesNotExist):
        relay.command(bob, cid)
    assert relay.pending_commands(site, 0) == []


def test_a_relay_made_before_dags_gains_their_mirrors(tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    import sqlalchemy as sa

    from balsam.relay.migrate import current, upgrade
    from balsam.relay.store import RelayStore

    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(store, "0002")
    with store.begin() as c:  # the relay as revision 0002 made it: no DAG mirrors
        c.exec_driver_sql("DROP TABLE relay_dag_instance")
        c.exec_driver_sql("DROP TABLE relay_dag")
    store.close()
    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate()
    assert current(store) >= "0003"
    with store.connect() as c:
        assert {"relay_dag", "relay_dag_instance"} <= set(sa.inspect(c).get_table_names())
    store.add_user("alice", "correct horse")
    _, alice = store.login("alice", "correct horse")
    site = store.verify(store.link_site(alice, 7, "polaris"))
    assert site is not None
    dag_id = (7 << 32) + 1
    store.ingest(site, "push-dag-1", 1, [{"entity": "dag", "op": "upsert", "id": dag_id, "row": {
        "id": dag_id, "name": "sweep", "description": "", "spec": json.dumps({"nodes": []}), "created": time.time(),
        "last_update": time.time(), "version": 1}}])
    from balsam.relay.backend import RelayBackend

    assert [d["name"] for d in RelayBackend(store, alice).dag_list()] == ["sweep"]
    store.close()
