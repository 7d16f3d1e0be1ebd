"""The relay's bulk ingest on SQLite and PostgreSQL: a push of thousands of rows lands in a few statements, and
what a user filters on afterwards (states, tags, parents) matches what the site pushed, whether a push moves
jobs on, changes their tags, adds parents, or deletes them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tests.relay_support import DATABASES, created_at, relay_store

SITE = 7
BASE = SITE << 32


@pytest.fixture(params=DATABASES)
def relay(request: Any, tmp_path: Path) -> Iterator[Any]:
    yield from relay_store(request.param, tmp_path)


@pytest.fixture
def site(relay: Any) -> Any:
    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    return relay.verify(relay.link_site(alice, SITE, "polaris"))


def job(i: int, state: str, tags: Optional[Dict[str, str]] = None, parents: Optional[List[int]] = None) -> Dict[str, Any]:
    """A push item as the site's outbox sends it (every column of the site store's job table)."""
    row = {"id": BASE + i, "workdir": f"w/{i}", "app_id": BASE + 1, "tags": json.dumps(tags if tags is not None else {"exp": "a"}),
           "parameters": json.dumps({"x": i}), "data": "{}", "return_code": None, "num_nodes": 1, "ranks_per_node": 1,
           "threads_per_rank": 1, "threads_per_core": 1, "gpus_per_rank": 0.0, "node_packing_count": 1, "launch_params": "{}",
           "wall_time_min": 0, "parent_ids": json.dumps(parents or []), "batch_job_id": None, "session_id": None, "state": state,
           "last_update": time.time(), "created": created_at(BASE + i), "pending_file_cleanup": 1, "serialized_return_value": None,
           "serialized_exception": None, "version": 1}
    return {"entity": "job", "op": "upsert", "id": BASE + i, "row": row}


def ids(relay: Any, **filters: Any) -> List[int]:
    from balsam.relay import mirror

    with relay.connect() as c:
        return [r[0] - BASE for r in mirror.select(c, "job", [SITE], filters, ["id"])]


def statements(relay: Any) -> List[str]:
    """Every SQL statement the store runs from now on (a list that fills as it goes)."""
    import sqlalchemy as sa

    seen: List[str] = []
    sa.event.listen(relay.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_large_push_is_a_few_statements_and_reads_back_exactly(relay: Any, site: Any) -> None:
    n = 5000
    seen = statements(relay)
    answer = relay.ingest(site, "push-big-1", 1, [job(i, "RUNNING", {"exp": "a", "k": str(i % 10)}) for i in range(1, n + 1)])
    assert answer == {"pushed_seq": 1, "applied": n}
    assert len(seen) <= 12, seen  # bookkeeping + the rows + their tags: never one statement per row
    assert len(ids(relay, state="RUNNING")) == n
    assert ids(relay, tags={"k": "3"}) == list(range(3, n + 1, 10))
    from balsam.relay import mirror

    with relay.connect() as c:  # every column the site pushed reads back as it was
        [row] = mirror.select(c, "job", [SITE], {"id": [BASE + 42]}, ["workdir", "parameters", "tags", "state", "pending_file_cleanup"])
    assert row == ("w/42", '{"x": 42}', '{"exp": "a", "k": "2"}', "RUNNING", 1)


def test_state_changes_keep_tags_and_changed_tags_are_rewritten(relay: Any, site: Any) -> None:
    relay.ingest(site, "push-tags-1", 1, [job(i, "RUNNING", {"exp": "a"}) for i in range(1, 101)])
    seen = statements(relay)
    relay.ingest(site, "push-tags-2", 2, [job(i, "JOB_FINISHED", {"exp": "a"}) for i in range(1, 101)])
    assert not any("relay_job_tag" in s and not s.lstrip().upper().startswith("SELECT") for s in seen), seen  # tags untouched
    assert len(ids(relay, state="JOB_FINISHED", tags={"exp": "a"})) == 100
    # Retagged jobs answer their new tags only; a job whose tags were cleared answers none.
    relay.ingest(site, "push-tags-3", 3, [job(1, "JOB_FINISHED", {"exp": "b", "new": "1"}), job(2, "JOB_FINISHED", {})])
    assert ids(relay, tags={"exp": "b"}) == [1] and ids(relay, tags={"new": "1"}) == [1]
    assert 1 not in ids(relay, tags={"exp": "a"}) and 2 not in ids(relay, tags={"exp": "a"})
    assert len(ids(relay, tags={"exp": "a"})) == 98


def test_parents_added_later_and_deletes_reach_the_links(relay: Any, site: Any) -> None:
    relay.ingest(site, "push-dag-1", 1, [job(1, "JOB_FINISHED"), job(2, "JOB_FINISHED"), job(3, "AWAITING_PARENTS", parents=[BASE + 1])])
    assert ids(relay, parent_id=[BASE + 1]) == [3] and ids(relay, parent_id=[BASE + 2]) == []
    relay.ingest(site, "push-dag-2", 2, [job(3, "READY", parents=[BASE + 1, BASE + 2])])  # the site's add_parents
    assert ids(relay, parent_id=[BASE + 2]) == [3]
    relay.ingest(site, "push-dag-3", 3, [{"entity": "job", "op": "delete", "id": BASE + 3}, job(4, "READY", {"exp": "z"})])
    assert ids(relay, parent_id=[BASE + 1]) == [] and ids(relay, tags={"exp": "a"}) == [1, 2] and ids(relay, tags={"exp": "z"}) == [4]
    # Within one push the last word about a row wins: deleted then pushed again is there; pushed then deleted is gone.
    relay.ingest(site, "push-dag-4", 4, [{"entity": "job", "op": "delete", "id": BASE + 1}, job(1, "FAILED", {"exp": "y"}),
                                         job(2, "FAILED"), {"entity": "job", "op": "delete", "id": BASE + 2}])
    assert ids(relay) == [1, 4] and ids(relay, tags={"exp": "y"}) == [1] and ids(relay, state="FAILED") == [1]


@pytest.mark.parametrize("item, message", [
    ({"entity": "job", "op": "upsert", "id": "7", "row": {}}, "bad id"),
    ({"entity": ["job"], "op": "upsert", "id": BASE + 1, "row": {}}, "unknown entity"),
    ({"entity": "job", "op": "upsert", "id": (SITE + 1) << 32, "row": {}}, "is not a row of site 7"),
    ({"entity": "job", "op": "upsert", "id": BASE + 1, "row": "x"}, "op must be upsert"),
    ({"entity": "job", "op": "merge", "id": BASE + 1}, "op must be upsert"),
    ("job", "is not an object"),
])
def test_a_bad_item_refuses_the_whole_push(relay: Any, site: Any, item: Any, message: str) -> None:
    from balsam.exceptions import ValidationError

    with pytest.raises(ValidationError, match=message):
        relay.ingest(site, "push-bad-1", 1, [job(1, "READY"), item])
    assert ids(relay) == [] and relay.pushed_seq(site) == 0


def test_rows_read_back_the_same_with_or_without_orjson() -> None:
    pytest.importorskip("sqlalchemy")
    from balsam.relay import bulk

    row = {"id": 1, "tags": '{"a": "é"}', "x": 1.5, "big": 2**70, "none": None, "text": "line\nbreak \u2603"}
    assert json.loads(bulk.dumps(row)) == json.loads(bulk._std_dumps(row)) == row



def test_a_relay_made_at_revision_0001_gains_the_links_column(tmp_path: Path) -> None:
    pytest.importorskip("alembic")
    import sqlalchemy as sa

    from balsam.relay.migrate import current, upgrade
    from balsam.relay.store import RelayStore

    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(store, "0001")
    with store.begin() as c:  # the job mirror as revision 0001 first made it
        c.exec_driver_sql("ALTER TABLE relay_job DROP COLUMN links")
    store.close()
    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate()
    assert current(store) >= "0002"  # and any revision after it
    with store.connect() as c:
        assert "links" in {col["name"] for col in sa.inspect(c).get_columns("relay_job")}
    store.add_user("alice", "correct horse")
    _, alice = store.login("alice", "correct horse")
    site = store.verify(store.link_site(alice, SITE, "polaris"))
    store.ingest(site, "push-old-1", 1, [job(1, "READY", {"exp": "a"})])
    store.ingest(site, "push-old-2", 2, [job(1, "RUNNING", {"exp": "b"})])
    assert ids(store, tags={"exp": "b"}) == [1] and ids(store, tags={"exp": "a"}) == []
    store.close()


def test_request_bodies_parse_the_same_with_or_without_orjson() -> None:
    pytest.importorskip("starlette")
    from balsam.http.server import _loads

    for text in (b'{"items": [{"id": 1, "row": {"tags": "{}"}}]}', b"[NaN, Infinity, 123456789012345678901234567890]",
                 b'"\\ud800"', b'{"a": 1, "a": 2}'):
        assert repr(_loads(text)) == repr(json.loads(text))
    with pytest.raises(ValueError):
        _loads(b'{"not": json')


def test_revision_0006_makes_mirror_ids_rowids_keeping_rows_indexes_and_counts(tmp_path: Path) -> None:
    """A relay made before revision 0006 (BIGINT ids, the index of last_update alone) is rebuilt in place: every
    job, tag and count is still there, the ids are SQLite's rowids, the other indexes remain, and pushes go on."""
    pytest.importorskip("alembic")
    from balsam.relay import mirror
    from balsam.relay.migrate import current, upgrade
    from balsam.relay.store import RelayStore

    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(store, "0005")
    with store.begin() as c:  # the mirror tables as revisions 0001-0005 made them (today's metadata differs)
        for table in mirror.t.MIRRORS.values():
            sql = c.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (table.name,)).scalar_one()
            c.exec_driver_sql(f'ALTER TABLE "{table.name}" RENAME TO "{table.name}_x"')
            c.exec_driver_sql(sql.replace(" INTEGER NOT NULL", " BIGINT NOT NULL", 1))
            c.exec_driver_sql(f'INSERT INTO "{table.name}" SELECT * FROM "{table.name}_x"')
            c.exec_driver_sql(f'DROP TABLE "{table.name}_x"')
        c.exec_driver_sql("CREATE INDEX relay_job_site_state ON relay_job (site_id, state, id)")
        c.exec_driver_sql("CREATE INDEX relay_job_app ON relay_job (app_id)")
        c.exec_driver_sql("CREATE INDEX relay_job_last_update ON relay_job (last_update)")
        c.exec_driver_sql("CREATE INDEX relay_job_site_last_update ON relay_job (site_id, last_update, id)")
        c.exec_driver_sql("CREATE INDEX relay_job_workdir ON relay_job (workdir, id)")
        c.exec_driver_sql("CREATE INDEX relay_event_job ON relay_event (job_id)")
    store.add_user("alice", "correct horse")
    _, alice = store.login("alice", "correct horse")
    agent = store.verify(store.link_site(alice, SITE, "polaris"))
    store.ingest(agent, "before-0006", 1, [job(i, "RUNNING", {"k": str(i % 3)}) for i in range(1, 301)]
                 + [{"entity": "event", "op": "upsert", "id": BASE + 1, "row": {"id": BASE + 1, "job_id": BASE + 1, "timestamp": 1.0,
                                                                               "from_state": "READY", "to_state": "RUNNING"}}])
    with store.connect() as c:
        assert c.exec_driver_sql("SELECT type FROM pragma_table_info('relay_job') WHERE pk = 1").scalar_one() == "BIGINT"
    store.close()

    store = RelayStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate()
    assert current(store) >= "0006"
    with store.connect() as c:
        for table in mirror.t.MIRRORS.values():
            assert c.exec_driver_sql(f"SELECT type FROM pragma_table_info('{table.name}') WHERE pk = 1").scalar_one() == "INTEGER"
        indexes = {r[0] for r in c.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'relay_job'")}
        plan = " ".join(str(r[-1]) for r in c.exec_driver_sql("EXPLAIN QUERY PLAN SELECT state FROM relay_job WHERE id = 5"))
    assert {"relay_job_site_state", "relay_job_site_last_update", "relay_job_workdir", "relay_job_app"} <= indexes
    assert "relay_job_last_update" not in indexes and not any(n.startswith("sqlite_autoindex") for n in indexes)
    assert "INTEGER PRIMARY KEY" in plan
    assert ids(store, state="RUNNING") == list(range(1, 301)) and ids(store, tags={"k": "1"}) == list(range(1, 301, 3))
    from balsam.relay.backend import RelayBackend

    user = RelayBackend(store, alice)
    assert user.count_by("job", {}, "state") == {"RUNNING": 300} and user.count("event", {}) == 1
    store.ingest(agent, "after-0006", 2, [job(i, "JOB_FINISHED", {"k": str(i % 3)}) for i in range(1, 101)])
    assert user.count_by("job", {}, "state") == {"RUNNING": 200, "JOB_FINISHED": 100}
    assert ids(store, state="JOB_FINISHED", tags={"k": "2"}) == list(range(2, 101, 3))
    store.close()
