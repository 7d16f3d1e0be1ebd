"""``balsam db``: check (and --fix), backup, vacuum, migrate."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Dict

import pytest

from balsam.api import Job
from tests.cli_helpers import fails, invoke, ok

HOME_AND_FOREIGN = pytest.mark.parametrize("backend", ["local", "http"], indirect=True)
"""On the site's home host, and from another host (check, backup and vacuum then run in the site's agent)."""


@HOME_AND_FOREIGN
def test_check_a_healthy_db(site: Any, hello: Any) -> None:
    hello.submit("a", say_hello_to="x", tags={"k": "v"})
    assert ": ok (integrity and consistency)" in ok("db", "check").stdout
    assert json.loads(ok("db", "check", "--json").stdout)["problems"] == []


@HOME_AND_FOREIGN
def test_check_finds_and_fixes_inconsistencies(site: Any, hello: Any) -> None:
    parent = hello.submit("p", say_hello_to="x", tags={"k": "v"})
    child = hello.submit("c", say_hello_to="x", tags={"k": "v"}, parent_ids=[parent.id])
    with site.store.write() as conn:  # damage what the store keeps twice
        conn.execute("DELETE FROM job_tag WHERE job_id=?", (parent.id,))
        conn.execute("INSERT INTO job_tag(key, value, job_id) VALUES ('ghost', '1', ?)", (child.id,))
        conn.execute("DELETE FROM job_parent")
        conn.execute("UPDATE job SET session_id=42 WHERE id=?", (parent.id,))
        conn.execute("INSERT INTO event(job_id, timestamp, from_state, to_state) VALUES (999, 0, 'A', 'B')")
    assert [j.id for j in Job.objects.filter(tags={"k": "v"})] == [child.id]  # the symptom
    result = fails("db", "check", code=1)
    assert "5 kinds of problems remain" in result
    out = ok("db", "check", "--fix").stdout
    for name in ("missing tag index rows", "stale tag index rows", "missing parent links", "dangling session locks", "orphan events"):
        assert f"fixed: {name} (1)" in out
    assert [j.id for j in Job.objects.filter(tags={"k": "v"})] == [parent.id, child.id]
    assert ": ok" in ok("db", "check").stdout
    parent.state = "FAILED"
    parent.save()
    child.refresh_from_db()
    assert child.state == "FAILED"  # the repaired parent link carries the cascade again


@HOME_AND_FOREIGN
def test_check_reports_what_it_cannot_fix(site: Any, hello: Any) -> None:
    hello.submit("a", say_hello_to="x")
    with site.store.write() as conn:
        conn.execute("UPDATE job SET app_id=77")
    err = fails("db", "check", "--fix")
    assert "1 kinds of problems remain" in err


@HOME_AND_FOREIGN
def test_backup_while_writing(site: Any, hello: Any, tmp_path: Path) -> None:
    hello.submit("first", say_hello_to="x")
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            hello.submit(f"w/{i}", say_hello_to="x")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        out = ok("db", "backup", tmp_path / "copy.db").stdout
    finally:
        stop.set()
        thread.join()
    assert "Backed up site test-site to" in out
    conn = sqlite3.connect(str(tmp_path / "copy.db"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT name FROM site").fetchone()[0] == "test-site"
        assert conn.execute("SELECT count(*) FROM job").fetchone()[0] >= 1
    finally:
        conn.close()
    assert "exists; pass --force" in fails("db", "backup", tmp_path / "copy.db")
    ok("db", "backup", tmp_path / "copy.db", "--force")
    ok("db", "backup", tmp_path)
    assert len(list(tmp_path.glob("test-site-*.db"))) == 1
    assert "no such directory" in fails("db", "backup", tmp_path / "nope" / "x.db", code=2)


@HOME_AND_FOREIGN
def test_vacuum(site: Any, hello: Any) -> None:
    for i in range(50):
        hello.submit(f"j/{i}", say_hello_to="x" * 500)
    Job.objects.all().delete()
    out = ok("db", "vacuum").stdout
    assert out.startswith("Compacted ") and " MB -> " in out


def test_migrate(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam.db.schema import CURRENT_VERSION as now

    assert f"schema version {now} is current" in ok("db", "migrate").stdout
    import balsam.db.connection as connection
    import balsam.db.maintenance as maintenance
    from balsam.db import schema

    def extra(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY)")

    migrations = [*schema.MIGRATIONS, (now + 1, "extra table", extra)]
    for module in (connection, maintenance):
        monkeypatch.setattr(module, "MIGRATIONS", migrations)
        monkeypatch.setattr(module, "CURRENT_VERSION", now + 1)
    out = ok("db", "migrate", "--dry-run").stdout
    assert f"schema version {now} -> {now + 1}: extra table" in out
    out = ok("db", "migrate", "--site", "test-site").stdout
    assert f"Applied 1 migrations; schema version is now {now + 1}" in out
    assert f"schema version {now + 1} is current" in ok("db", "migrate").stdout
    monkeypatch.setattr(maintenance, "CURRENT_VERSION", now)
    assert "newer than this Balsam" in fails("db", "migrate")


def test_db_needs_a_site(tmp_path: Path) -> None:
    assert "no Balsam site found" in fails("db", "check")
    assert "0 sites are on this host" in fails("db", "migrate", code=2)


# ------------------------------------------------------------------------------- damaged and read-only sites (issue 19)
def _second_site_with_jobs(tmp_path: Path, n: int = 400) -> Any:
    from balsam._api import sites
    from balsam.api import ApplicationDefinition
    from balsam.site import init_site

    init_site(tmp_path / "other", name="other")

    class OtherApp(ApplicationDefinition):
        site = "other"
        command_template = "echo {{ x }}"

    OtherApp.sync()
    ref = sites.resolve("other")
    with sqlite3.connect(ref.store.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _MADE[ref.store.db_path] = ref.store.db_path.stat().st_size  # the schema, the site and its app: pages that stay
    for i in range(n):
        OtherApp.submit(workdir=f"w{i}", x="y" * 200)
    ref.store.close()
    return ref


_MADE: Dict[Path, int] = {}


def _damage(db: Path, start: float = 0.45, end: float = 0.55) -> None:
    """Overwrite a stretch of pages in the middle of the file, among the jobs' (the pages the site had when it was
    made, its schema's among them wherever SQLite put them, stay)."""
    import random

    data = bytearray(db.read_bytes())
    lo, hi = int(len(data) * start) // 4096 * 4096, int(len(data) * end) // 4096 * 4096
    floor = _MADE.get(db, 0) + 2 * 4096  # and the first pages the jobs took
    lo, hi = max(lo, floor), max(hi, floor + (hi - lo))
    data[lo:hi] = random.Random(19).randbytes(hi - lo)
    db.write_bytes(bytes(data))


def test_a_site_of_an_older_schema_is_skipped_with_the_migrate_command_not_a_repair(site: Any, hello: Any, tmp_path: Path,
                                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A site left at an older schema (Balsam upgraded, its agent not restarted yet) is not damaged: reads across
    sites skip it saying to migrate it. They said to rebuild it with 'balsam db recover'."""
    from balsam._api import sites
    from balsam.db.connection import CURRENT_VERSION

    hello.submit("mine", say_hello_to="x")
    other = _second_site_with_jobs(tmp_path, n=3)
    with sqlite3.connect(other.store.db_path) as conn:
        conn.execute(f"PRAGMA user_version={CURRENT_VERSION - 1}")
    sites.reset()
    assert [str(j.workdir) for j in Job.objects.all()] == ["mine"]  # every site of this host
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: skipped site 'other' ({other.path}): schema version {CURRENT_VERSION - 1} is older than this "
                   f"Balsam's ({CURRENT_VERSION}): stop the site's agent and run 'balsam db migrate --site {other.path}' (or "
                   "start the agent, which migrates at start)"]


def test_a_corrupt_site_is_skipped_by_reads_across_sites_then_recovered(site: Any, hello: Any, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from balsam._api import sites

    hello.submit("mine", say_hello_to="x")
    other = _second_site_with_jobs(tmp_path)
    with sqlite3.connect(other.store.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage(other.store.db_path)
    sites.reset()
    assert [str(j.workdir) for j in Job.objects.filter(site_name=["test-site", "other"])] == ["mine"]  # the healthy site answers
    err = capsys.readouterr().err
    assert err.count("warning: skipped site 'other'") == 1 and "balsam db recover --site" in err
    listing = ok("job", "ls", "--site", "all")
    # click 8.1 (the newest for Python 3.9) does not capture a plain print to stderr in CliRunner's result
    assert "mine" in listing.stdout and ("skipped site 'other'" in listing.stderr or sys.version_info < (3, 10))
    check = invoke("db", "check", "--site", str(other.path))
    assert check.exit_code == 1 and "problems remain" in check.stderr  # db check runs on a damaged DB...
    assert "recoverable:" in check.stdout and " job," in check.stdout and "balsam db recover" in check.stdout, check.stdout
    rec = ok("db", "recover", "--python", "--site", str(other.path)).stdout
    assert "Rebuilt" in rec and "kept as" in rec
    assert list((other.path / ".balsam").glob("site.db.corrupt-*"))  # the old file is kept
    assert ": ok" in ok("db", "check", "--site", str(other.path)).stdout
    sites.reset()
    recovered = Job.objects.filter(site_name="other").count()
    assert 0 < recovered < 400  # what was readable came back; the damaged stretch did not


def test_a_read_only_site_reads_and_refuses_writes_saying_so(site: Any, hello: Any) -> None:
    import subprocess

    job = hello.submit("ro", say_hello_to="x")
    site.store.close()
    with sqlite3.connect(site.store.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = str(site.path)
    if subprocess.run(["mount", "--bind", path, path], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (CI runs as root)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", path], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        from balsam._api import sites

        sites.reset()
        assert "ro" in ok("job", "ls", "--site", path).stdout
        assert str(Job.objects.get(id=job.id).workdir) == "ro"
        err = fails("job", "rm", str(job.id), "--yes", "--site", path, code=1)
        assert "is read-only" in err and "reads work" in err
        err = fails("site", "start", "--site", path, code=1)  # was "agent.json: Read-only file system"
        assert f"site {path} is read-only" in err and "the agent records the jobs' progress there and cannot run" in err
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)
        from balsam._api import sites

        sites.reset()


def test_site_ls_does_not_call_a_damaged_site_ok(site: Any, tmp_path: Path) -> None:
    other = _second_site_with_jobs(tmp_path, n=200)
    with sqlite3.connect(other.store.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage(other.store.db_path)
    listing = ok("site", "ls").stdout
    line = next(ln for ln in listing.splitlines() if " other " in ln)
    assert " ok " not in line and ("damaged" in line or "error" in line)
    assert "balsam db check" in json.dumps(json.loads(ok("site", "ls", "--json").stdout))


@pytest.mark.parametrize("backend", ["http"], indirect=True)
def test_what_replaces_the_db_is_refused_away_from_home_naming_the_home_host(site: Any, hello: Any) -> None:
    from balsam.api import Site
    from balsam.exceptions import ForeignHostError

    home = site.host
    for args in (("db", "recover", "--site", site.path), ("db", "migrate", "--site", site.path), ("site", "rm", site.path, "-f")):
        err = fails(*args, code=ForeignHostError.exit_code)
        assert f"only on its home host {home!r}" in err and "balsam site stop" in err, err
    with pytest.raises(ForeignHostError, match=f"only on its home host {home!r}"):
        Site.objects.get(name="test-site").delete()
    assert (site.path / ".balsam" / "site.db").exists() and Job.objects.count() == 0


KILLED_AT = '''
import os, re, signal, sys
real, (when, at) = os.replace, sys.argv[1].split(":", 1)
def replace(src, dst, *args, **kwargs):  # kill -9 of this process just before or after the rename to a name AT matches
    if when == "before" and re.fullmatch(at, os.path.basename(str(dst))):
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst, *args, **kwargs)
    if re.fullmatch(at, os.path.basename(str(dst))):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.argv = ["balsam", *sys.argv[2:]]
from balsam.cli import main
main()
'''


@pytest.mark.parametrize("at", [r"after:site\.db\.corrupt-[0-9-]+", r"after:site\.db"])
def test_a_recover_killed_as_it_swaps_the_rebuilt_db_in_leaves_a_whole_consistent_site(site: Any, hello: Any, at: str) -> None:
    """``balsam db recover`` killed with kill -9 as the rebuilt DB takes the damaged one's place: right after the damaged
    file was moved aside (no site.db for a moment), or right after the rebuilt one took its name. The next command finds
    the site whole (every job, its tags found by tag filters, a child still linked to its parent: 'db check' is clean),
    not 'not a Balsam site DB' (an empty site.db made by opening the missing one) nor a DB without its derived rows."""
    import subprocess

    from tests.cli_helpers import ROOT

    parent = hello.submit("p", say_hello_to="x", tags={"kind": "parent"})
    hello.submit("c", say_hello_to="y", parent_ids=[parent.id], tags={"kind": "child"})
    site.store.close()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, at, "db", "recover", "--python", "--site", str(site.path)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert ": ok" in ok("db", "check", "--site", str(site.path)).stdout
    from balsam._api import sites

    sites.reset()
    assert {str(j.workdir) for j in Job.objects.filter(tags={"kind": "child"})} == {"c"}
    assert str(Job.objects.get(workdir="c").state) == "AWAITING_PARENTS" and Job.objects.count() == 2
    state = sorted(p.name for p in (site.path / ".balsam").iterdir() if p.name.startswith("site.db"))
    assert [n for n in state if not n.startswith("site.db.corrupt-")] in (["site.db"], ["site.db", "site.db-shm", "site.db-wal"])


def test_recover_removes_what_a_recover_killed_before_its_swap_left_and_keeps_every_damaged_file(site: Any, hello: Any) -> None:
    """A recover killed while it rebuilt leaves its unfinished copy (site.db.recovered-TIME, as big as the DB); the next
    recover removes it. The damaged files earlier recoveries kept are never removed nor overwritten."""
    hello.submit("a", say_hello_to="x")
    state = site.path / ".balsam"
    for name in ("site.db.recovered-20200101-000000", "site.db.recovered-20200101-000000-wal"):
        (state / name).write_bytes(b"half a rebuilt DB")
    (state / "site.db.corrupt-20200101-000001").write_bytes(b"an earlier recovery's damaged DB")
    site.store.close()
    ok("db", "recover", "--python", "--site", str(site.path))
    ok("db", "recover", "--python", "--site", str(site.path))  # twice in a second: the first one's kept file stays
    names = sorted(p.name for p in state.iterdir() if p.name.startswith("site.db."))
    assert not [n for n in names if ".recovered-" in n], names
    kept = [n for n in names if n.startswith("site.db.corrupt-") and not n.endswith(("-wal", "-shm"))]
    assert len(kept) == 3 and (state / "site.db.corrupt-20200101-000001").read_bytes() == b"an earlier recovery's damaged DB"
    assert ": ok" in ok("db", "check", "--site", str(site.path)).stdout


def test_a_backup_killed_before_its_copy_is_in_place_leaves_no_copy_and_the_next_one_clears_its_temporary_file(
        site: Any, hello: Any, tmp_path: Path) -> None:
    """``balsam db backup DIR`` killed with kill -9 as its copy is done but not yet renamed: no backup is there to be
    taken for a whole one, and the hidden temporary copy (as big as the DB) is removed by the next backup into that
    folder, not left there for good, one per killed backup."""
    import subprocess

    from tests.cli_helpers import ROOT

    hello.submit("a", say_hello_to="x")
    dest = tmp_path / "backups"
    dest.mkdir()
    (dest / ".notes.tmp").write_text("a user's file")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_AT, r"before:test-site-.*\.db", "db", "backup", str(dest), "--site",
                             str(site.path)], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    left = sorted(p.name for p in dest.iterdir())
    assert not [n for n in left if n.endswith(".db")] and [n for n in left if n.endswith(".tmp") and n != ".notes.tmp"], left
    ok("db", "backup", str(dest))
    names = sorted(p.name for p in dest.iterdir())
    assert len(names) == 2 and names[0] == ".notes.tmp" and names[1].startswith("test-site-"), names
