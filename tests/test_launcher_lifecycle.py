"""How a launcher stops, and what happens to its jobs: idle TTL, wall time, SIGTERM/SIGINT, jobs killed by the
user while they run, a lease lost at the site, and kill -9 of the launcher itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, List

import pytest

from tests.launcher_support import (
    configure,
    events,
    job_row,
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




def sessions(store: Any) -> int:
    return int(store.execute("SELECT count(*) FROM session")[0][0])


def test_idle_launcher_stops_after_idle_ttl(site: Any) -> None:
    t0 = time.monotonic()
    assert run(site, "mpi", idle_ttl_s=0.3) == 0
    assert time.monotonic() - t0 < 5
    assert sessions(site.store) == 0


@pytest.mark.parametrize("mode", MODES)
def test_wall_time_times_out_running_jobs_and_skips_long_ones(site: Any, sleeper: Any, pids: List[int], mode: str) -> None:
    running = sleeper.submit("wall/run", seconds=60, node_packing_count=2)
    too_long = sleeper.submit("wall/long", seconds=1, wall_time_min=5, node_packing_count=2)
    ids = runnable(site.store, [running, too_long])
    t0 = time.monotonic()
    assert run(site, mode, wall_time_min=0.04, idle_ttl_s=30) == 0  # 2.4 s, stops 0.5 s early
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 8, elapsed
    pids.append(read_pid(site.path, "wall/run"))
    assert states(site.store, ids) == {ids[0]: "RUN_TIMEOUT", ids[1]: "PREPROCESSED"}
    assert job_row(site.store, ids[1])["session_id"] is None
    assert "wall time" in events(site.store, ids[0])[-1]["data"]["message"]
    assert not pid_alive(pids[0])


@pytest.mark.parametrize("mode,sig", [("mpi", signal.SIGTERM), ("serial", signal.SIGTERM), ("mpi", signal.SIGINT)])
def test_signals_stop_jobs_flush_and_release(site: Any, sleeper: Any, pids: List[int], mode: str, sig: int) -> None:
    from balsam.api import ApplicationDefinition

    class Quick(ApplicationDefinition):
        site = "test-site"
        command_template = "true"

    slow = sleeper.submit("sig/slow", seconds=60, node_packing_count=2)
    quick = [Quick.submit(f"sig/q{i}", node_packing_count=2) for i in range(3)]
    ids = runnable(site.store, [slow, *quick])
    proc = start(site.path, mode)
    pids.append(read_pid(site.path, "sig/slow"))
    wait_for(lambda: list(states(site.store, ids[1:]).values()) == ["JOB_FINISHED"] * 3, what="quick jobs done")
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == 128 + sig
    assert states(site.store, ids) == {ids[0]: "RUN_TIMEOUT", **{i: "JOB_FINISHED" for i in ids[1:]}}
    assert sessions(site.store) == 0
    assert not pid_alive(pids[0]), "the job's process was killed"


@pytest.mark.parametrize("mode", MODES)
def test_user_kill_stops_the_running_process(site: Any, sleeper: Any, pids: List[int], mode: str) -> None:
    a = sleeper.submit("kill/a", seconds=60, node_packing_count=2)
    b = sleeper.submit("kill/b", seconds=0.5, node_packing_count=2)
    ids = runnable(site.store, [a, b])
    proc = start(site.path, mode, idle_ttl_s=0.5)
    try:
        pid = read_pid(site.path, "kill/a")
        pids.append(pid)
        wait_for(lambda: states(site.store, [ids[0]])[ids[0]] == "RUNNING", what="RUNNING written")
        set_state(site.store, ids[0], "USER_KILLED", message="no longer needed")
        wait_for(lambda: not pid_alive(pid), timeout=5, what="the killed job's process to end")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert states(site.store, ids) == {ids[0]: "USER_KILLED", ids[1]: "JOB_FINISHED"}
    assert [e["to"] for e in events(site.store, ids[0])][-1] == "USER_KILLED", "nothing was written after the kill"


@pytest.mark.parametrize("mode", MODES)
def test_user_kill_of_a_python_job_replaces_its_worker(site: Any, adder: Any, mode: str) -> None:
    from balsam.api import ApplicationDefinition

    class Nap(ApplicationDefinition):
        site = "test-site"

        def run(self) -> int:
            import os
            import time

            with open("pid", "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
            return 0

    [nap] = runnable(site.store, [Nap.submit("pykill/nap")])
    proc = start(site.path, mode, idle_ttl_s=0.5)
    try:
        pid = read_pid(site.path, "pykill/nap")
        wait_for(lambda: states(site.store, [nap])[nap] == "RUNNING", what="RUNNING written")
        set_state(site.store, nap, "USER_KILLED")
        wait_for(lambda: not pid_alive(pid), timeout=5, what="the warm worker running the killed job to stop")
        [after] = runnable(site.store, [adder.submit("pykill/after", x=1)])
        wait_for(lambda: states(site.store, [after])[after] == "JOB_FINISHED", timeout=10, what="a Python job after the kill")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert states(site.store, [nap]) == {nap: "USER_KILLED"}


def test_lost_lease_stops_its_jobs_and_the_launcher_goes_on(site: Any, sleeper: Any, hello: Any, pids: List[int]) -> None:
    from balsam.db import sessions as db_sessions

    configure(site.path, session={"heartbeat_period_s": 0.2})
    [slow] = runnable(site.store, [sleeper.submit("lease/slow", seconds=60)])
    proc = start(site.path, "mpi", idle_ttl_s=1.0)
    try:
        pid = read_pid(site.path, "lease/slow")
        pids.append(pid)
        wait_for(lambda: states(site.store, [slow])[slow] == "RUNNING", what="RUNNING written")
        sid = job_row(site.store, slow)["session_id"]
        with site.store.write() as conn:  # what the agent does to a lease that stopped beating
            db_sessions.release(conn, sid, message="session expired")
        wait_for(lambda: not pid_alive(pid), timeout=5, what="the job of the lost lease to be stopped")
        [later] = runnable(site.store, [hello.submit("lease/later", say_hello_to="again")])
        wait_for(lambda: states(site.store, [later])[later] == "JOB_FINISHED", timeout=10, what="a job under the new lease")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert states(site.store, [slow]) == {slow: "RUN_TIMEOUT"}


@pytest.mark.parametrize("mode", MODES)
def test_kill_9_loses_nothing(site: Any, sleeper: Any, pids: List[int], mode: str) -> None:
    from balsam.db.jobsource import JobSource
    from balsam.site import this_host

    jobs = [sleeper.submit(f"k9/{i}", seconds=60) for i in range(3)]  # one node, whole-node jobs: one runs
    ids = runnable(site.store, jobs)
    proc = start(site.path, mode)
    wait_for(lambda: "RUNNING" in states(site.store, ids).values(), what="a job RUNNING")
    running = [j for j, s in states(site.store, ids).items() if s == "RUNNING"]
    pids.append(read_pid(site.path, f"k9/{ids.index(running[0])}"))
    held = [r[0] for r in site.store.execute("SELECT id FROM job WHERE session_id IS NOT NULL")]
    assert len(held) >= 2, "the launcher holds a running job and at least one waiting"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Any process on this host that opens a lease (the agent, another launcher) releases the dead one at once.
    JobSource(site.store, host=this_host()).start().release()
    after = states(site.store, ids)
    assert [after[j] for j in running] == ["RUN_TIMEOUT"]
    assert all(after[j] == "PREPROCESSED" for j in ids if j not in running)
    assert site.store.execute("SELECT count(*) FROM job WHERE session_id IS NOT NULL")[0][0] == 0
    assert "is gone" in events(site.store, running[0])[-1]["data"]["message"]


def test_cli_help_and_errors(site: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from balsam.cli.launcher import launcher

    result = CliRunner().invoke(launcher, ["--help"])
    assert result.exit_code == 0 and "balsam launcher -j mpi -t 60" in result.output and "--part" in result.output
    result = CliRunner().invoke(launcher, ["-j", "mpi", "-t", "1", "--site", str(site.path), "-p", "gpu:1"])
    assert result.exit_code != 0 and "job mode must be mpi or serial" in str(result.exception)


@pytest.mark.parametrize("mode", MODES)
def test_an_idle_launcher_runs_a_resynced_app_with_its_new_command(site: Any, mode: str) -> None:
    """The README promises re-synced apps reach running launchers; an idle one must not keep the old command."""
    from balsam.api import ApplicationDefinition, Job

    def define(command: str) -> Any:
        ns: dict = {"ApplicationDefinition": ApplicationDefinition}
        exec(f"class Say(ApplicationDefinition):\n    site = 'test-site'\n    command_template = {command!r}\n", ns)
        ns["Say"].sync()
        return ns["Say"]

    first = define("echo old {{ n }}").submit(workdir="one", n=1)
    runnable(site.store, [first])
    proc = start(site.path, mode, idle_ttl_s=60)
    try:
        wait_for(lambda: states(site.store, [first.id])[first.id] == "JOB_FINISHED", timeout=60, what="the first job")
        second = define("echo new {{ n }}").submit(workdir="two", n=2)
        runnable(site.store, [second])
        wait_for(lambda: states(site.store, [second.id])[second.id] == "JOB_FINISHED", timeout=60, what="the second job")
        assert (site.path / "data" / "two" / "job.out").read_text().strip() == "new 2"
        assert str(Job.objects.get(id=second.id).state) == "JOB_FINISHED"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
