"""The local scheduler: a BatchJob is a background bash process; statuses, exit codes, times and deletion of
the whole tree, surviving a restart of the adapter."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from balsam.exceptions import SchedulerError
from balsam.platforms.schedulers import SchedulerState, get_scheduler
from balsam.platforms.schedulers.local import LocalScheduler
from tests.test_platforms_detached import whole_tree


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def wait_state(sched, pid, states, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = sched.get_statuses([pid])[pid]
        if status.state in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {pid} never reached {states}")


@pytest.fixture
def sched(tmp_path):
    return get_scheduler("local", state_dir=tmp_path / "state", options={"kill_grace_s": "2"})


def test_a_job_runs_to_completion_with_output_times_and_exit_code(sched, tmp_path):
    script = write(tmp_path / "qlaunch00001.sh", "echo hello from $BALSAM_LOCAL_JOB_ID in $PWD\nexit 0\n")
    pid = sched.submit(script, project="local", queue="local", num_nodes=1, wall_time_min=10, env={"EXTRA": "1"})
    status = wait_state(sched, pid, {SchedulerState.FINISHED})
    assert status.exit_code == 0 and status.queue == "local" and status.wall_time_min == 10
    assert status.start_time is not None and status.end_time >= status.start_time
    assert (tmp_path / "qlaunch00001.output").read_text() == f"hello from {pid} in {tmp_path}\n"
    assert sched.job_times(pid) == (status.start_time, status.end_time)
    assert pid not in sched.get_statuses()  # without ids: only running jobs


def test_a_failing_job_is_failed_and_a_restarted_adapter_still_knows_it(sched, tmp_path):
    pid = sched.submit(write(tmp_path / "bad.sh", "exit 5\n"), project="local", queue="local", num_nodes=1, wall_time_min=5)
    wait_state(sched, pid, {SchedulerState.FAILED})
    again = LocalScheduler(state_dir=sched.state_dir)
    status = again.get_statuses([pid])[pid]
    assert (status.state, status.exit_code) == (SchedulerState.FAILED, 5)


def test_running_jobs_are_listed_and_delete_kills_the_whole_tree(sched, tmp_path):
    script = write(tmp_path / "tree.sh", "sleep 120 &\n(sleep 121 & wait) &\nsleep 122\n")
    pid = sched.submit(script, project="local", queue="local", num_nodes=1, wall_time_min=5)
    tree = whole_tree(pid, 5)  # waited for: a loaded machine may take well over 0.3 s to start them
    assert sched.get_statuses()[pid].state is SchedulerState.RUNNING
    sched.delete(pid)
    alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    status = sched.get_statuses([pid])[pid]
    assert status.state is SchedulerState.CANCELLED and status.end_time is not None
    sched.delete(pid)  # deleting a finished job is a no-op


def test_a_job_that_ignores_term_is_killed_after_the_grace_period(sched, tmp_path):
    script = write(tmp_path / "stubborn.sh", "trap '' TERM\nwhile true; do sleep 0.1; done\n")
    pid = sched.submit(script, project="local", queue="local", num_nodes=1, wall_time_min=5)
    time.sleep(0.3)
    start = time.monotonic()
    sched.delete(pid)
    assert 1.5 < time.monotonic() - start < 10
    assert sched.get_statuses([pid])[pid].state is SchedulerState.CANCELLED


def test_bad_requests_are_clear_errors(sched, tmp_path):
    with pytest.raises(SchedulerError, match="no batch script"):
        sched.submit(tmp_path / "missing.sh", project="local", queue="local", num_nodes=1, wall_time_min=5)
    with pytest.raises(SchedulerError, match="one host"):
        sched.submit(write(tmp_path / "x.sh", "true\n"), project="local", queue="local", num_nodes=2, wall_time_min=5)
    with pytest.raises(SchedulerError, match="no job"):
        sched.delete(os.getpid())
    assert sched.get_statuses([123456789]) == {} and sched.job_times(123456789) == (None, None)
    assert sched.discover_projects() == ["local"] and sched.get_backfill_windows() == {}


def test_constructing_does_no_work(tmp_path):
    LocalScheduler(state_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


# A process that submits one job and is killed with kill -9 the moment the job's process exists: when it next calls
# ``at`` after the spawn, before it has noted the job's pid, as a site agent killed mid-submit is.
SUBMIT_AND_DIE = r"""
import os, signal, sys
from balsam.platforms import detached
from balsam.platforms.schedulers.local import LocalScheduler

state_dir, script, at = sys.argv[1:4]

spawned = []

def die(frame, event, arg):
    name = frame.f_code.co_name if event in ("call", "return") else getattr(arg, "__name__", "") if event == "c_call" else ""
    if event == "return" and name == "spawn":
        spawned.append(arg)
    elif spawned and event != "return" and name == at:
        os.kill(os.getpid(), signal.SIGKILL)

sched = LocalScheduler(state_dir=state_dir)
sys.setprofile(die)
sched.submit(script, project="local", queue="local", num_nodes=1, wall_time_min=5, job_name="balsam-7")
"""


@pytest.mark.parametrize("at", ["create_time_of", "append_record", "symlink"])
def test_a_submitter_killed_right_after_the_spawn_leaves_a_job_the_next_one_finds(sched, tmp_path, at):
    """kill -9 of the site agent between the start of a local job and the note of its pid: the restarted agent's
    ``find_submitted`` found nothing (the record said neither the script nor the pid yet), so it submitted the
    BatchJob again: a second launcher on the same host. The job is found, with its status, and ends as it should."""
    import subprocess
    import sys

    from tests.launcher_support import REPO

    script = write(tmp_path / "qlaunch00007.sh", "touch started; while [ ! -e go ]; do sleep 0.05; done; exit 3\n")
    since = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    died = subprocess.run([sys.executable, "-c", SUBMIT_AND_DIE, str(sched.state_dir), str(script), at], env=env, timeout=60)
    assert died.returncode == -9
    deadline = time.monotonic() + 10
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    again = LocalScheduler(state_dir=sched.state_dir)
    try:
        pid = again.find_submitted("balsam-7", script, since)
        assert pid is not None
        assert again.get_statuses([pid])[pid].state is SchedulerState.RUNNING
        assert pid in again.get_statuses()
        (tmp_path / "go").write_text("")
        status = wait_state(again, pid, {SchedulerState.FAILED})
        assert status.exit_code == 3 and status.job_name == "balsam-7"
    finally:
        (tmp_path / "go").write_text("")  # the job ends whatever happened
        while any(p.info["cmdline"] and str(script) in p.info["cmdline"] for p in psutil.process_iter(["cmdline"])):
            time.sleep(0.05)
