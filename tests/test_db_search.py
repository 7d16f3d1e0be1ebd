"""The dashboard's indexes (schema 8): a workdir substring filter answers the same jobs as a scan whatever the
trigram index covers (nothing yet, part, all; after workdir changes, deletes and rewritten ids), a site opened
by a SQLite without FTS5 keeps working, the agent's server fills the index, and the sort by last update walks
an index."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, List

import pytest

from balsam.api import Job
from balsam.db import query as q
from balsam.db import search
from balsam.db.ids import rewrite_site_ids

pytestmark = pytest.mark.skipif(not search.capable(sqlite3.connect(":memory:")), reason="this SQLite has no FTS5 trigram tokenizer")
NEEDLES = ("w/1", "w/12", "r3/w3", 'a"b', "ÿé/", "W/1", "/w1", "w/1999", "nothing")


def _workdirs(store: Any, value: str) -> List[str]:
    return [r[0] for r in q.select(store.conn, q.JOB, {"workdir__contains": value}, columns=("workdir",), order_by=("-id",))]


def _scan(store: Any, value: str) -> List[str]:
    return [r[0] for r in store.conn.execute("SELECT workdir FROM job WHERE instr(workdir, ?) > 0 ORDER BY id DESC", (value,))]


def _catch_up(store: Any) -> None:
    while True:
        with store.write() as conn:
            if not search.catch_up(conn, 700):
                return


@pytest.fixture
def jobs(site: Any, hello: Any) -> Any:
    """2,000 jobs with workdirs r<k>/w<i>, one with a quote, one with accents."""
    made = [hello.submit(workdir=f"r{i % 7}/w/{i}", say_hello_to="x", save=False) for i in range(2000)]
    made += [hello.submit(workdir='odd/a"b', say_hello_to="x", save=False), hello.submit(workdir="odd/ÿé/x", say_hello_to="x", save=False)]
    Job.objects.bulk_create(made)
    return site.store


def test_a_substring_filter_finds_what_a_scan_finds_whatever_the_index_covers(jobs: Any, hello: Any) -> None:
    store = jobs
    for needle in NEEDLES:  # nothing indexed yet: the filter scans
        assert _workdirs(store, needle) == _scan(store, needle)
    with store.write() as conn:
        search.catch_up(conn, 900)  # part of them
    Job.objects.bulk_create([hello.submit(workdir=f"late/w/1{i}", say_hello_to="x", save=False) for i in range(5)])
    assert search.contains_clause(store.conn, "w/1999") is not None  # the index is in use
    for needle in NEEDLES:
        assert _workdirs(store, needle) == _scan(store, needle), needle
    _catch_up(store)
    assert not search.pending(store.conn)
    for needle in NEEDLES:
        assert _workdirs(store, needle) == _scan(store, needle), needle
    assert _workdirs(store, "w/1999") == ["r4/w/1999"]

    moved = Job.objects.get(workdir="r4/w/1999")
    moved.workdir = "moved/elsewhere"
    moved.save()
    Job.objects.filter(workdir="r0/w/1995").delete()
    assert _workdirs(store, "w/1999") == [] and _workdirs(store, "elsewhere") == ["moved/elsewhere"]
    assert _workdirs(store, "w/199") == _scan(store, "w/199") and "r0/w/1995" not in _workdirs(store, "w/199")

    with store.write() as conn:  # a site moving to another site id (linking to a relay) rewrites every job id
        rewrite_site_ids(conn, 4242)
    assert search.contains_clause(store.conn, "w/1999") is None  # emptied: it scans until it is filled again
    assert _workdirs(store, "w/19") == _scan(store, "w/19")
    _catch_up(store)
    assert search.contains_clause(store.conn, "w/1998") is not None
    assert _workdirs(store, "w/1998") == ["r3/w/1998"]


def test_a_sqlite_without_fts5_keeps_the_site_working(jobs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = jobs
    _catch_up(store)
    monkeypatch.setitem(search._capable, sqlite3.sqlite_version, False)  # as another Python's SQLite would be
    assert search.needs_reconcile(store.conn)
    with store.write() as conn:
        assert search.reconcile(conn) == "dropped"
    job = Job.objects.get(workdir="r1/w/1")
    job.workdir = "renamed/while/unindexed"  # no trigger writes to an index this SQLite cannot open
    job.save()
    assert _workdirs(store, "renamed/while") == ["renamed/while/unindexed"]
    monkeypatch.setitem(search._capable, sqlite3.sqlite_version, True)  # back with FTS5: emptied and filled again
    with store.write() as conn:
        assert search.reconcile(conn) == "reset"
    _catch_up(store)
    assert _workdirs(store, "while/unin") == ["renamed/while/unindexed"] and _workdirs(store, "r1/w/1") == _scan(store, "r1/w/1")


def test_the_agent_server_fills_the_index_and_the_sort_by_last_update_walks_an_index(site: Any, hello: Any) -> None:
    from balsam.http.client import HttpBackend
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    Job.objects.bulk_create([hello.submit(workdir=f"srv/w{i}", say_hello_to="x", save=False) for i in range(12_000)])
    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=site.host)
    try:
        remote = HttpBackend.for_site(site.path)
        assert remote.count("job", {"workdir__contains": "w1199"}) == 11  # the first request starts the indexer
        deadline = time.monotonic() + 60
        while search.pending(site.store.conn):
            assert time.monotonic() < deadline, "the server did not index the new jobs"
            time.sleep(0.1)
        assert search.contains_clause(site.store.conn, "w1199") is not None
        assert sorted(r[0] for r in remote.select("job", {"workdir__contains": "w1199"}, columns=("workdir",))) == \
            sorted(["srv/w1199"] + [f"srv/w1199{i}" for i in range(10)])
    finally:
        server.stop()
    plan = " ".join(str(r[3]) for r in site.store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM job ORDER BY last_update DESC, id DESC LIMIT 50"))
    assert "job_last_update" in plan and "TEMP B-TREE" not in plan  # no sort of every job


@pytest.mark.parametrize("how", ["--python", "--cli"])
def test_a_recovered_site_indexes_its_jobs_again(jobs: Any, how: str) -> None:
    import shutil

    from balsam._api import sites
    from balsam.db import open_store
    from tests.cli_helpers import ok

    if how == "--cli" and shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 shell")
    _catch_up(jobs)
    root = jobs.db_path.parent.parent
    jobs.close()
    out = ok("db", "recover", *([how] if how == "--python" else []), "--site", str(root)).stdout
    assert "Rebuilt" in out and "job_workdir_fts" not in out  # the index is not a table of the user's rows
    sites.reset()
    store = open_store(root, jobs.host)
    assert search._state(store.conn)[2] == 0 and search.pending(store.conn)  # it starts over from the recovered jobs
    _catch_up(store)
    for needle in NEEDLES:
        assert _workdirs(store, needle) == _scan(store, needle), needle
    assert len(_workdirs(store, "w/")) == 2000
