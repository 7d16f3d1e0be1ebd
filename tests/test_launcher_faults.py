"""A killed launcher leaves no twin and loses no result (issue 19): its jobs die with it, what it learned is
recovered from its journal, re-runs are recorded as re-runs, and a job's leftover processes are cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, List

import pytest

from tests.launcher_support import (
    configure,
    events,
    job_row,
    kill_quietly,
    pid_alive,
    read_pid,
    run,
    runnable,
    set_state,
    start,
    states,
    wait_for,
)

MODES = ["mpi", "serial"]




def _release_dead_leases(site: Any) -> None:
    """What the agent (or any launcher opening a lease on this host) does when it finds a dead launcher."""
    from balsam.db.jobsource import JobSource
    from balsam.site import this_host

    JobSource(site.store, host=this_host()).start().release()


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_launchers_jobs_die_with_it(site: Any, sleeper: Any, pids: List[int], mode: str) -> None:
    (job,) = runnable(site.store, [sleeper.submit("twin/0", seconds=120)])
    proc = start(site.path, mode)
    wait_for(lambda: states(site.store, [job])[job] == "RUNNING", timeout=30, what="the job RUNNING")
    pid = read_pid(site.path, "twin/0")
    pids.append(pid)
    record = site.path / "data" / "twin" / "0" / ".balsam-job.pid"
    if mode == "mpi":  # a job that runs a while leaves a pid record for the next launcher (serial: on its node)
        wait_for(lambda: record.exists() and record.read_text().split()[0] == str(pid), what="the pid record")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not pid_alive(pid), timeout=20, what="the job's process to end with its launcher")


def test_the_next_launcher_stops_an_earlier_copy_before_rerunning(tmp_path: Path) -> None:
    """The pid record in the workdir covers a watchdog that was killed too."""
    from balsam.launcher.watchdog import stop_previous, write_record

    proc = subprocess.Popen(["sleep", "120"], cwd=tmp_path, start_new_session=True)
    try:
        write_record(str(tmp_path), proc.pid)
        assert stop_previous(str(tmp_path)) == proc.pid
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert stop_previous(str(tmp_path)) is None  # the record now names a dead process: nothing to do
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("mode", MODES)
def test_results_a_killed_launcher_had_not_written_are_recovered(site: Any, hello: Any, mode: str) -> None:
    """The launcher's in-memory batch never reaches the DB (flush period of an hour); its journal does."""
    configure(site.path, status_flush_period_s=3600.0)
    jobs = runnable(site.store, [hello.submit(workdir=f"j/{i}", say_hello_to=str(i)) for i in range(5)])
    proc = start(site.path, mode)
    journal = site.layout.state / "journal"

    def journaled() -> bool:
        text = "".join(p.read_text() for p in journal.glob("*.jsonl")) if journal.is_dir() else ""
        return text.count('"RUN_DONE"') == len(jobs)

    wait_for(journaled, timeout=30, what="every RUN_DONE in the journal")
    assert all(s == "PREPROCESSED" for s in states(site.store, jobs).values())  # the DB has heard nothing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _release_dead_leases(site)
    assert set(states(site.store, jobs).values()) == {"JOB_FINISHED"}  # finished: never run again
    for j in jobs:
        assert job_row(site.store, j)["return_code"] == 0
        ev = events(site.store, j)
        assert [e["to"] for e in ev].count("RUNNING") == 1
        assert [e["data"].get("from_journal") is not None for e in ev if e["to"] in ("RUN_DONE", "POSTPROCESSED")] == [True, True]
    assert not list(journal.glob("*.jsonl"))  # the journal of an ended lease is removed


def test_a_running_job_of_a_dead_launcher_times_out_and_its_rerun_is_recorded(site: Any, sleeper: Any,
                                                                              pids: List[int]) -> None:
    configure(site.path, status_flush_period_s=3600.0)
    (job,) = runnable(site.store, [sleeper.submit("rr/0", seconds=120)])
    proc = start(site.path, "mpi")
    pid = read_pid(site.path, "rr/0")
    pids.append(pid)
    journal = site.layout.state / "journal"
    wait_for(lambda: '"RUNNING"' in "".join(p.read_text() for p in journal.glob("*.jsonl")), what="RUNNING journaled")
    assert states(site.store, [job])[job] == "PREPROCESSED"  # RUNNING is only in the journal
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _release_dead_leases(site)
    ev = events(site.store, job)
    assert [e["to"] for e in ev][-2:] == ["RUNNING", "RUN_TIMEOUT"]  # the run is in the history
    assert "the launcher died" in ev[-1]["data"]["message"]
    set_state(site.store, job, "RESTART_READY")  # what handle_timeout does
    configure(site.path, status_flush_period_s=0.05)
    proc = start(site.path, "mpi")
    try:
        wait_for(lambda: states(site.store, [job])[job] == "RUNNING", timeout=30, what="the re-run")
        rerun = [e for e in events(site.store, job) if e["to"] == "RUNNING"]
        assert len(rerun) == 2 and rerun[-1]["data"]["run"] == 2 and "run" not in rerun[0]["data"]
    finally:
        proc.kill()
        proc.wait()
        pids.append(read_pid(site.path, "rr/0"))


def test_a_jobs_leftover_background_processes_are_killed_when_it_ends(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Spawner(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep 120 & echo $! > child; echo started"

    Spawner.sync()
    (job,) = runnable(site.store, [Spawner.submit("orph/0")])
    assert run(site, "mpi") == 0
    assert states(site.store, [job])[job] == "JOB_FINISHED"
    child = int((site.path / "data" / "orph" / "0" / "child").read_text())
    try:
        wait_for(lambda: not pid_alive(child), timeout=10, what="the job's background child to be killed")
    finally:
        kill_quietly(child)


def test_kill_orphans_can_be_turned_off(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Spawner(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep 120 & echo $! > child"

    Spawner.sync()
    configure(site.path, kill_orphans=False)
    runnable(site.store, [Spawner.submit("keep/0")])
    assert run(site, "mpi") == 0
    child = int((site.path / "data" / "keep" / "0" / "child").read_text())
    try:
        time.sleep(0.2)
        assert pid_alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_failed_runs_event_keeps_a_bounded_tail_and_job_out_keeps_everything(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Noisy(ApplicationDefinition):
        site = "test-site"
        command_template = "printf '%0200000d' 0; echo; echo last words; exit 3"

    Noisy.sync()
    configure(site.path, error_tail_num_lines=5, error_tail_max_bytes=1000)
    (job,) = runnable(site.store, [Noisy.submit("noisy/0")])
    assert run(site, "mpi") == 0
    assert states(site.store, [job])[job] == "RUN_ERROR"
    error = events(site.store, job)[-1]["data"]["error"]
    assert error.endswith("last words") and len(error.encode()) <= 1100
    assert "full output is in job.out" in error
    assert (site.path / "data" / "noisy" / "0" / "job.out").stat().st_size > 200000
    assert events(site.store, job)[-1]["data"]["returncode"] == 3
    stored = site.store.execute("SELECT sum(length(data)) FROM event WHERE job_id=?", (job,))[0][0]
    assert stored < 1500  # not 64 KB per failed run
