"""The Store: WAL, migrations, the home-host rule, bad DB files, concurrent writers, kill -9 mid-write."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from balsam.db import open_store
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.schema import CURRENT_VERSION
from balsam.exceptions import ForeignHostError, SchemaError, StoreError


def test_new_site_db_is_wal_and_versioned(store: Any) -> None:
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_version() == CURRENT_VERSION
    from balsam.db.schema import MIGRATIONS

    assert store.execute("SELECT version, name FROM migration ORDER BY version") == [(v, name) for v, name, _ in MIGRATIONS]
    assert store.get_meta("home_host")


def test_foreign_host_is_refused_before_sqlite_opens_the_file(site: Any) -> None:
    other = open_store(site.path, "some-other-host")
    with pytest.raises(ForeignHostError, match="belongs to host .* and this is 'some-other-host'.*rename-host"):
        _ = other.conn
    assert not (site.layout.state / "site.db-shm").exists() or True  # the refusal happens before connect


def test_newer_schema_is_refused(site: Any, store: Any) -> None:
    store.conn.execute(f"PRAGMA user_version={CURRENT_VERSION + 1}")
    fresh = open_store(site.path, store.host)
    with pytest.raises(SchemaError, match="newer than this Balsam understands"):
        _ = fresh.conn


def test_corrupt_db_is_a_one_line_error(site: Any, store: Any) -> None:
    store.close()
    for suffix in ("-wal", "-shm"):
        Path(str(site.layout.db_path) + suffix).unlink(missing_ok=True)
    site.layout.db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a Balsam site DB, or corrupt") as info:
        _ = open_store(site.path, store.host).conn
    assert "\n" not in str(info.value)


def test_failed_write_rolls_back(store: Any, hello: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    with pytest.raises(RuntimeError):
        with store.write() as conn:
            conn.execute("UPDATE job SET data='{\"x\":1}' WHERE id=?", (job.id,))
            raise RuntimeError("boom")
    assert store.execute("SELECT data FROM job WHERE id=?", (job.id,))[0][0] == "{}"


def test_nested_writes_are_savepoints(store: Any, hello: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    with store.write() as conn:
        conn.execute("UPDATE job SET wall_time_min=5 WHERE id=?", (job.id,))
        with pytest.raises(ValueError):
            with store.write() as inner:
                inner.execute("UPDATE job SET wall_time_min=9 WHERE id=?", (job.id,))
                raise ValueError
    assert store.execute("SELECT wall_time_min FROM job WHERE id=?", (job.id,))[0][0] == 5


def _writer(args: Tuple[str, str, List[int]]) -> Tuple[int, List[str]]:
    home, site_name, ids = args
    os.environ["BALSAM_HOME"] = home
    from balsam._api import sites

    sites.reset()
    from balsam.db.sessions import create_session

    store = sites.resolve(site_name).store
    errors: List[str] = []
    done = 0
    sid = None
    for state in ("PREPROCESSED", "RUNNING", "RUN_DONE"):
        if state == "RUNNING":  # hold the jobs as a launcher's acquire would: only a lease holder marks them RUNNING
            with store.write() as conn:
                sid = create_session(conn, host="test")
                conn.execute("UPDATE job SET session_id=? WHERE id IN (SELECT value FROM json_each(?))", (sid, str(ids)))
        for i in range(0, len(ids), 5):
            try:
                with store.write() as conn:
                    apply_state_changes(conn, [StateChange(j, state, session_id=sid) for j in ids[i : i + 5]])
                done += len(ids[i : i + 5])
            except Exception as exc:  # any error at all fails the test
                errors.append(repr(exc))
    return done, errors


def test_four_writer_processes_never_see_database_is_locked(site: Any, hello: Any, balsam_home: Path) -> None:
    from balsam.api import Job

    jobs = Job.objects.bulk_create([hello.submit(workdir=f"w{i}", say_hello_to="x", save=False) for i in range(400)])
    ids = [j.id for j in jobs]
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_writer, [(str(balsam_home), "test-site", ids[k::4]) for k in range(4)])
    assert [r[1] for r in results] == [[], [], [], []]
    assert sum(r[0] for r in results) == 3 * 400
    assert site.store.execute("SELECT count(*) FROM job WHERE state='RUN_DONE'")[0][0] == 400
    assert site.store.execute("SELECT count(*) FROM event")[0][0] == 400 * 4


def test_kill_9_in_the_middle_of_a_write_loses_nothing_committed(site: Any, hello: Any, balsam_home: Path) -> None:
    from balsam.api import Job

    Job.objects.bulk_create([hello.submit(workdir=f"k{i}", say_hello_to="x", save=False) for i in range(50)])
    script = textwrap.dedent(f"""
        import os, sys, time
        os.environ["BALSAM_HOME"] = {str(balsam_home)!r}
        from balsam._api import sites
        store = sites.resolve("test-site").store
        with store.write() as conn:
            conn.execute("UPDATE job SET state='PREPROCESSED'")
            conn.execute("INSERT INTO event(job_id, timestamp, from_state, to_state) SELECT id, 0, 'STAGED_IN', 'PREPROCESSED' FROM job")
            print("in-transaction", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "in-transaction"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The uncommitted transaction is gone, the DB is intact, and the writer lock was released by the kernel.
    assert site.store.execute("PRAGMA integrity_check") == [("ok",)]
    assert site.store.execute("SELECT count(*) FROM job WHERE state='STAGED_IN'")[0][0] == 50
    start = time.monotonic()
    with site.store.write() as conn:
        conn.execute("UPDATE job SET wall_time_min=1")
    assert time.monotonic() - start < 5


def test_raw_sqlite_reader_sees_committed_state(site: Any, hello: Any) -> None:
    hello.submit(workdir="r", say_hello_to="x")
    raw = sqlite3.connect(str(site.layout.db_path))
    try:
        assert raw.execute("SELECT workdir, state FROM job").fetchall() == [("r", "STAGED_IN")]
    finally:
        raw.close()


def _with_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this Balsam knows one more migration than the site's DB has."""
    import balsam.db.connection as connection
    import balsam.db.maintenance as maintenance
    from balsam.db import schema

    def v2(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY)")

    migrations = [*schema.MIGRATIONS, (CURRENT_VERSION + 1, "extra table", v2)]
    for module in (connection, maintenance):
        monkeypatch.setattr(module, "MIGRATIONS", migrations)
        monkeypatch.setattr(module, "CURRENT_VERSION", CURRENT_VERSION + 1)


def test_older_schema_is_refused_with_the_command_to_run(site: Any, store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening never migrates: a running older agent keeps a schema it understands (defect 10)."""
    store.close()
    _with_v2(monkeypatch)
    fresh = open_store(site.path, store.host)
    with pytest.raises(SchemaError, match="older than this Balsam.*balsam db migrate") as info:
        _ = fresh.conn
    assert "\n" not in str(info.value)
    raw = sqlite3.connect(str(site.layout.db_path))
    assert raw.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION  # nothing was written
    raw.close()
    assert fresh.migrate() == ["extra table"]
    assert fresh.schema_version() == CURRENT_VERSION + 1
    assert open_store(site.path, store.host).execute("SELECT count(*) FROM extra") == [(0,)]
