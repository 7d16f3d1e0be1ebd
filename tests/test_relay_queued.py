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


MAKE_JOBS = """
import os, sys
os.chdir(sys.argv[1])
from balsam.api import Job
Job.objects.bulk_create([Job(f"site/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}) for i in range(6)])
"""


@pytest.mark.slow
def test_changes_deletes_and_dags_queued_for_an_offline_site_resolve_once_it_syncs(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    """Every write that waits on an offline site is queued, not an error: job changes and state changes, deletes
    (one job, a query), a DAG saved and instantiated, and the CLI's kill, each say "queued for site polaris (...)"
    and return a handle; once the site syncs, ``refresh_from_db()`` shows what the site did, or its refusal."""
    import os
    import sqlite3
    import subprocess
    import sys

    env, root = login_node(tmp_path, relay)
    run(env, "-c", MAKE_JOBS, str(root))
    assert sync_once(env, root) == 0  # the relay now holds the site's app and jobs
    relay.stop()
    relay.wait_s = 0.5
    relay.start()
    from balsam import _api
    from balsam.api import DAG, Job
    from balsam.sync import login as relay_login

    relay_login(relay.url, "alice", "alice-password")  # the laptop: no site here at all
    _api.sites.reset()
    jobs = {str(j.workdir): j for j in Job.objects.filter(site_name="polaris")}
    assert sorted(jobs) == [f"site/{i}" for i in range(6)]
    tagged, killed, gone, bad = jobs["site/0"], jobs["site/1"], jobs["site/2"], jobs["site/3"]
    tagged.tags = {"round": "2"}
    tagged.save()
    assert tagged.queued_command is not None and tagged.queued is not None
    assert tagged.queued.message.startswith("queued for site polaris (")
    with pytest.raises(exc.CommandPending, match="still queued"):
        tagged.refresh_from_db()
    with pytest.raises(exc.ValidationError, match="already has its update queued"):
        tagged.save()  # one queued write per object at a time
    n = Job.objects.filter(site_name="polaris", workdir="site/1").update(state="USER_KILLED")
    assert n == 1 and len(n.queued) == 1 and n.queued[0].state() == "pending"
    gone.delete()
    assert gone.queued_command is not None and gone.id is not None  # deleted when the site applies it
    removed = Job.objects.filter(site_name="polaris", workdir="site/4").delete()
    assert removed == 1 and removed.queued
    bad.state = "RUN_DONE"  # a transition the site's state machine refuses
    bad.save()
    assert bad.queued_command is not None
    sweep = DAG("sweep", site="polaris")
    sweep.node("hello", app="Hello", workdir="{run}/hello", params={"say_hello_to": "{run}"})
    sweep.save()
    assert sweep.id is None and sweep.queued_command is not None
    instances = sweep.instantiate([{"run": "a"}, {"run": "b"}])
    assert [i.id for i in instances] == [None, None] and instances[0].queued is not None
    # The CLI says the same, and exits 0: nothing failed.
    cli = subprocess.run([sys.executable, "-m", "balsam", "job", "kill", str(jobs["site/5"].id), "-y"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])), timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "queued for site polaris (" in cli.stdout and "Killed" not in cli.stdout, cli.stdout

    assert sync_once(env, root) == 8  # the site is back: applies each command once, in order
    tagged.refresh_from_db()
    assert tagged.queued_command is None and tagged.tags == {"round": "2"}
    assert n.queued[0].state() == "applied" and Job.objects.get(id=killed.id).state == "USER_KILLED"
    gone.refresh_from_db()
    assert gone.id is None and gone.queued_command is None  # deleted, as a local delete leaves it
    assert removed.queued[0].result() == 1
    with pytest.raises(exc.IllegalTransition):
        bad.refresh_from_db()  # the site's refusal, on the laptop
    bad.refresh_from_db()
    assert bad.queued_command is None and str(bad.state) != "RUN_DONE"
    sweep.refresh_from_db()
    assert sweep.id is not None and sweep.id >> 32 == killed.id >> 32
    assert [i.refresh_from_db().id for i in instances] == sorted(i.id for i in instances) and instances[0].id is not None
    assert sum(instances[1].state().values()) == 1
    assert Job.objects.get(id=jobs["site/5"].id).state == "USER_KILLED"
    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    assert sorted(r[0] for r in conn.execute("SELECT workdir FROM job WHERE workdir LIKE 'site/%'")) == [
        "site/0", "site/1", "site/3", "site/5"]
    assert conn.execute("SELECT count(*) FROM job WHERE workdir LIKE '_/hello'").fetchone()[0] == 2
    conn.close()


STAGE_JOBS = """
import os, sys
os.chdir(sys.argv[1])
from balsam.api import ApplicationDefinition, Job

class Stage(ApplicationDefinition):
    site = "polaris"
    command_template = "cat input.dat"
    transfers = {"inp": {"required": True, "direction": "in", "local_path": "input.dat"}}

Stage.sync()
Job.objects.bulk_create([Job(f"stage/{i}", app_id="Stage", transfers={"inp": f"laptop:/data/{i}.dat"}) for i in range(3)])
"""


@pytest.mark.slow
def test_transfer_item_edits_queued_for_an_offline_site_resolve_once_it_syncs(relay: Relay, tmp_path: Path) -> None:  # noqa: F811
    """A transfer item edited on the laptop while its site is offline is queued like every other write: the item
    holds the command (``queued_command``, "queued for site polaris (...)"), a query update counts it in
    ``.queued``; once the site syncs, ``refresh_from_db()`` / ``TransferItem.objects.resolve`` show the site's
    outcome (the job staged in), or its refusal raised on the laptop."""
    import sqlite3

    env, root = login_node(tmp_path, relay)
    settings = root / "settings.yml"
    settings.write_text(settings.read_text() + "transfers:\n  transfer_locations:\n    laptop: local\n")
    run(env, "-c", STAGE_JOBS, str(root))
    assert sync_once(env, root) == 0  # the relay now holds the site's jobs and their transfer items
    relay.stop()
    relay.wait_s = 0.5
    relay.start()
    from balsam import _api
    from balsam.api import Job, TransferItem
    from balsam.sync import login as relay_login

    relay_login(relay.url, "alice", "alice-password")  # the laptop: no site here at all
    _api.sites.reset()
    jobs = {str(j.workdir): j for j in Job.objects.filter(site_name="polaris", workdir__contains="stage/")}
    assert sorted(jobs) == ["stage/0", "stage/1", "stage/2"] and {str(j.state) for j in jobs.values()} == {"READY"}
    items = {j.workdir: TransferItem.objects.get(job_id=j.id) for j in jobs.values()}
    done, bad = items[jobs["stage/0"].workdir], items[jobs["stage/2"].workdir]
    done.state = "done"  # staged in by hand: the site moves the job along when it applies this
    done.save()
    assert done.queued_command is not None and done.queued is not None
    assert done.queued.message.startswith("queued for site polaris (")
    with pytest.raises(exc.CommandPending, match="still queued"):
        done.refresh_from_db()
    with pytest.raises(exc.ValidationError, match="already has its update queued"):
        done.save()  # one queued write per object at a time
    n = TransferItem.objects.filter(job_id=jobs["stage/1"].id).update(task_id="manual-1")
    assert n == 1 and len(n.queued) == 1 and n.queued[0].state() == "pending" and "transfer items" in n.queued[0].what
    bad.state = "teleported"  # not a transfer item state: the site refuses it
    TransferItem.objects.bulk_update([bad])
    assert bad.queued_command is not None and bad.queued_command != done.queued_command
    assert TransferItem.objects.resolve([done]) == [done]  # still waiting

    assert sync_once(env, root) == 3  # the site is back: applies each command once, pushes the rows, answers
    assert TransferItem.objects.resolve([done]) == []
    assert done.queued_command is None and done.state == "done"
    assert Job.objects.get(id=jobs["stage/0"].id).state == "STAGED_IN"  # the site's outcome, seen on the laptop
    assert n.queued[0].state() == "applied" and TransferItem.objects.get(job_id=jobs["stage/1"].id).task_id == "manual-1"
    with pytest.raises(exc.ValidationError, match="unknown transfer item state"):
        bad.refresh_from_db()  # the site's refusal, on the laptop
    bad.refresh_from_db()
    assert bad.queued_command is None and bad.state == "pending"
    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    assert sorted(conn.execute("SELECT state, task_id FROM transfer_item")) == [("done", ""), ("pending", ""), ("pending", "manual-1")]
    conn.close()
