"""Counts by state at the relay come from a per-site count table (revision 0005) kept by every push in the push's
own transaction: after new jobs, state changes, replayed pushes, deletes, a row deleted and pushed again in one
push, and a site catching up after being offline, the counts a user reads equal a fresh ``GROUP BY`` of the
mirror, on SQLite and PostgreSQL; they read the count table, never an index entry per job; a relay made before the
table fills it from the jobs it holds."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.relay_support import DATABASES, created_at, relay_store

STATES = ("READY", "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE", "JOB_FINISHED", "FAILED")


@pytest.fixture(params=DATABASES)
def relay(request: Any, tmp_path: Path) -> Iterator[Any]:
    yield from relay_store(request.param, tmp_path)


def upsert(site: int, local: int, state: str) -> Dict[str, Any]:
    job_id = (site << 32) + local
    now = time.time()
    return {"entity": "job", "op": "upsert", "id": job_id, "row": {
        "id": job_id, "workdir": f"w/{local}", "app_id": (site << 32) + 1, "tags": json.dumps({"n": str(local % 3)}),
        "parameters": "{}", "parent_ids": "[]", "state": state, "created": created_at(job_id), "last_update": now, "version": 1}}


def delete(site: int, local: int) -> Dict[str, Any]:
    return {"entity": "job", "op": "delete", "id": (site << 32) + local}


def truth(store: Any, sites: List[int]) -> Dict[str, int]:
    """Counts by state as a GROUP BY of the job mirror (what the count table must equal)."""
    import sqlalchemy as sa

    from balsam.relay import schema as t

    with store.connect() as c:
        rows = c.execute(sa.select(t.job.c.state, sa.func.count()).where(t.job.c.site_id.in_(sites)).group_by(t.job.c.state))
        return {str(s): int(n) for s, n in rows}


def linked(store: Any, sites: List[int]) -> Any:
    store.add_user("alice", "correct horse")
    _, alice = store.login("alice", "correct horse")
    return alice, {s: store.verify(store.link_site(alice, s, f"site{s}")) for s in sites}


def test_counts_stay_exact_through_pushes_replays_deletes_and_catching_up(relay: Any) -> None:
    from balsam.relay.backend import RelayBackend

    alice, agents = linked(relay, [3, 5])
    user = RelayBackend(relay, alice)
    relay.ingest(agents[3], "push-3-create", 1, [upsert(3, i, "READY") for i in range(1, 201)])
    relay.ingest(agents[5], "push-5-create", 1, [upsert(5, i, "RUNNING") for i in range(1, 51)])
    assert user.count_by("job", {}, "state") == {"READY": 200, "RUNNING": 50}
    # State changes; a job pushed twice in one push (the last copy counts); a job pushed unchanged.
    relay.ingest(agents[3], "push-3-run", 2, [upsert(3, i, "RUNNING") for i in range(1, 21)] + [upsert(3, 21, "RUNNING"),
                 upsert(3, 21, "FAILED"), upsert(3, 22, "READY")])
    assert user.count_by("job", {}, "state") == {"READY": 179, "RUNNING": 70, "FAILED": 1} == truth(relay, [3, 5])
    # A replayed push changes nothing (answered from the stored answer).
    assert relay.ingest(agents[3], "push-3-run", 2, [upsert(3, i, "JOB_FINISHED") for i in range(1, 21)])["replayed"] is True
    assert user.count_by("job", {}, "state") == {"READY": 179, "RUNNING": 70, "FAILED": 1}
    # Deletes (of jobs there and not there), and a job deleted and pushed again in one push.
    relay.ingest(agents[3], "push-3-del", 3, [delete(3, 1), delete(3, 100), delete(3, 9999), delete(3, 150), upsert(3, 150, "FAILED")])
    assert user.count_by("job", {}, "state") == {"READY": 177, "RUNNING": 69, "FAILED": 2} == truth(relay, [3, 5])
    # Counts per site, per state filter, and totals.
    assert user.narrow([5]).count_by("job", {}, "state") == {"RUNNING": 50}
    assert user.count("job", {}) == 248 and user.count("job", {"state": ["running", "FAILED"]}) == 71
    assert user.count_by("job", {"state": ["READY"]}, "state") == {"READY": 177}
    # Another filter is answered from the jobs themselves (and agrees).
    assert user.count_by("job", {"tags": {"n": "1"}}, "state") == truth_tagged(relay, [3, 5], "1")

    # Site 5 catches up after being offline: one large push with many changes to the same jobs, creates and deletes
    # (as a site logs them: new jobs in the order of their ids, and a deleted job never pushed again).
    rng = random.Random(5)
    backlog: List[Dict[str, Any]] = []
    gone = set()
    made = 50
    for _ in range(3000):
        local = rng.randrange(1, min(made + 2, 400))
        if local in gone:
            continue
        made = max(made, local)
        if rng.random() < 0.1:
            gone.add(local)
            backlog.append(delete(5, local))
        else:
            backlog.append(upsert(5, local, rng.choice(STATES)))
    for n, start in enumerate(range(0, len(backlog), 700)):  # in the site's batches
        relay.ingest(agents[5], f"p5-catchup-{n}", 10 + n, backlog[start:start + 700])
        relay.ingest(agents[5], f"p5-catchup-{n}", 10 + n, backlog[start:start + 700])  # each resent once: a lost answer
    assert user.narrow([5]).count_by("job", {}, "state") == truth(relay, [5])
    assert user.count_by("job", {}, "state") == truth(relay, [3, 5])
    assert user.count("job", {}) == sum(truth(relay, [3, 5]).values())


def truth_tagged(store: Any, sites: List[int], value: str) -> Dict[str, int]:
    import sqlalchemy as sa

    from balsam.relay import schema as t

    with store.connect() as c:
        rows = c.execute(sa.select(t.job.c.state, sa.func.count()).select_from(t.job.join(t.job_tag, t.job_tag.c.job_id == t.job.c.id))
                         .where(t.job.c.site_id.in_(sites), t.job_tag.c.key == "n", t.job_tag.c.value == value).group_by(t.job.c.state))
        return {str(s): int(n) for s, n in rows}


def test_counts_by_state_read_the_count_table_not_the_jobs(relay: Any) -> None:
    import sqlalchemy as sa

    from balsam.relay.backend import RelayBackend

    alice, agents = linked(relay, [3, 5, 8])
    for s, agent in agents.items():
        relay.ingest(agent, f"push-{s}-all", 1, [upsert(s, i, STATES[i % len(STATES)]) for i in range(1, 301)])
    statements: List[Any] = []
    sa.event.listen(relay.engine, "before_cursor_execute", lambda _c, _cur, sql, params, *_a: statements.append((sql, params)))
    user = RelayBackend(relay, alice)
    counts = user.count_by("job", {}, "state")
    total = user.count("job", {"state": ["RUNNING"]})
    reads = [(sql, params) for sql, params in statements if "relay_job" in sql]
    assert counts == truth(relay, [3, 5, 8]) and sum(counts.values()) == 900 and total == counts["RUNNING"]
    assert len(reads) == 2 and all("relay_job_count" in sql and "relay_job " not in sql.replace("relay_job_count", "")
                                   for sql, _ in reads), reads
    with relay.connect() as c:
        for sql, params in reads:
            if relay.dialect == "sqlite":
                plan = " ".join(str(r[-1]) for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
                assert "relay_job_count" in plan and "SCAN" not in plan, plan
            else:
                c.exec_driver_sql("SET enable_seqscan = off")
                plan = " ".join(str(r[0]) for r in c.exec_driver_sql("EXPLAIN " + sql, params))
                assert "relay_job_count_pkey" in plan and "Seq Scan" not in plan, plan


def test_a_relay_made_before_the_count_table_fills_it(tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    from balsam.relay.backend import RelayBackend
    from balsam.relay.migrate import current, upgrade
    from balsam.relay.store import RelayStore

    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(store, "0004")
    alice, agents = linked(store, [3, 5])
    relay_jobs = [upsert(3, i, STATES[i % 3]) for i in range(1, 101)] + [upsert(5, i, "FAILED") for i in range(1, 11)]
    with store.begin() as c:  # jobs in the mirror as revision 0004 left them: no count table
        from balsam.relay import mirror

        c.exec_driver_sql("DROP TABLE relay_job_count")
        for s in (3, 5):
            mirror.bulk.upsert(c, mirror.t.job, mirror.COLUMNS["job"],
                               [mirror.mirror_row("job", it["id"], s, it["row"]) for it in relay_jobs if it["id"] >> 32 == s])
    store.close()
    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate()
    assert current(store) >= "0005"
    user = RelayBackend(store, alice)
    assert user.count_by("job", {}, "state") == truth(store, [3, 5]) == {"READY": 33, "STAGED_IN": 34, "PREPROCESSED": 33, "FAILED": 10}
    store.ingest(agents[3], "after-migration", 2, [upsert(3, 1, "FAILED")])  # and kept from then on
    assert user.count_by("job", {}, "state") == {"READY": 33, "STAGED_IN": 33, "PREPROCESSED": 33, "FAILED": 11}
    store.close()
