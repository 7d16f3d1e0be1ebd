"""Hooks run in the job's workdir with their output in balsam.log there (Balsam 0.7's documented behaviour).

The user guide's postprocess reads ``out.hdf`` relative to the working directory, and a preprocess writes its
input file the same way; both must work as written. The end-to-end test runs the real agent, local
scheduler and launcher.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from balsam.api import ApplicationDefinition, BatchJob, Job
from balsam.services.processing import ProcessingService
from balsam.settings import ProcessingSettings, SessionSettings
from tests.helpers import advance, end_allocations


class Simulation(ApplicationDefinition):
    """Writes out.hdf from the input deck its preprocess wrote."""

    site = "test-site"
    command_template = "cat input.deck > out.hdf && test {{ energy }} -gt 0"

    def preprocess(self) -> None:
        with open("input.deck", "w") as deck:
            deck.write(f"energy {self.job.parameters['energy']}\n")
        print("wrote input.deck")
        self.job.state = "PREPROCESSED"

    def postprocess(self) -> None:
        import os

        with open("out.hdf") as f:
            self.job.data = {"result": f.read().split()[1], "cwd": os.getcwd()}
        print("read out.hdf")
        self.job.state = "POSTPROCESSED"

    def handle_timeout(self) -> None:
        import sys

        print("timed out; retrying", file=sys.stderr)
        self.job.state = "RESTART_READY"


@pytest.fixture
def processing(site: Any) -> Any:
    service = ProcessingService(site, ProcessingSettings(num_workers=2), SessionSettings(), host=site.host)
    yield service
    service.cleanup()


def test_hooks_see_the_workdir_and_log_to_balsam_log(processing: Any, site: Any) -> None:
    job = Simulation.submit(workdir="sims/a", energy=7)
    processing.run_cycle()
    workdir = site.path / "data" / "sims" / "a"
    assert (workdir / "input.deck").read_text() == "energy 7\n"
    assert not (site.path / "input.deck").exists()
    (workdir / "out.hdf").write_text("energy 7\n")  # what the run writes
    advance(job, "RUNNING", "RUN_DONE")
    processing.run_cycle()
    job.refresh_from_db()
    assert str(job.state) == "JOB_FINISHED"
    assert job.data == {"result": "7", "cwd": str(workdir)}
    log = (workdir / "balsam.log").read_text()
    assert "wrote input.deck" in log and "read out.hdf" in log
    assert "Simulation.preprocess" in log and "Simulation.postprocess" in log


def test_stderr_and_a_missing_workdir(processing: Any, site: Any) -> None:
    job = Simulation.submit(workdir="never/made", energy=1)
    processing.run_cycle()
    advance(job, "RUNNING", "RUN_TIMEOUT")
    processing.run_cycle()
    assert str(Job.objects.get(id=job.id).state) == "RESTART_READY"
    assert "timed out; retrying" in (site.path / "data" / "never" / "made" / "balsam.log").read_text()


class Dies(ApplicationDefinition):
    site = "test-site"
    command_template = "true"

    def preprocess(self) -> None:
        import os

        os._exit(3)


def test_a_hook_that_kills_its_worker_fails_only_its_job(processing: Any, site: Any) -> None:
    dead = Dies.submit(workdir="dies")
    processing.run_cycle()
    assert str(Job.objects.get(id=dead.id).state) == "FAILED"
    assert "died" in dead.history()[-1].data["message"]
    fine = Simulation.submit(workdir="after", energy=2)
    processing.run_cycle()
    assert str(Job.objects.get(id=fine.id).state) == "PREPROCESSED"


def _balsam(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, check=True, timeout=120)


def test_documented_postprocess_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "test-site"
    _balsam("site", "init", str(root), "-n", "test-site", "--preset", "local")
    settings = root / "settings.yml"
    settings.write_text(settings.read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 3"))
    _balsam("site", "start", "--site", str(root))
    try:
        job = Simulation.submit(workdir="e2e", energy=42)
        BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="mpi", queue="local", project="local")
        done, not_done = Job.objects.wait([job], timeout=120)
        assert done and not not_done, f"job is {Job.objects.get(id=job.id).state}: {[e.data for e in job.history()]}"
        assert str(job.state) == "JOB_FINISHED", [e.data for e in job.history()]
        assert job.data["result"] == "42"
        assert (root / "data" / "e2e" / "out.hdf").read_text() == "energy 42\n"
        assert "read out.hdf" in (root / "data" / "e2e" / "balsam.log").read_text()
    finally:
        try:
            end_allocations("test-site")
        finally:
            subprocess.run([sys.executable, "-m", "balsam", "site", "stop", "--site", str(root)], capture_output=True, timeout=120)
