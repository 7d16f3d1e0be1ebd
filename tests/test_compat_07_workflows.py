"""Balsam 0.7's documented workflows end to end on a fresh site with its agent running (`balsam site init`,
`balsam site start`), a local BatchJob and real processes: the app guide's hooks as written (preprocess reading
``job.data``, postprocess parsing output and asking for a re-run, handle_error's retry counter, handle_timeout
failing a slow run and creating a follow-up job, shell_preamble as a string and as a list, environment
variables), a parent chain, transfer slots with 0.7's typed specs, Python ``run()`` apps as futures, and a
BatchJob terminated through ``pending_deletion``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import yaml

from balsam.api import (
    ApplicationDefinition,
    AppParameter,
    BatchJob,
    EventLog,
    Job,
    JobTransferItem,
    TransferDirection,
    TransferSlot,
    site_config,
)
from tests.helpers import end_allocations

SITE = "wf-site"


def balsam(*args: str, cwd: Any = None, input: Any = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          input=input)


@pytest.fixture
def wf_site(tmp_path: Path) -> Iterator[Path]:
    """`balsam site init` + `balsam site start` from inside the site, as the quickstart does; a "laptop" transfer
    location (a local directory). Its BatchJobs are ended through the agent before the agent stops: a launcher that
    left after a few idle seconds (as here before) could leave while the agent, slow on a loaded machine, was still
    running a hook, and the jobs after it waited with no launcher until the test timed out."""
    root = tmp_path / SITE
    assert balsam("site", "init", str(root), "-n", SITE).returncode == 0
    settings = yaml.safe_load((root / "settings.yml").read_text())
    settings["launcher"]["idle_ttl_s"] = 60
    settings["transfers"] = {"transfer_locations": {"laptop": "local"}}
    (root / "settings.yml").write_text(yaml.safe_dump(settings))
    started = balsam("site", "start", cwd=root)
    assert started.returncode == 0, started.stderr
    try:
        yield root
    finally:
        try:
            end_allocations(SITE)
        finally:
            balsam("site", "stop", cwd=root)


# ---------------------------------------------------------------------------------- the app guide's hooks
class MySimulation(ApplicationDefinition):
    """Some description of the app goes here"""

    site = SITE
    environment_variables = {"HDF5_USE_FILE_LOCKING": "FALSE"}
    command_template = "cat input.txt; echo HDF5_USE_FILE_LOCKING=$HDF5_USE_FILE_LOCKING FOO=$FOO mode={{ mode }}; cat guess.txt > out.txt"
    parameters = {"mode": AppParameter(required=False, default="explore", help="The simulation mode")}

    def generate_input(self, coordinates: Any) -> bool:
        with open("input.txt", "w") as fp:
            fp.write(f"coords {coordinates}\n")
        with open("guess.txt", "w") as fp:
            fp.write("1")
        return bool(coordinates)

    def preprocess(self) -> None:
        coordinates = self.job.data["input_coords"]
        success = self.generate_input(coordinates)
        if success:
            self.job.state = "PREPROCESSED"
        else:
            self.job.state = "FAILED"
            self.job.state_data = {"error": "Preproc got bad coordinates"}

    def shell_preamble(self) -> str:
        return f"""
        export FOO={self.job.data["env_vars"]["foo"]}
        """

    def postprocess(self) -> None:
        with open("out.txt") as fp:
            result = int(fp.read())
        if result >= 2:
            self.job.data = {**self.job.data, "result": result}
            self.job.state = "POSTPROCESSED"
        else:
            with open("guess.txt", "w") as fp:  # "fix the input" and run again
                fp.write(str(result + 1))
            self.job.state = "RESTART_READY"


class Flaky(ApplicationDefinition):
    site = SITE
    command_template = "echo attempt; exit 3"

    def handle_error(self) -> None:
        dat = self.job.data
        retry_count = dat.get("retry_count", 0)
        if retry_count <= 3:
            self.job.state = "RESTART_READY"
            self.job.data = {**dat, "retry_count": retry_count + 1}
        else:
            self.job.state = "FAILED"
            self.job.state_data = {"reason": "Exceeded maximum retries"}


class Listy(ApplicationDefinition):
    site = SITE
    command_template = "echo A=$A B=$B"

    def shell_preamble(self) -> Any:
        return ["export A=1", "export B=2"]

    def postprocess(self) -> None:
        # "dynamically creating additional Jobs", through SiteConfig().client as the guide suggests inside apps.
        from balsam.config import SiteConfig

        client = SiteConfig().client
        if not self.job.workdir.endswith("-next"):
            client.Job.objects.create(workdir=self.job.workdir + "-next", app_id="Listy", site_name=SITE, parent_ids=[self.job.id])
        self.job.state = "POSTPROCESSED"


class Child(ApplicationDefinition):
    site = SITE
    command_template = "cat parents.txt"

    def preprocess(self) -> None:
        parents = self.job.parent_query()
        with open("parents.txt", "w") as fp:
            for parent in parents:
                print("Parent workdir:", parent.workdir, file=fp)
        # The jobs guide's "Accessing Parents": absolute workdirs through site_config.
        parent_workdirs = [j.resolve_workdir(site_config.data_path) for j in self.job.parent_query()]
        self.job.data = {"parent_outputs": sorted(Path(w, "job.out").read_text() for w in parent_workdirs)}
        self.job.state = "PREPROCESSED"


class Staged(ApplicationDefinition):
    site = SITE
    command_template = "tr a-z A-Z < input.nw > result.txt"
    transfers = {
        "input_file": TransferSlot(required=True, direction=TransferDirection.stage_in, local_path="input.nw", description="Input Deck"),
        "result": TransferSlot(required=True, direction="out", local_path="result.txt", description="Result"),
    }


class VecNorm(ApplicationDefinition):
    site = SITE

    def run(self, vec: Any) -> float:
        return float(sum(x**2 for x in vec) ** 0.5)


def test_the_app_guides_hooks_run_as_documented(wf_site: Path, tmp_path: Path) -> None:
    for app in (MySimulation, Flaky, Listy, Child, Staged, VecNorm):
        app.sync()
    remote = tmp_path / "laptop"
    remote.mkdir()
    (remote / "input.dat").write_text("hello stage in\n")

    sim = MySimulation.submit(workdir="sim/good", data={"input_coords": [1, 2], "env_vars": {"foo": "bar"}})
    bad = MySimulation.submit(workdir="sim/bad", data={"input_coords": [], "env_vars": {"foo": "x"}})
    flaky = Flaky.submit(workdir="flaky")
    listy = Listy.submit(workdir="listy")
    child = Child.submit(workdir="child", parent_ids=[sim.id, listy.id])
    staged = Job.objects.create(workdir="ensemble/1", app_id="Staged", site_name=SITE,
                                transfers={"input_file": JobTransferItem(location_alias="laptop", path=str(remote / "input.dat")),
                                           "result": f"laptop:{remote / 'output.txt'}"})
    norm = VecNorm.submit(workdir="demo/norm", vec=[3, 4])
    jobs = [sim, bad, flaky, listy, child, staged, norm]
    batch = BatchJob.objects.create(site_id=norm.site_id, num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local",
                                    project="local")

    states: Dict[str, str] = {}
    for job in Job.objects.as_completed(jobs, timeout=180):
        states[job.workdir] = str(job.state)
    assert states == {"sim/good": "JOB_FINISHED", "sim/bad": "FAILED", "flaky": "FAILED", "listy": "JOB_FINISHED",
                      "child": "JOB_FINISHED", "ensemble/1": "JOB_FINISHED", "demo/norm": "JOB_FINISHED"}
    data = wf_site / "data"

    # preprocess wrote the input in the workdir; shell_preamble's f-string and environment_variables reached the run;
    # postprocess asked for one re-run, then kept the result in job.data.
    sim.refresh_from_db()
    assert sim.data == {"input_coords": [1, 2], "env_vars": {"foo": "bar"}, "result": 2}
    assert "coords [1, 2]\nHDF5_USE_FILE_LOCKING=FALSE FOO=bar mode=explore\n" in (data / "sim/good/job.out").read_text()
    runs = [e for e in EventLog.objects.filter(job_id=sim.id, to_state="RUNNING")]
    assert len(runs) == 2
    # The failed preprocess: no run, and its state_data is searchable in the event log.
    (failure,) = EventLog.objects.filter(job_id=bad.id, to_state="FAILED")
    assert failure.data == {"error": "Preproc got bad coordinates"}
    assert [e.job_id for e in EventLog.objects.filter(data={"error": "Preproc got bad coordinates"})] == [bad.id]
    assert not (data / "sim/bad/job.out").exists()
    # handle_error: retried while retry_count <= 3 (4 retries, 5 runs), then FAILED with the reason.
    flaky.refresh_from_db()
    assert flaky.data == {"retry_count": 4} and flaky.return_code == 3
    assert EventLog.objects.filter(job_id=flaky.id, to_state="RUN_ERROR").count() == 5
    assert EventLog.objects.filter(job_id=flaky.id, to_state="FAILED").first().data == {"reason": "Exceeded maximum retries"}  # type: ignore[union-attr]
    # shell_preamble as a list; the child saw both parents from its preprocess (output in balsam.log stays empty).
    assert (data / "listy/job.out").read_text() == "A=1 B=2\n"
    (follow,) = Job.objects.filter(workdir="listy-next")
    assert follow.parent_ids == [listy.id] and str(Job.objects.as_completed([follow], timeout=60).__next__().state) == "JOB_FINISHED"
    assert sorted((data / "child/job.out").read_text().splitlines()) == ["Parent workdir: listy", "Parent workdir: sim/good"]
    assert (data / "child/balsam.log").exists()
    child.refresh_from_db()
    assert child.data == {"parent_outputs": ["A=1 B=2\n", (data / "sim/good/job.out").read_text()]}
    # Transfer slots: staged in under the slot's local_path, result staged out to the remote path.
    assert (remote / "output.txt").read_text() == "HELLO STAGE IN\n"
    # run() as a future.
    assert norm.result() == 5.0

    # The monitoring guide's EventLog queries and balsam.analytics reports over this run.
    batch.refresh_from_db()
    ran = {e.job_id for e in EventLog.objects.filter(batch_job_id=batch.id, to_state="RUNNING")}
    assert ran >= {sim.id, flaky.id, listy.id, child.id, staged.id, norm.id} and bad.id not in ran
    assert {e.job_id for e in EventLog.objects.filter(scheduler_id=batch.scheduler_id, to_state="RUNNING")} == ran
    assert EventLog.objects.filter(job_id=[sim.id, bad.id], to_state="FAILED").count() == 1
    from balsam.analytics import available_nodes, throughput_report, utilization_report

    times, done_counts = throughput_report(EventLog.objects.filter(job_id=[j.id for j in jobs]), to_state="JOB_FINISHED")
    assert done_counts == [1, 2, 3, 4, 5] and times == sorted(times)
    times, util = utilization_report(EventLog.objects.filter(job_id=[j.id for j in jobs]), node_weighting=True)
    assert len(times) == len(util) and max(util) > 0 and min(util) >= 0
    times, node_counts = available_nodes(BatchJob.objects.filter(site_id=batch.site_id))
    assert max(node_counts) == 1

    out = balsam("job", "ls", "--site", SITE).stdout
    assert out.count("JOB_FINISHED") == 6 and out.count("FAILED") == 2
    apps = balsam("app", "ls", "--site=all").stdout
    assert "VecNorm" in apps and "MySimulation" in apps


# ---------------------------------------------------------------------------------- termination and timeouts
class SlowSim(ApplicationDefinition):
    site = SITE
    command_template = "echo started; sleep {{ seconds }}"

    def next_run_kwargs(self) -> Dict[str, Any]:
        return {"workdir": self.job.workdir + "-fast", "app_id": "SlowSim", "site_name": SITE, "parameters": {"seconds": 0},
                "tags": {"follow_up_of": str(self.job.id)}}

    def handle_timeout(self) -> None:
        # Sorry, not retrying slow runs:
        self.job.state = "FAILED"
        self.job.state_data = {"reason": "Job Timed out"}
        # Create another, faster run:
        Job.objects.create(**self.next_run_kwargs())


def test_terminating_a_batch_job_times_out_its_jobs_and_runs_handle_timeout(wf_site: Path) -> None:
    SlowSim.sync()
    slow = SlowSim.submit(workdir="slow", seconds=300)
    batch = BatchJob.objects.create(site_id=slow.site_id, num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local")
    deadline = time.monotonic() + 120
    while str(slow.state) != "RUNNING" or not batch.scheduler_id:
        assert time.monotonic() < deadline, f"the job did not start: {slow.state}, {batch.state}"
        time.sleep(0.2)
        slow.refresh_from_db()
        batch.refresh_from_db()

    assert BatchJob.objects.filter(scheduler_id=batch.scheduler_id).update(state="pending_deletion") == 1
    (slow,) = Job.objects.as_completed([slow], timeout=120)
    assert str(slow.state) == "FAILED"
    assert [e.to_state for e in EventLog.objects.filter(job_id=slow.id).order_by("timestamp")][-2:] == ["RUN_TIMEOUT", "FAILED"]
    follow_up = Job.objects.get(tags={"follow_up_of": str(slow.id)})
    assert follow_up.workdir == "slow-fast" and follow_up.get_parameters() == {"seconds": 0}
    deadline = time.monotonic() + 60
    while str(batch.state) != "finished":
        assert time.monotonic() < deadline, f"the BatchJob did not finish: {batch.state}"
        time.sleep(0.2)
        batch.refresh_from_db()
