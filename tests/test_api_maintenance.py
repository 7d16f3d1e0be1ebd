"""Site DB maintenance through the API (balsam._api.maintenance), on the home host and from another host through the
agent: a check finds what the store keeps twice out of step and fixes it; a backup is a readable copy of the DB;
vacuum reports the DB it compacted; migrate and recover replace the DB, so away from home they are refused naming the
home host; a damaged DB is still checked (given as a directory) and rebuilt from what can be read."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from balsam.exceptions import ForeignHostError, ValidationError

HOME_AND_FOREIGN = pytest.mark.parametrize("backend", ["local", "http"], indirect=True)


def _ref() -> Any:
    from balsam._api import sites

    return sites.resolve("test-site")


@HOME_AND_FOREIGN
def test_check_finds_and_fixes_a_stale_tag_index(site: Any, hello: Any) -> None:
    from balsam._api import maintenance
    from balsam.api import Job

    job = hello.submit("a", say_hello_to="x", tags={"k": "v"})
    healthy = maintenance.check(_ref())
    assert (healthy.site, healthy.problems, healthy.remaining, healthy.damaged) == ("test-site", [], [], False)
    assert healthy.db == str(site.path / ".balsam" / "site.db")
    with site.store.write() as conn:
        conn.execute("DELETE FROM job_tag WHERE job_id=?", (job.id,))
    assert Job.objects.filter(tags={"k": "v"}).count() == 0  # the symptom a user sees
    found = maintenance.check(_ref())
    assert [(p.name, p.count) for p in found.remaining] == [("missing tag index rows", 1)] and found.fixed == []
    fixed = maintenance.check(_ref(), fix=True)
    assert [p.name for p in fixed.fixed] == ["missing tag index rows"] and fixed.remaining == []
    assert [j.id for j in Job.objects.filter(tags={"k": "v"})] == [job.id]
    assert fixed.as_dict()["fixed"][0]["count"] == 1


@HOME_AND_FOREIGN
def test_a_backup_is_never_readable_by_other_users_nor_written_through_a_planted_link(site: Any, hello: Any, tmp_path: Path) -> None:
    """A backup into a shared folder (a group's project space, /tmp) was written with the umask's mode (0644), every
    user able to open it while the jobs' parameters were copied in, and made 0600 only once complete; and the copy
    followed a link planted at its temporary name."""
    import os

    from balsam.db import maintenance as db_maintenance

    hello.submit("a", say_hello_to="secret")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    modes = []

    def seen(done: int, total: int) -> None:
        modes.extend(os.stat(p).st_mode & 0o777 for p in shared.iterdir())

    dest = shared / "site.db"
    assert db_maintenance.backup(site.store, dest, progress=seen) > 0
    assert modes and set(modes) == {0o600} and dest.stat().st_mode & 0o777 == 0o600
    victim = tmp_path / "victim"
    victim.write_text("mine")
    tmp = shared / f".again.db.{os.getpid()}.tmp"
    real_unlink = Path.unlink

    def unlink_then_plant(self: Path, missing_ok: bool = False) -> None:  # another user wins the race after the unlink
        real_unlink(self, missing_ok=missing_ok)
        if self == tmp:
            os.symlink(victim, tmp)

    import unittest.mock

    with unittest.mock.patch.object(Path, "unlink", unlink_then_plant), pytest.raises(FileExistsError):
        db_maintenance.backup(site.store, shared / "again.db")
    assert victim.read_text() == "mine" and not (shared / "again.db").exists()


def test_backup_is_a_readable_copy_and_vacuum_names_the_db(site: Any, hello: Any, tmp_path: Path) -> None:
    from balsam._api import maintenance

    job = hello.submit("a", say_hello_to="x")
    copies = tmp_path / "copies"
    copies.mkdir()
    path, size = maintenance.backup(_ref(), copies)
    assert path.parent == copies and path.name.startswith("test-site-") and size == path.stat().st_size > 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id FROM job").fetchall() == [(job.id,)]
    with pytest.raises(ValidationError, match="exists; pass force"):
        maintenance.backup(_ref(), path)
    assert maintenance.backup(_ref(), path, force=True)[0] == path
    db, before, after = maintenance.vacuum(_ref())
    assert db == str(site.path / ".balsam" / "site.db") and before > 0 and after > 0


@HOME_AND_FOREIGN
def test_migrate_and_recover_only_on_the_home_host(site: Any, backend: str) -> None:
    from balsam._api import maintenance
    from balsam.db.schema import CURRENT_VERSION

    if backend == "http":
        for call in (maintenance.schema_status, maintenance.migrate, maintenance.recover):
            with pytest.raises(ForeignHostError, match=f"only on its home host {site.host!r}"):
                call(site.path)
        return
    status = maintenance.schema_status(site.path)
    assert (status.version, status.current, status.pending) == (CURRENT_VERSION, CURRENT_VERSION, [])
    assert maintenance.migrate(str(site.path)).pending == []


@pytest.mark.parametrize("backend", ["local"], indirect=True)  # a damaged DB is rebuilt on its home host (refusal above)
def test_a_damaged_db_is_checked_then_rebuilt(site: Any, hello: Any) -> None:
    import random

    from balsam._api import maintenance, sites
    from balsam.api import App, Job

    for i in range(300):
        hello.submit(f"w{i}", say_hello_to="y" * 200)
    site.store.close()
    sites.reset()
    db = site.path / ".balsam" / "site.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    lo, hi = int(len(data) * 0.6) // 4096 * 4096, int(len(data) * 0.7) // 4096 * 4096
    data[lo:hi] = random.Random(19).randbytes(hi - lo)  # a stretch of job pages overwritten (past the pages the schema and
    # the migrations took when the site was made): the schema and site row stay
    db.write_bytes(bytes(data))
    report = maintenance.check(site.path)
    assert report.damaged and report.remaining and report.recoverable and "1 app" in report.recoverable and "1 site" in report.recoverable
    rebuilt = maintenance.recover(site.path, python_only=True)
    assert rebuilt.method and rebuilt.kept_path.exists() and rebuilt.new_path.name.startswith("site.db")
    assert maintenance.check(site.path).problems == []
    sites.reset()
    assert Job.objects.count() < 300 and [a.name for a in App.objects.all()] == ["Hello"]  # what was readable came back
