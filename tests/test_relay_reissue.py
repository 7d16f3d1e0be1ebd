"""A site whose DB was put back from a backup hands out again ids it had pushed since; the relay, on SQLite and
PostgreSQL, never takes such a row for the one it knew under the id. A push of rows the relay holds as they are (a
push replayed, under its own id or a new one) is applied as before; a row under an id the site pushed before for
another row is refused with nothing applied, and the site's agent moves its id counters past every id the relay
has seen and gives those rows new ids (an agent from before it gets a one-line 409 that says what to do). End to
end: a child at another site waiting on a job the restored site lost fails saying its parent is gone, instead of
following the job that took its id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.relay_support import DATABASES, created_at, relay_store
from tests.test_relay_sync import Relay, _sync_service, node_env, relay, run  # noqa: F401  (relay: the fixture)

SITE = 9
BASE = SITE << 32


@pytest.fixture(params=DATABASES)
def relay_db(request: Any, tmp_path: Path) -> Iterator[Any]:
    yield from relay_store(request.param, tmp_path)


def job(n: int, state: str = "RUNNING", made: Optional[float] = None, parents: Tuple[int, ...] = ()) -> Dict[str, Any]:
    row = {"id": BASE + n, "app_id": BASE + 1, "workdir": f"w/{n}/{made or 0}", "state": state, "tags": "{}",
           "parent_ids": json.dumps([BASE + p for p in parents]), "parameters": "{}",
           "created": created_at(BASE + n) if made is None else made, "last_update": 5.0, "version": 1}
    return {"entity": "job", "op": "upsert", "id": BASE + n, "row": row}


def event(n: int, job_n: int, at: Optional[float] = None) -> Dict[str, Any]:
    row = {"id": BASE + n, "job_id": BASE + job_n, "timestamp": created_at(BASE + n) if at is None else at, "from_state": "CREATED",
           "to_state": "RUNNING", "data": None}
    return {"entity": "event", "op": "upsert", "id": BASE + n, "row": row}


def app(n: int, made: float = 1.0) -> Dict[str, Any]:
    return {"entity": "app", "op": "upsert", "id": BASE + n, "row": {"id": BASE + n, "name": f"App{n}", "created": made, "version": 1}}


def delete(n: int) -> Dict[str, Any]:
    return {"entity": "job", "op": "delete", "id": BASE + n}


def counters(**local: int) -> Dict[str, Any]:
    """What an agent that renumbers tells the relay with each push: its id counters."""
    return {"sequences": {k: BASE + v for k, v in local.items()}}


def agent(relay_db: Any) -> Tuple[Any, Any]:
    relay_db.add_user("alice", "correct horse")
    _, alice = relay_db.login("alice", "correct horse")
    return alice, relay_db.verify(relay_db.link_site(alice, SITE, "polaris"))


def mirror(relay_db: Any, alice: Any, table: str = "job", columns: Tuple[str, ...] = ("id", "workdir", "state")) -> List[Any]:
    from balsam.relay.backend import RelayBackend

    return sorted(RelayBackend(relay_db, alice).select(table, {}, columns=columns))


def test_a_push_of_rows_the_relay_holds_as_they_are_is_applied_again_unchanged(relay_db: Any) -> None:
    alice, site = agent(relay_db)
    items = [app(1), job(1), job(2, parents=(1,)), event(1, 1), event(2, 2)]
    assert relay_db.ingest(site, "push-one", 1, items, counters(job=2, event=2, app=1)) == {"pushed_seq": 1, "applied": 5}
    before = mirror(relay_db, alice), mirror(relay_db, alice, "event", ("id", "job_id", "timestamp"))
    # Replayed under its own id: the stored answer. Under a new one (the outbox of a DB put back from a backup logs
    # the rows it kept again): applied again, not refused, and nothing changes.
    assert relay_db.ingest(site, "push-one", 1, items, counters(job=2, event=2, app=1))["replayed"] is True
    assert relay_db.ingest(site, "push-1-again", 2, items, counters(job=2, event=2, app=1)) == {"pushed_seq": 2, "applied": 5}
    assert relay_db.ingest(site, "push-1-old-agent", 3, items) == {"pushed_seq": 3, "applied": 5}  # an agent from before, too
    assert (mirror(relay_db, alice), mirror(relay_db, alice, "event", ("id", "job_id", "timestamp"))) == before
    with relay_db.connect() as c:
        assert c.exec_driver_sql("SELECT jobs_issued, issued FROM relay_site").one() == (BASE + 2, json.dumps({"app": BASE + 1,
                                                                                                                "event": BASE + 2}))


def test_rows_under_ids_pushed_before_for_other_rows_are_refused_until_the_site_gives_them_new_ids(relay_db: Any) -> None:
    from balsam.relay.store import Conflict

    alice, site = agent(relay_db)
    relay_db.ingest(site, "push-one", 1, [app(1), job(1), job(2), job(3), event(1, 1), event(2, 2)], counters(job=3, event=2, app=1))
    relay_db.ingest(site, "push-two", 2, [delete(3)], counters(job=3, event=2, app=1))
    pushed = mirror(relay_db, alice)
    # The site's DB is put back from a backup taken after job 1 was made: it makes jobs 2 and 3 again (other jobs: made
    # later), and job 4, an event 2 of its own, and its app again; job 1, which the backup kept, moved on.
    later = 1.8e9
    restored = [job(1, "JOB_FINISHED"), job(2, made=later), job(3, made=later), job(4, made=later), event(2, 2, at=later),
                event(3, 4, at=later), app(1, made=later)]
    answer = relay_db.ingest(site, "push-restored", 10, restored, counters(job=4, event=3, app=1))
    assert answer == {"pushed_seq": 2, "applied": 0, "issued": {"app": BASE + 1, "event": BASE + 2, "job": BASE + 3},
                      "reissued": {"app": [BASE + 1], "event": [BASE + 2], "job": [BASE + 2, BASE + 3]}}
    assert mirror(relay_db, alice) == pushed  # nothing of it applied: job 1 still RUNNING, no job 4
    # Refused again when resent (a refusal is not stored), and in one line to an agent that cannot give new ids.
    assert relay_db.ingest(site, "push-restored", 10, restored, counters(job=4, event=3, app=1))["reissued"]["job"] == [BASE + 2, BASE + 3]
    with pytest.raises(Conflict) as refused:
        relay_db.ingest(site, "push-restored-old-agent", 10, restored)
    message = str(refused.value)
    assert "\n" not in message and f"(2 jobs, 1 event, 1 app; first: job {BASE + 2})" in message and "put back from a backup" in message
    assert message.endswith("Upgrade Balsam at the site: its agent then gives those rows new ids")
    # The agent moved its counters past what the relay has seen and gave the rows new ids, dropping the old ones.
    moved = [job(1, "JOB_FINISHED"), delete(2), delete(3), job(5, made=later), job(6, made=later), job(4, made=later),
             event(3, 4, at=later), event(4, 5, at=later), app(2, made=later), {"entity": "app", "op": "delete", "id": BASE + 1}]
    assert relay_db.ingest(site, "push-moved", 11, moved, counters(job=6, event=4, app=2)) == {"pushed_seq": 11, "applied": 10}
    assert mirror(relay_db, alice) == [(BASE + 1, "w/1/0", "JOB_FINISHED")] + [(BASE + n, f"w/{n}/{later}", "RUNNING") for n in (4, 5, 6)]
    assert [e[0] - BASE for e in mirror(relay_db, alice, "event", ("id",))] == [1, 3, 4]  # job 2's event went with it


def test_an_agent_whose_counters_are_behind_what_the_relay_has_seen_is_told(relay_db: Any) -> None:
    _, site = agent(relay_db)
    relay_db.ingest(site, "push-one", 1, [job(n) for n in range(1, 6)] + [event(7, 1)], counters(job=5, event=7))
    assert "issued" not in relay_db.ingest(site, "heartbeat", 1, [], counters(job=5, event=7))
    assert relay_db.ingest(site, "after-restore", 0, [], counters(job=2, event=7))["issued"] == {"job": BASE + 5}
    assert "issued" not in relay_db.ingest(site, "old-agent", 0, [])  # an agent from before cannot use it


def test_a_relay_from_before_revision_0008_knows_the_ids_its_mirrors_hold(tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    from balsam.relay.migrate import current, upgrade
    from balsam.relay.store import RelayStore

    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(store, "0007")
    _, site = agent(store)
    store.ingest(site, "push-one", 1, [app(1), job(1), event(4, 1)])
    with store.begin() as c:  # as a relay before 0008 left it
        c.exec_driver_sql("UPDATE relay_site SET issued = '{}'")
    store.migrate()
    assert current(store) >= "0008"
    answer = store.ingest(site, "push-two", 2, [event(4, 1, at=1.8e9), app(1, made=2.0)], counters(job=1, event=4, app=1))
    assert answer["reissued"] == {"app": [BASE + 1], "event": [BASE + 4]}
    store.close()


# --------------------------------------------------------------------------------------------- end to end
def test_a_site_db_put_back_from_a_backup_never_hands_out_a_pushed_id_again(relay: Relay, tmp_path: Path,  # noqa: F811
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam import _api
    from tests.test_relay_faults import assert_equal_sides
    from tests.test_relay_parents import SITES, _failed_why, two_sites

    env, roots = node_env(tmp_path), {name: tmp_path / name for name in SITES}
    two_sites(env, roots, relay, start=False)
    monkeypatch.setenv("BALSAM_HOME", env["BALSAM_HOME"])
    (_, sync_a), (_, sync_b) = (_sync_service(roots[name], env) for name in SITES)
    from balsam.api import Job

    def job(name: str, site: str, parents: Any = ()) -> Any:
        j = Job(f"wf/{name}", app_id="Hello", site_name=site, parameters={"say_hello_to": name}, parent_ids=list(parents))
        j.save()
        return j

    kept = job("kept", "polaris")
    sync_a.push(force=True)
    backup = tmp_path / "polaris-backup.db"
    run(env, "-m", "balsam", "db", "backup", str(backup), "--site", str(roots["polaris"]))
    # After the backup: a job at polaris, pushed, that a job at theta waits on.
    lost = job("lost", "polaris")
    sync_a.push(force=True)
    child = job("sim", "theta", [lost.id])
    sync_b.push(force=True)
    assert sync_b.parents() == 0 and child.state == "AWAITING_PARENTS"
    # The backup is put back (the agent stopped, the DB file copied over), and a job made before the agent syncs
    # takes the id of the job it lost: the site alone cannot tell.
    _api.sites.reset()
    state = roots["polaris"] / ".balsam"
    for f in state.glob("site.db*"):
        f.unlink()
    shutil.copy2(backup, state / "site.db")
    fresh = job("fresh", "polaris")
    assert fresh.id == lost.id
    # The agent's sync: the relay refuses the job under the id it knew for "lost"; the site gives it a new one.
    (_, sync_a), (_, sync_b) = (_sync_service(roots[name], env) for name in SITES)
    assert sync_a.push(force=True) > 0
    ids = {j.workdir: j.id for j in Job.objects.filter(site_id=fresh.site_id)}
    assert ids["wf/kept"] == kept.id and ids["wf/fresh"] > lost.id and "wf/lost" not in ids
    assert job("later", "polaris").id > ids["wf/fresh"]  # nothing made from now on takes an id the relay has seen
    sync_a.push(force=True)
    assert_equal_sides(relay, roots["polaris"])  # the relay holds the site as it is: "lost" gone, "fresh" under its new id
    # The child at theta does not follow "fresh": its parent is gone, and it says so.
    assert sync_b.parents() == 1
    child.refresh_from_db()
    assert child.state == "FAILED"
    assert _failed_why(roots["theta"], child.id) == f"parent job {lost.id} is not at site polaris: it was deleted there, or never existed"
    # The pushes the backup's DB makes again of what it kept change nothing at the relay.
    with sync_a.site.store.write() as conn:
        from balsam.db import outbox

        outbox.relog_after(conn, 0)
    sync_a.push(force=True)
    assert_equal_sides(relay, roots["polaris"])
