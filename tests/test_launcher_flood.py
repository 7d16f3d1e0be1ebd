"""Floods of short jobs: the launcher goes to the DB in bulk (a few acquisitions a second, hundreds of jobs each),
while a launcher of long jobs still holds no more jobs than its nodes can start next (other launchers get the
rest)."""

from __future__ import annotations

import time
from typing import Any, List

import pytest

from balsam.db import sessions
from tests.launcher_support import configure, run, runnable, start, states, wait_for


@pytest.fixture
def noop(site: Any) -> Any:
    from balsam.api import ApplicationDefinition

    class Noop(ApplicationDefinition):
        site = "test-site"
        command_template = "true"

    Noop.sync()
    return Noop


def test_a_flood_of_short_jobs_is_acquired_in_bulk(site: Any, noop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam.api import Job

    configure(site.path, cpus_per_node=2)
    taken: List[int] = []
    real_acquire = sessions.acquire

    def counted(*args: Any, **kwargs: Any) -> Any:
        jobs = real_acquire(*args, **kwargs)
        taken.append(len(jobs))
        return jobs

    monkeypatch.setattr(sessions, "acquire", counted)
    n = 600
    jobs = Job.objects.bulk_create([noop.submit(f"flood/{i}", node_packing_count=2, save=False) for i in range(n)])
    ids = runnable(site.store, jobs)
    assert run(site, "mpi", idle_ttl_s=0.5) == 0
    assert set(states(site.store, ids).values()) == {"JOB_FINISHED"}
    acquisitions = [k for k in taken if k]
    # Holding only one allocation's worth ahead (2 jobs here), it took a job or two per pass: ~465 writes for 600 jobs.
    # Now a quarter second's worth: ~14 on a quiet 2-core machine; the bound leaves room for a machine so loaded
    # that the launcher starts only ~30 jobs a second (its backlog follows the rate it measures).
    assert sum(acquisitions) == n and len(acquisitions) <= n // 4, f"{len(acquisitions)} acquisitions for {n} jobs"


def test_a_launcher_of_long_jobs_holds_only_what_its_node_runs_next(site: Any) -> None:
    from balsam.api import ApplicationDefinition, Job

    class Nap(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep 30"

    Nap.sync()
    configure(site.path, cpus_per_node=2)
    ids = runnable(site.store, Job.objects.bulk_create([Nap.submit(f"nap/{i}", node_packing_count=2, save=False)
                                                         for i in range(12)]))
    proc = start(site.path, "mpi", wall_time_min=2.0)
    try:
        wait_for(lambda: list(states(site.store, ids).values()).count("RUNNING") == 2, timeout=60, what="two jobs running")
        time.sleep(1.5)  # several passes of the loop and of the start-rate window
        held = site.store.execute("SELECT count(*) FROM job WHERE session_id IS NOT NULL")[0][0]
        # two running, and one node's worth (two jobs) ahead: the other eight stay free for other launchers
        assert held <= 4, f"the launcher holds {held} jobs"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("mode", ["mpi", "serial"])
def test_jobs_that_end_as_they_start_each_report_their_own_exit_code(site: Any, mode: str) -> None:
    """Jobs are spawned off the launcher's loop, so many end before the loop has taken in their pids: each is
    still reported once, with its own exit code (none lost, none taken for an orphan, none mixed up)."""
    from balsam.api import ApplicationDefinition, Job

    class Exits(ApplicationDefinition):
        site = "test-site"
        command_template = "exit {{ code }}"

    Exits.sync()
    configure(site.path, cpus_per_node=2)
    n = 120
    jobs = Job.objects.bulk_create([Exits.submit(f"exits/{i}", code=i % 3, node_packing_count=2, save=False) for i in range(n)])
    ids = runnable(site.store, jobs)
    assert run(site, mode, idle_ttl_s=0.5) == 0
    rows = dict(site.store.execute(f"SELECT id, return_code FROM job WHERE id IN ({','.join('?' * n)})", ids))
    assert [rows[i] for i in ids] == [k % 3 for k in range(n)]
    got = states(site.store, ids)
    assert [got[i] for i in ids] == ["JOB_FINISHED" if k % 3 == 0 else "RUN_ERROR" for k in range(n)]
    running = site.store.execute(f"SELECT count(*) FROM event WHERE to_state='RUNNING' AND job_id IN ({','.join('?' * n)})", ids)
    assert running[0][0] == n, "each job started once"
