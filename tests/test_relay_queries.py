"""The relay's hot queries use indexes, on SQLite and PostgreSQL: every statement a push (ingest), a page of jobs
(all of a user's sites, one state, one site, a tag), a count and the counts by state run is explained, in its own
transaction and with its own parameters, and none scans a relay table whole.

On SQLite a whole-table walk is a ``SCAN <table>`` line of ``EXPLAIN QUERY PLAN`` (with or without an index);
on PostgreSQL it is a ``Seq Scan`` node, or an index scan with no index condition, of a relay table. PostgreSQL
prefers a sequential scan on any small table, so its planner is asked with ``enable_seqscan`` off: the question
is whether an index can serve the statement at all (on a million jobs it does, as bench/bench_relay.py shows)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.relay_support import DATABASES, created_at, relay_store

SITES = (3, 5, 8)


@pytest.fixture(params=DATABASES)
def relay(request: Any, tmp_path: Path) -> Iterator[Any]:
    yield from relay_store(request.param, tmp_path)


class Plans:
    """Explains every statement the store's engine runs (in the same transaction, before it runs)."""

    def __init__(self, store: Any) -> None:
        import sqlalchemy as sa

        self.dialect = store.dialect
        self.plans: List[Tuple[str, List[str]]] = []
        self.on = False
        if self.dialect == "postgresql":
            sa.event.listen(store.engine, "connect", lambda dbapi, _rec: _no_seqscan(dbapi))
            store.engine.dispose()
        sa.event.listen(store.engine, "before_cursor_execute", self._explain)

    def _explain(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not self.on or not re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE)\b", statement, re.I) or "relay_" not in statement:
            return
        params = parameters[0] if executemany else parameters
        if self.dialect == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, params)
            lines = [str(r[-1]) for r in cursor.fetchall()]
        else:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            lines = _pg_nodes(cursor.fetchone()[0][0]["Plan"])
        self.plans.append((statement, lines))

    def full_scans(self) -> List[str]:
        """The statements (with their plans) that walk a whole relay table."""
        bad = []
        for statement, lines in self.plans:
            if self.dialect == "sqlite":
                hits = [x for x in lines if re.match(r"SCAN relay_\w+", x)]
            else:
                hits = [x for x in lines if x.startswith("FULL")]
            if hits:
                bad.append(f"{' '.join(statement.split())[:300]}\n    {hits}")
        return bad


def _no_seqscan(dbapi: Any) -> None:
    cur = dbapi.cursor()
    cur.execute("SET enable_seqscan = off")
    cur.close()
    dbapi.commit()


def _pg_nodes(node: Dict[str, Any]) -> List[str]:
    """Each plan node as a line; a whole walk of a relay table (not a staging or temporary one) starts with FULL."""
    kind, relation = node.get("Node Type", ""), str(node.get("Relation Name", ""))
    scans_all = relation.startswith("relay_") and (kind == "Seq Scan" or (
        kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node))
    out = [f"{'FULL ' if scans_all else ''}{kind} {relation} {node.get('Index Name', '')} {node.get('Index Cond', '')}"]
    for child in node.get("Plans", []):
        out.extend(_pg_nodes(child))
    return out


def items(site: int, n: int, state: str, tags: Dict[str, str]) -> List[Dict[str, Any]]:
    now = time.time()
    base = site << 32
    return [{"entity": "job", "op": "upsert", "id": base + i,
             "row": {"id": base + i, "workdir": f"w/{i}", "app_id": base + 1, "tags": json.dumps(tags), "parameters": "{}",
                     "parent_ids": json.dumps([base + i - 1] if i > 1 else []), "state": state, "created": created_at(base + i), "last_update": now,
                     "version": 1}} for i in range(1, n + 1)] + [
        {"entity": "event", "op": "upsert", "id": base + i,
         "row": {"id": base + i, "job_id": base + i, "timestamp": created_at(base + i), "from_state": "CREATED", "to_state": state, "data": "{}"}}
        for i in range(1, n + 1)]


def test_ingest_listing_and_counts_walk_no_table_whole(relay: Any) -> None:
    from balsam.http.schemas import COLUMNS
    from balsam.relay.backend import RelayBackend

    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    agents = {s: relay.verify(relay.link_site(alice, s, f"site{s}")) for s in SITES}
    for s, agent in agents.items():  # the first push of each site (jobs are new), outside the check
        relay.ingest(agent, f"push-{s}-first", 1, items(s, 300, "READY", {"exp": "a"}))
    plans = Plans(relay)
    plans.on = True
    # Pushes: state changes, changed tags and parents, deletes.
    relay.ingest(agents[3], "push-3-second", 2, items(3, 300, "RUNNING", {"exp": "a"}))
    relay.ingest(agents[5], "push-5-second", 2, items(5, 300, "RUNNING", {"exp": "b"})
                 + [{"entity": "job", "op": "delete", "id": (5 << 32) + 7}])
    relay.ingest(agents[5], "push-5-second", 2, [])  # a retried push: answered from the stored answer
    # What a user's listing asks.
    backend = RelayBackend(relay, alice)
    page = backend.select("job", {}, columns=COLUMNS["job"], limit=101)
    running = backend.select("job", {"state": ["RUNNING"]}, columns=COLUMNS["job"], limit=101, offset=100)
    one_site = backend.narrow([8]).select("job", {}, columns=COLUMNS["job"], limit=101)
    tagged = backend.select("job", {"tags": {"exp": "b"}}, columns=COLUMNS["job"], limit=101)
    children = backend.select("job", {"parent_id": [(3 << 32) + 4]}, columns=COLUMNS["job"], limit=101)
    recent = backend.select("event", {}, columns=COLUMNS["event"], limit=101)
    counts = backend.count_by("job", {}, "state")
    total = backend.count("job", {"state": ["READY"]})
    plans.on = False
    # The answers are right (the plans are of real work)...
    assert [r[0] for r in page] == [(3 << 32) + i for i in range(1, 102)]
    assert len(running) == 101 and all(r[COLUMNS["job"].index("state")] == "RUNNING" for r in running)
    assert [r[0] >> 32 for r in one_site] == [8] * 101
    assert len(tagged) == 101 and [r[0] for r in children] == [(3 << 32) + 5]
    assert len(recent) == 101
    assert counts == {"READY": 300, "RUNNING": 599} and total == 300
    # ...and none of them walked a whole table.
    assert len(plans.plans) >= 15
    assert plans.full_scans() == []


def test_pages_across_sites_are_the_pages_of_one_sorted_list(relay: Any) -> None:
    from balsam.relay import mirror

    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    for s in SITES:
        agent = relay.verify(relay.link_site(alice, s, f"site{s}"))
        rows = items(s, 40, "READY", {"exp": "a"})[:40]
        for n, it in enumerate(rows):
            it["row"]["state"] = ("READY", "RUNNING", "FAILED")[(n * s) % 3]
            it["row"]["last_update"] = float((n * 7 + s) % 13)
        relay.ingest(agent, f"push-{s}-pages", 1, rows)
    with relay.connect() as c:
        for filters in ({}, {"state": ["RUNNING"]}, {"state": ["READY", "FAILED"]}):
            for order in ((), ("-id",), ("last_update",), ("-last_update", "-id")):
                whole = mirror.select(c, "job", SITES, filters, ["id"], order)  # no limit: one query, sorted by the database
                assert len(whole) > 20
                for offset in (0, 7, 35, 39, 80, len(whole) - 3):
                    page = mirror.select(c, "job", SITES, filters, ["id"], order, limit=10, offset=offset)
                    assert page == whole[offset:offset + 10], (filters, order, offset)
                assert mirror.select(c, "job", SITES[1:2], filters, ["id"], order, limit=5) == [
                    r for r in whole if r[0] >> 32 == SITES[1]][:5]


def test_the_dashboards_sort_and_workdir_filter_use_their_indexes(relay: Any) -> None:
    """Revision 0004: jobs by last update walk (site_id, last_update, id) in order, and so do filters by last update
    (0006 dropped the index of last_update alone); a workdir substring is found through an index of workdirs
    (PostgreSQL: the pg_trgm index; SQLite: the narrow (workdir, id) index, read instead of the wide rows)."""
    from balsam.relay.backend import RelayBackend

    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    for s in SITES:
        rows = items(s, 300, "READY", {"exp": "a"})
        for it in rows:
            if it["entity"] == "job":
                it["row"]["last_update"] = float((it["id"] & 0xFFFF) % 97)
        relay.ingest(relay.verify(relay.link_site(alice, s, f"site{s}")), f"push-{s}-dash", 1, rows)
    plans = Plans(relay)
    plans.on = True
    backend = RelayBackend(relay, alice)
    recent = backend.narrow([5]).select("job", {}, columns=("id", "last_update"), order_by=["-last_update"], limit=20)
    found = backend.select("job", {"workdir__contains": "w/29"}, columns=("workdir",), order_by=["-id"], limit=50)
    first = len(plans.plans)
    changed = backend.select("job", {"last_update_after": 95.0}, columns=("id",), limit=100)  # what changed lately
    n_changed = backend.count("job", {"last_update_after": 95.0})
    since = plans.plans[first:]
    plans.on = False
    late = sorted((s << 32) + i for s in SITES for i in range(1, 301) if float(((s << 32) + i & 0xFFFF) % 97) > 95.0)
    assert [r[0] for r in changed] == late[:100] and n_changed == len(late) > 0
    by_time = [" ".join(lines) for statement, lines in since if "last_update >" in statement]
    assert len(by_time) == len(SITES) + 1 and all("relay_job_site_last_update" in p for p in by_time), since  # (revision 0006)
    want = sorted(((r, (5 << 32) + i) for i in range(1, 301) for r in [float(((5 << 32) + i & 0xFFFF) % 97)]), reverse=True)[:20]
    assert [(r[1], r[0]) for r in recent] == want  # newest first, ties by id in the same direction
    assert sorted(r[0] for r in found) == sorted([f"w/{n}" for n in range(1, 301) if "w/29" in f"w/{n}"] * len(SITES))
    text = "\n".join(" ".join(lines) for _, lines in plans.plans)
    assert "relay_job_site_last_update" in text and plans.full_scans() == []
    if relay.dialect == "sqlite":
        assert "COVERING INDEX relay_job_workdir" in text
    else:  # on 900 rows PostgreSQL walks the ids; the question is whether the trigram index serves the substring
        import sqlalchemy as sa

        from balsam.relay import schema as t

        w = t.job.alias("w")
        with relay.connect() as c:
            c.exec_driver_sql("SET enable_seqscan = off")
            sql = sa.select(w.c.id).where(w.c.workdir.contains("w/29", autoescape=True)).compile(c, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(r[0]) for r in c.exec_driver_sql(f"EXPLAIN {sql}"))
        assert "relay_job_workdir_trgm" in plan, plan


def test_the_django_time_lookups_mean_the_same_through_the_relay(relay: Any) -> None:
    """``last_update__gte=t`` and its kin (Balsam 0.x's Django spelling, which the API accepts: test_compat_07_walk)
    reach the relay's own SQL with the site's meaning: inclusive to the microsecond, strict past it."""
    from balsam.relay.backend import RelayBackend

    relay.add_user("alice", "correct horse")
    _, alice = relay.login("alice", "correct horse")
    rows = items(3, 4, "READY", {"exp": "a"})
    for it in rows:
        if it["entity"] == "job":
            it["row"]["last_update"] = 1000.0 + (it["id"] & 0xFF) + 0.0000004  # shown rounded to the microsecond
    relay.ingest(relay.verify(relay.link_site(alice, 3, "site3")), "push-3-django", 1, rows)
    backend = RelayBackend(relay, alice)
    counts = {k: backend.count("job", {k: 1002.0}) for k in ("last_update__gte", "last_update__gt", "last_update__lte", "last_update__lt")}
    assert counts == {"last_update__gte": 3, "last_update__gt": 2, "last_update__lte": 2, "last_update__lt": 1}
    assert backend.count("job", {"last_update_after": 1002.0}) == 3  # 0.7's strict comparison, unchanged
