"""Writes the relay queues for an offline site, end to end: a laptop (this process, no site) creates jobs and a
BatchJob for the login node's site while its agent is down; each is a provisional handle (no id yet,
``queued_command`` set); once the site syncs, ``refresh_from_db()`` and ``Job.objects.resolve`` give the real
rows, and a create the site refuses raises the site's error on the laptop."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

from balsam import exceptions as exc
from tests.test_relay_sync import Relay, login_node, relay, run  # noqa: F401  (relay: the fixture)

SYNC_ONCE = """
import sys
from pathlib import Path
from balsam._api import sites
from balsam.services.sync import SyncService
from balsam.sync import site_link

root = Path(sys.argv[1])
sync = SyncService(sites.ref_for_root(root), site_link(root))
sync.push(force=True)
print("applied", sync.pull_once())
"""


def sync_once(env: Dict[str, str], root: Path) -> int:
    """One push and one pull of the site's sync service (the login node's process); how many commands it applied."""
    out = run(env, "-c", SYNC_ONCE, str(root)).stdout
    return int(out.split("applied")[-1].split()[0])


@pytest.mark.slow
def test_creates_queued_for_an_offline_site_resolve_once_it_syncs(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    env, root = login_node(tmp_path, relay)
    assert sync_once(env, root) == 0  # the relay now knows the site's app
    relay.stop()
    relay.wait_s = 0.5  # a write waits half a second for its site, then is queued
    relay.start()
    from balsam import _api
    from balsam.api import BatchJob, Job
    from balsam.sync import login as relay_login

    relay_login(relay.url, "alice", "alice-password")  # the laptop: no site here at all
    _api.sites.reset()
    job = Job("queued/1", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "queued"})
    job.save()
    assert job.id is None and job.queued_command is not None
    with pytest.raises(exc.CommandPending, match=f"still queued at the relay as command {job.queued_command}"):
        job.refresh_from_db()
    with pytest.raises(exc.ValidationError, match="already queued"):
        job.save()  # never queued twice
    twin = Job("queued/1", app_id="Hello", site_name="polaris", parameters={"say_hello_to": "twin"})
    twin.save()  # the laptop cannot know the workdir is taken: the site refuses it
    many = Job.objects.bulk_create([Job(f"queued/m{i}", app_id="Hello", site_name="polaris", parameters={"say_hello_to": str(i)})
                                    for i in range(3)])
    assert len({j.queued_command for j in many}) == 1 and all(j.id is None for j in many)
    assert Job.objects.resolve(many) == many  # all still waiting
    batch = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local", site_name="polaris")
    assert batch.queued_command is not None and batch.id is None

    assert sync_once(env, root) == 4  # the site comes back: applies each command once, pushes the rows, answers
    assert sync_once(env, root) == 0

    job.refresh_from_db()
    assert job.queued_command is None and job.id is not None and job.id >> 32 == many[0].app_id >> 32
    assert str(job.workdir) == "queued/1" and job.parameters == {"say_hello_to": "queued"}
    assert Job.objects.get(id=job.id).workdir == job.workdir  # the relay's copy, as the site pushed it
    assert Job.objects.resolve(many) == []
    assert sorted(str(j.workdir) for j in many) == ["queued/m0", "queued/m1", "queued/m2"] and all(j.id for j in many)
    batch.refresh_from_db()
    assert batch.id is not None and batch.queue == "local" and batch.num_nodes == 1
    with pytest.raises(exc.ValidationError):
        twin.refresh_from_db()  # the site's refusal, on the laptop
    assert twin.queued_command is None and twin.id is None
    import sqlite3

    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    assert conn.execute("SELECT count(*) FROM job WHERE workdir LIKE 'queued/%'").fetchone()[0] == 4  # applied once each
    assert conn.execute("SELECT count(*) FROM batch_job").fetchone()[0] == 1
    conn.close()
