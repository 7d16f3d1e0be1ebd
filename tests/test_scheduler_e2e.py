"""End to end on real batch schedulers (the local Slurm and Grid Engine that .ci/run starts).

`balsam queue submit` -> the agent renders the preset's batch script and submits it (sbatch / qsub) -> the
launcher inside the allocation runs the jobs -> the scheduler's own listing (squeue / qstat) and `balsam
queue ls` agree -> `balsam queue rm` cancels it (scancel / qdel).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest
import yaml

SCHEDULERS = {
    "slurm": {"queue": "debug", "listing": ["squeue", "-h", "-o", "%i"], "probe": ["squeue", "-h"], "mark": pytest.mark.slurm},
    "sge": {"queue": "all.q", "listing": ["qstat"], "probe": ["qstat"], "mark": pytest.mark.sge},
}


def daemon_up(name: str) -> bool:
    probe = SCHEDULERS[name]["probe"]
    if shutil.which(probe[0]) is None:
        return False
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def balsam(*args: str, check: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    res = subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, f"balsam {' '.join(args)}: {res.stderr}"
    return res


def wait(cond: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def listed_ids(name: str) -> List[str]:
    out = subprocess.run(SCHEDULERS[name]["listing"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]


@pytest.mark.parametrize("name", [pytest.param(n, marks=s["mark"]) for n, s in SCHEDULERS.items()])
def test_queue_submit_runs_jobs_in_a_real_allocation_and_queue_rm_cancels(name: str, tmp_path: Path) -> None:
    if not daemon_up(name):
        pytest.skip(f"{name} is not running (bash .ci/{name}.sh start)")
    site = tmp_path / f"{name}-site"
    balsam("site", "init", str(site), "-n", f"{name}-site", "--preset", name)
    settings = yaml.safe_load((site / "settings.yml").read_text())
    settings["scheduler"]["sync_period_s"] = 1
    settings["launcher"]["idle_ttl_s"] = 300  # keep the allocation up so the listings can be compared
    (site / "settings.yml").write_text(yaml.safe_dump(settings))
    (tmp_path / "apps.py").write_text(
        "from balsam.api import ApplicationDefinition\n"
        f"class Hello(ApplicationDefinition):\n    site = '{name}-site'\n    command_template = 'echo hi from {{{{ who }}}}'\n")
    balsam("app", "sync", str(tmp_path / "apps.py"), "--site", f"{name}-site")
    for i in range(3):
        balsam("job", "create", "--site", f"{name}-site", "-a", "Hello", "-w", f"hello/{i}", "-p", f"who={name}{i}", "-y")
    balsam("site", "start", "--site", str(site))
    try:
        balsam("queue", "submit", "--site", f"{name}-site", "-n", "1", "-t", "5", "-q", SCHEDULERS[name]["queue"], "-A", "test", "-j", "mpi")

        def jobs() -> List[Any]:
            return list(json.loads(balsam("job", "ls", "--site", f"{name}-site", "--json").stdout))

        wait(lambda: all(j["state"] == "JOB_FINISHED" for j in jobs()) and len(jobs()) == 3, what="3 jobs JOB_FINISHED")
        for i in range(3):
            assert (site / "data" / "hello" / str(i) / "job.out").read_text().strip() == f"hi from {name}{i}"
        queue = wait(lambda: [b for b in json.loads(balsam("queue", "ls", "--site", f"{name}-site", "--json").stdout)
                              if b["state"] == "running"], what="the BatchJob running")
        scheduler_id = str(queue[0]["scheduler_id"])
        assert scheduler_id in listed_ids(name)  # the scheduler and Balsam agree
        balsam("queue", "rm", str(queue[0]["id"]), "--site", f"{name}-site")
        wait(lambda: scheduler_id not in listed_ids(name) or name == "slurm" and _slurm_done(scheduler_id), what="the cancel")
        wait(lambda: json.loads(balsam("queue", "ls", "--site", f"{name}-site", "--json", "-h").stdout)[0]["state"] == "finished",
             what="the BatchJob finished")
    finally:
        balsam("site", "stop", "--site", str(site), check=False)


def _slurm_done(scheduler_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", scheduler_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip() in ("", "CANCELLED", "COMPLETED", "COMPLETING")
