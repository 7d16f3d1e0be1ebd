"""Ids name one row among all of a user's sites (Balsam 0.7: an id names one job, one app, one BatchJob).

Written from the documented behaviour: ``Job.objects.filter(id=[...]).delete()`` deletes those jobs only,
``Job.objects.get(id=...)`` finds the one job, ``EventLog.objects.filter(job_id=[...])`` returns its events,
``Job(app_id=<id>, ...)`` needs no site name; existing sites keep their jobs through ``balsam db migrate``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from balsam._api import jobs as jobs_api
from balsam._api import sites as _sites
from balsam.api import ApplicationDefinition, BatchJob, EventLog, Job, TransferItem
from balsam.db import ids
from balsam.site import Registry, init_site
from tests.cli_helpers import ok
from tests.helpers import advance


def _two_sites(tmp_path: Path) -> Tuple[Any, Any]:
    init_site(tmp_path / "one", name="one")
    init_site(tmp_path / "two", name="two")
    apps = []
    for name in ("one", "two"):
        ns: dict = {"ApplicationDefinition": ApplicationDefinition}
        exec(f"class Echo(ApplicationDefinition):\n    site = {name!r}\n    command_template = 'echo {{{{ x }}}}'\n", ns)
        ns["Echo"].sync()
        apps.append(ns["Echo"])
    return apps[0], apps[1]


def test_ids_differ_between_sites_and_carry_the_site(tmp_path: Path) -> None:
    one, two = _two_sites(tmp_path)
    a = one.submit(workdir="w", x=1)
    b = two.submit(workdir="w", x=1)
    assert a.id != b.id
    assert one.__app_id__ != two.__app_id__
    assert ids.site_of(a.id) == a.site_id and ids.site_of(b.id) == b.site_id != a.site_id
    assert ids.site_of(one.__app_id__) == a.site_id
    assert a.id < 2**53 and b.id < 2**53  # exact in JSON readers that use doubles


def test_a_query_by_id_never_touches_another_sites_row(tmp_path: Path) -> None:
    one, two = _two_sites(tmp_path)
    a = one.submit(workdir="w", x=1)
    b = two.submit(workdir="w", x=2)
    # From outside any site every site on the host is in scope, as in Balsam's multi-site API.
    assert {j.site_id for j in Job.objects.all()} == {a.site_id, b.site_id}
    assert Job.objects.get(id=a.id).parameters == {"x": 1}
    assert Job.objects.get(id=b.id).parameters == {"x": 2}
    assert [e.job_id for e in EventLog.objects.filter(job_id=[a.id])] == [a.id]
    assert Job.objects.filter(id=[a.id]).delete() == 1
    assert Job.objects.filter(id=[b.id]).count() == 1
    assert [j.parameters for j in Job.objects.all()] == [{"x": 2}]


def test_an_id_from_inside_another_site_still_finds_its_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = _two_sites(tmp_path)
    a = one.submit(workdir="w", x=1)
    monkeypatch.chdir(tmp_path / "two")
    _sites.reset()
    assert Job.objects.get(id=a.id).site_id == a.site_id
    assert Job.objects.filter(id=[a.id]).update(tags={"seen": "yes"}) == 1
    assert Job.objects.count() == 0  # without ids, the enclosing site is the scope


def test_job_with_an_app_id_finds_its_site(tmp_path: Path) -> None:
    one, two = _two_sites(tmp_path)
    job = Job(workdir="by-id", app_id=two.__app_id__, parameters={"x": 3})
    job.save()
    assert job.site_id == ids.site_of(two.__app_id__)
    assert ApplicationDefinition.load_by_id(two.__app_id__).__name__ == "Echo"


def test_batch_jobs_and_transfer_items_carry_the_site_prefix(site: Any, hello: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="mpi", queue="local", project="local")
    assert ids.site_of(bj.id) == site.id
    assert BatchJob.objects.get(id=bj.id).id == bj.id
    job = hello.submit(workdir="h", say_hello_to="x")
    assert all(ids.site_of(e.id) == site.id for e in EventLog.objects.filter(job_id=job.id))


def test_site_ids_are_random_and_distinct(tmp_path: Path) -> None:
    made = [init_site(tmp_path / f"s{i}", name=f"s{i}").id for i in range(5)]
    assert len(set(made)) == 5
    assert all(1 <= i <= ids.MAX_SITE_ID for i in made)
    assert sorted(made) != list(range(1, 6))  # not a per-machine counter that collides across machines


def test_relay_recheck_moves_a_colliding_site_and_keeps_its_jobs(site: Any, hello: Any) -> None:
    parent = hello.submit(workdir="p", say_hello_to="a")
    child = hello.submit(workdir="c", say_hello_to="b", parent_ids=[parent.id])
    with site.store.write() as conn:
        assert ids.ensure_unique_site_id(conn, taken={site.id + 1}) is None
        new = ids.ensure_unique_site_id(conn, taken={site.id})
    assert new is not None and new != site.id
    Registry().update("test-site", site_id=new)
    _sites.reset()
    jobs = {j.workdir: j for j in Job.objects.all()}
    assert {ids.site_of(j.id) for j in jobs.values()} == {new}
    assert jobs["c"].parent_ids == [jobs["p"].id]
    assert ids.local_part(jobs["p"].id) == ids.local_part(parent.id)
    assert ids.local_part(jobs["c"].id) == ids.local_part(child.id)
    more = hello.submit(workdir="after", say_hello_to="c")
    assert ids.site_of(more.id) == new


# ------------------------------------------------------------------------------------------- migration
def _legacy_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A site as the version before site-unique ids made it: schema v1, site id 1, ids from 1."""
    from balsam.db import connection, schema

    with monkeypatch.context() as m:
        m.setattr(connection, "MIGRATIONS", schema.MIGRATIONS[:1])
        m.setattr(connection, "CURRENT_VERSION", 1)
        m.setattr(ids, "seed_sequences", lambda conn, site_id: None)
        m.setattr(ids, "draw_site_id", lambda taken=(), rng=None: 1)
        m.setattr(jobs_api, "in_site", lambda any_id, site_id: any_id)
        init_site(tmp_path / "old", name="old")
        _sites.reset()
        raw = sqlite3.connect(str(tmp_path / "old" / ".balsam" / "site.db"))
        raw.execute("ALTER TABLE job ADD COLUMN parameters_pickled BLOB")  # what today's job writer needs; v5 keeps it
        raw.commit()
        raw.close()

        class Old(ApplicationDefinition):
            site = "old"
            command_template = "cat input.dat"
            transfers = {"input": {"required": False, "direction": "in", "local_path": "input.dat"}}

        Old.sync()
        ref = _sites.resolve("old")
        with ref.store.write() as conn:
            conn.execute("""UPDATE site SET transfer_locations='{"here":"local:/"}'""")
        first = Old.submit(workdir="a", tags={"k": "v"})
        second = Old.submit(workdir="b", parent_ids=[first.id], transfers={"input": "here:/data/in.dat"})
        advance(first, "PREPROCESSED", "RUNNING", "RUN_DONE")
        BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="mpi", queue="local", project="local")
        assert (first.id, second.id) == (1, 2)
        ref.store.close()
        _sites.reset()
    return tmp_path / "old"


def _rows(db: Path, sql: str) -> List[Tuple[Any, ...]]:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_db_migrate_gives_an_old_site_prefixed_ids_and_keeps_its_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _legacy_site(tmp_path, monkeypatch)
    db = root / ".balsam" / "site.db"
    assert _rows(db, "PRAGMA user_version") == [(1,)]
    events_before = _rows(db, "SELECT job_id, from_state, to_state FROM event ORDER BY id")
    assert "schema version is now" in ok("db", "migrate", "--site", str(root)).stdout
    _sites.reset()
    site_id = Registry().lookup("old").id
    assert site_id != 1 and _rows(db, "SELECT id FROM site") == [(site_id,)]
    jobs = {j.workdir: j for j in Job.objects.filter(site_name="old")}
    a, b = jobs["a"], jobs["b"]
    assert (a.id, b.id) == (ids.base(site_id) | 1, ids.base(site_id) | 2)
    assert b.parent_ids == [a.id] and [j.id for j in b.parent_query()] == [a.id]
    assert a.state == "RUN_DONE" and b.state == "AWAITING_PARENTS"
    assert Job.objects.filter(tags={"k": "v"}).count() == 1
    events_after = _rows(db, "SELECT job_id, from_state, to_state FROM event ORDER BY id")
    assert [(ids.local_part(j), f, t) for j, f, t in events_after] == events_before
    assert [e.to_state for e in a.history()] == ["STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE"]
    (item,) = TransferItem.objects.filter(job_id=b.id)
    assert ids.site_of(item.id) == site_id
    (bj,) = BatchJob.objects.filter(site_name="old")
    assert bj.id == ids.base(site_id) | 1
    assert a.app_id == ids.base(site_id) | 1
    # New rows continue each counter inside the site's range.
    c = Job(workdir="c", app_id=a.app_id)
    c.save()
    assert c.id == ids.base(site_id) | 3
    assert ids.site_of(EventLog.objects.filter(job_id=c.id)[0].id) == site_id
    # A batch script rendered before the migration names the old BatchJob id; its launcher still finds it.
    from balsam.db import sessions

    with _sites.resolve("old").store.write() as conn:
        sid = sessions.create_session(conn, host="h", batch_job_id=1)
        assert conn.execute("SELECT batch_job_id FROM session WHERE id=?", (sid,)).fetchone()[0] == bj.id
