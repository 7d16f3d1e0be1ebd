"""The Balsam quickstart end to end, offline: CLI site init and start, apps, jobs, a local BatchJob, results.

Everything is real: the `balsam` command in subprocesses, the site agent daemon, the local scheduler
running the rendered batch script, the launcher inside it, and the jobs' processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest

from balsam.api import ApplicationDefinition, BatchJob, Job
from tests.helpers import end_allocations

SITE = "qs-site"


class Hello(ApplicationDefinition):
    site = SITE
    command_template = "echo Hello, {{ say_hello_to }}!"


class VecNorm(ApplicationDefinition):
    site = SITE

    def run(self, vec: list) -> float:
        return float(sum(x**2 for x in vec) ** 0.5)


class Adder(ApplicationDefinition):
    site = SITE

    def run(self, x: Any, y: Any) -> Any:
        return x + y


class Sleeper(ApplicationDefinition):
    site = SITE
    command_template = "sleep {{ seconds }}"


def balsam(*args: str, check: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture
def qs_site(tmp_path: Path) -> Any:
    root = tmp_path / SITE
    balsam("site", "init", str(root), "-n", SITE, "--preset", "local")
    (root / "settings.yml").write_text((root / "settings.yml").read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 3"))
    balsam("site", "start", "--site", str(root))
    try:
        yield root
        end_allocations(SITE)  # their launchers end with them (the agent's restart test keeps an idle one for 60 s)
    finally:
        balsam("site", "stop", "--site", str(root), check=False)


@pytest.mark.parametrize("job_mode", ["mpi", "serial"])
def test_quickstart(qs_site: Path, job_mode: str) -> None:
    hello = Hello.submit(workdir="demo/hello", say_hello_to="world")
    norms = [VecNorm.submit(workdir=f"demo/norm{i}", vec=[3, 4 * i]) for i in range(3)]
    adds = [Adder.submit(workdir="demo/add1", x=1, y=1), Adder.submit(workdir="demo/add2", x=3, y="hello")]
    batch = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode=job_mode, queue="local", project="local")
    finished = list(Job.objects.as_completed([hello, *norms, *adds], timeout=120))
    assert len(finished) == 6
    assert (qs_site / "data" / "demo" / "hello" / "job.out").read_text().strip() == "Hello, world!"
    assert [n.result() for n in norms] == [3.0, 5.0, pytest.approx(8.5440037)]
    assert adds[0].result() == 2
    with pytest.raises(TypeError, match="unsupported operand"):
        adds[1].result_nowait()
    assert str(adds[1].state) == "FAILED"
    listing = balsam("job", "ls", "--site", SITE).stdout
    assert listing.count("JOB_FINISHED") == 5 and listing.count("FAILED") == 1
    batch.refresh_from_db()
    assert batch.state in ("queued", "running", "finished") and batch.scheduler_id
    assert "running" in balsam("site", "status", "--site", str(qs_site)).stdout


def test_agent_killed_mid_run_and_restarted_loses_nothing(qs_site: Path) -> None:
    settings = qs_site / "settings.yml"  # the launcher (started below) outlives the agent's restart, however slow
    settings.write_text(settings.read_text().replace("idle_ttl_s: 3", "idle_ttl_s: 60"))
    sleepers = [Sleeper.submit(workdir=f"s{i}", seconds="0.5") for i in range(6)]
    BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi")
    deadline = time.monotonic() + 60
    while not Job.objects.filter(id=[s.id for s in sleepers], state=["RUNNING", "RUN_DONE", "JOB_FINISHED"]).exists():
        assert time.monotonic() < deadline, "nothing started"
        time.sleep(0.1)
    pid = int((qs_site / ".balsam" / "agent.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # a crash: no cleanup at all
    more: List[Any] = [Sleeper.submit(workdir=f"t{i}", seconds="0.1") for i in range(3)]
    balsam("site", "start", "--site", str(qs_site))
    done = list(Job.objects.as_completed(sleepers + more, timeout=120))
    assert len(done) == 9
    assert {str(j.state) for j in done} == {"JOB_FINISHED"}
