"""The agent daemon (start, status, refusal, stop, crash and restart), the file cleaner, and transfers."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from balsam.api import ApplicationDefinition, Job, TransferItem
from balsam.exceptions import ServiceError
from balsam.services.agent import agent_status, start_agent, stop_agent
from balsam.services.file_cleaner import FileCleanerService, clean_workdir
from balsam.services.transfers import TransferService, parse_location
from balsam.settings import FileCleanerSettings, TransferSettings
from tests.helpers import advance


def wait_for(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_agent_lifecycle_and_crash_restart(site: Any, hello: Any) -> None:
    pid = start_agent(site.path)
    try:
        with pytest.raises(ServiceError, match="already running"):
            start_agent(site.path)
        job = hello.submit(workdir="a", say_hello_to="x")
        wait_for(lambda: str(Job.objects.get(id=job.id).state) == "PREPROCESSED")  # processing ran
        status = agent_status(site.path)
        assert status["running"] and status["pid"] == pid
        assert {"processing", "scheduler", "file_cleaner"} <= set(status["services"])
        os.kill(pid, signal.SIGKILL)  # a crash: the PID file stays, but nobody holds it
        wait_for(lambda: not agent_status(site.path)["running"])
        pid2 = start_agent(site.path)
        assert pid2 != pid
        later = hello.submit(workdir="b", say_hello_to="x")
        wait_for(lambda: str(Job.objects.get(id=later.id).state) == "PREPROCESSED")
    finally:
        stopped = stop_agent(site.path)
    assert stopped is not None and not agent_status(site.path)["running"]
    assert stop_agent(site.path) is None


def test_agent_refuses_malformed_settings_with_the_key(site: Any) -> None:
    (site.path / "settings.yml").write_text("launcher:\n  idle_ttl: 3\n")
    with pytest.raises(ServiceError, match="unknown setting launcher.idle_ttl"):
        start_agent(site.path)


class Cleaned(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    cleanup_files = ["*.tmp", "scratch"]


def test_file_cleaner_removes_globs_of_finished_jobs_only(site: Any) -> None:
    done = Cleaned.submit(workdir="done")
    running = Cleaned.submit(workdir="running")
    for job in (done, running):
        wd = site.layout.data / job.workdir
        (wd / "scratch").mkdir(parents=True)
        (wd / "a.tmp").write_text("x")
        (wd / "keep.out").write_text("x")
    advance(done, "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED")
    advance(running, "PREPROCESSED", "RUNNING")
    FileCleanerService(site, FileCleanerSettings()).run_cycle()
    assert sorted(p.name for p in (site.layout.data / "done").iterdir()) == ["keep.out"]
    assert sorted(p.name for p in (site.layout.data / "running").iterdir()) == ["a.tmp", "keep.out", "scratch"]
    assert Job.objects.get(id=done.id).pending_file_cleanup is False


def test_cleaning_never_leaves_the_workdir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "job").mkdir(parents=True)
    outside = tmp_path / "precious.tmp"
    outside.write_text("keep me")
    (data / "job" / "link.tmp").symlink_to(outside)
    assert clean_workdir(data, "job", ["../../*.tmp", "*.tmp"]) == 1  # only the link itself goes
    assert outside.read_text() == "keep me"
    assert clean_workdir(data, "../", ["*"]) == 0


class Staged(ApplicationDefinition):
    site = "test-site"
    command_template = "true"
    transfers = {
        "deck": {"required": True, "direction": "in", "local_path": "input/deck.txt"},
        "results": {"required": False, "direction": "out", "local_path": "results", "recursive": True},
    }


@pytest.mark.parametrize("scheme", ["cp://", "rsync://"])
def test_transfers_stage_in_and_out_for_real(site: Any, tmp_path: Path, scheme: str) -> None:
    if scheme.startswith("rsync") and shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (.ci/run installs it)")
    remote = tmp_path / "remote"
    (remote / "in").mkdir(parents=True)
    (remote / "in" / "deck.txt").write_text("deck contents")
    with site.store.write() as conn:
        conn.execute("UPDATE site SET transfer_locations=?", (f'{{"store":"{scheme}"}}',))
    service = TransferService(site, TransferSettings(transfer_locations={"store": scheme}, batch_size=10))
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{remote}/in/deck.txt", "results": f"store:{remote}/out"})
    assert str(job.state) == "READY"
    wait_for(lambda: (service.run_cycle(), str(Job.objects.get(id=job.id).state))[1] == "STAGED_IN")
    assert (site.layout.data / "t" / "input" / "deck.txt").read_text() == "deck contents"
    advance(Job.objects.get(id=job.id), "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED")
    (site.layout.data / "t" / "results").mkdir()
    (site.layout.data / "t" / "results" / "r.txt").write_text("result")
    wait_for(lambda: (service.run_cycle(), str(Job.objects.get(id=job.id).state))[1] == "JOB_FINISHED")
    assert (remote / "out" / "r.txt").read_text() == "result"


def test_a_failed_transfer_fails_the_job_with_the_error(site: Any, tmp_path: Path) -> None:
    with site.store.write() as conn:
        conn.execute("""UPDATE site SET transfer_locations='{"store":"cp://"}'""")
    service = TransferService(site, TransferSettings(transfer_locations={"store": "cp://"}))
    Staged.sync()
    job = Staged.submit(workdir="t", transfers={"deck": f"store:{tmp_path}/missing.txt"})
    wait_for(lambda: (service.run_cycle(), str(Job.objects.get(id=job.id).state))[1] == "FAILED")
    message = Job.objects.get(id=job.id).history()[-1].data["message"]
    assert "stage-in transfer" in message and "missing.txt" in message
    assert TransferItem.objects.get(job_id=job.id).state == "error"


def test_transfer_location_forms() -> None:
    assert parse_location("a", "local") == ("cp", "")
    assert parse_location("a", "rsync://me@dtn.example.org") == ("rsync", "me@dtn.example.org")
    from balsam.exceptions import ConfigError

    with pytest.raises(ConfigError, match="not one of"):
        parse_location("a", "globus://1234")


def test_stuck_jobs_say_why(site: Any, hello: Any) -> None:
    from balsam.api import BatchJob
    from balsam.services.diagnose import explain

    def why(job: Any) -> str:
        return " | ".join(explain(site.store, site.path, job.id))

    parent = hello.submit(workdir="p", say_hello_to="x")
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    assert why(child) == f"waits for parent job {parent.id} (STAGED_IN)"
    assert "the site agent is not running" in why(parent)
    advance(parent, "PREPROCESSED")
    assert "no BatchJob is queued or running" in why(parent)
    BatchJob.objects.create(num_nodes=1, wall_time_min=5, filter_tags={"exp": "other"})
    assert "only runs jobs tagged {'exp': 'other'}" in why(parent)
    BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    assert "waits to be submitted, but the site agent is not running" in why(parent)
    advance(parent, "RUNNING", "RUN_ERROR", "FAILED")
    assert why(parent).startswith("FAILED")
