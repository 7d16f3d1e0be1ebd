"""Small helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any, Dict, List

_stores: Dict[Any, Any] = {}


def home_store(ref: Any) -> Any:
    """The site's Store opened as its home host would (tests that play another host still check the DB directly)."""
    if ref.is_home:
        return ref.store
    from balsam.db import open_store

    return _stores.setdefault(ref.path, open_store(ref.path, ref.host))


def hold(job: Any) -> int:
    """Lock a saved job to a new lease, as a launcher's acquire would; returns the session id."""
    from balsam.api import Session

    session = Session.objects.create(site_id=job.site_id)
    with home_store(job.__dict__["_site"]).write() as conn:
        conn.execute("UPDATE job SET session_id=? WHERE id=?", (session.id, job.id))
    job.__dict__["_session_id"] = session.id
    return int(session.id)


def _still_held(job: Any) -> bool:
    sid = job.__dict__.get("_session_id")
    if sid is None:
        return False
    rows = home_store(job.__dict__["_site"]).execute("SELECT session_id FROM job WHERE id=?", (job.id,))
    return bool(rows) and rows[0][0] == sid


def advance(job: Any, *states: str) -> None:
    """Move a saved job through ``states``, each change through the state machine (RUNNING under a lease)."""
    for state in states:
        if state == "RUNNING" and not _still_held(job):
            hold(job)  # a job acquired through a Session already names its lease
        job.state = state
        job.save()


def sid(n: int, site: str = "test-site") -> int:
    """The full id of site-local number ``n`` (ids carry their site: balsam.db.ids)."""
    from balsam._api import sites
    from balsam.db import ids

    return ids.base(sites.resolve(site).id) | n


def finish_run(job: Any, state: str, **fields: Any) -> None:
    """End a RUNNING job as its launcher does: the change and its results (``fields``) under the job's lease."""
    from balsam.db.jobs import StateChange, apply_state_changes

    with home_store(job.__dict__["_site"]).write() as conn:
        apply_state_changes(conn, [StateChange(int(job.id), state, fields=fields, session_id=job.__dict__["_session_id"])])
    job.refresh_from_db()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem is full to the last byte (ENOSPC even for one byte: smaller and
    smaller writes after the first refusal, so what is left does not depend on chance); unlinking it frees the space."""
    size = 65536
    with open(path, "wb", buffering=0) as f:
        while size:
            try:
                f.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                size //= 2


def fill_inodes(folder: Path) -> List[Path]:
    """Create empty files in ``folder`` until its filesystem has no inode left (ENOSPC); returns them (unlinking one
    frees one inode)."""
    made: List[Path] = []
    while True:
        path = folder / f"inode-filler-{len(made)}"
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return made
        made.append(path)


ACTIVE_BATCH_JOB_STATES = ["pending_submission", "queued", "running", "pending_deletion"]


def end_allocations(site_name: str, timeout: float = 90.0) -> None:
    """Delete a site's active BatchJobs through its running agent, and wait until its scheduler has ended them: the
    local scheduler kills their launchers, which would otherwise outlive the test by their idle TTL. Call it before
    stopping the agent (a stopped agent deletes nothing)."""
    import time

    from balsam.api import BatchJob
    from balsam.exceptions import IllegalTransition

    for bj in BatchJob.objects.filter(site_name=site_name, state=ACTIVE_BATCH_JOB_STATES[:3]):
        bj.state = "pending_deletion"
        try:
            bj.save()
        except IllegalTransition:  # it ended on its own (an idle launcher) since it was listed: nothing to delete
            bj.refresh_from_db()
            assert bj.state == "finished", bj.state
    deadline = time.monotonic() + timeout
    while BatchJob.objects.filter(site_name=site_name, state=ACTIVE_BATCH_JOB_STATES).exists():
        assert time.monotonic() < deadline, f"the agent of {site_name} did not end its BatchJobs in {timeout} s"
        time.sleep(0.2)
