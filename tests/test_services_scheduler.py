"""The scheduler service with the real local adapter: submit, poll, finish, cancel, refuse."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from balsam.api import BatchJob, Job, Session
from balsam.platforms.schedulers import get_scheduler
from balsam.platforms.schedulers.base import output_path_for
from balsam.services.scheduler import SchedulerService
from balsam.settings import SchedulerSettings
from tests.helpers import advance

TEMPLATE = """#!/bin/bash
echo "batch job {{ batch_job_id }}: {{ job_mode }} on {{ num_nodes }} node(s) for {{ wall_time_min }} min"
sleep "${BALSAM_TEST_SLEEP:-0.2}"
"""


@pytest.fixture
def scheduler(site: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    (site.path / "job-template.sh").write_text(TEMPLATE)
    adapter = get_scheduler("local", state_dir=site.layout.state / "local-jobs", options={"kill_grace_s": "1"})
    return SchedulerService(site, SchedulerSettings(sync_period_s=0.1), adapter, balsam_command="balsam")


def until(cond: Callable[[], bool], service: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        service.run_cycle()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_submit_run_finish_with_times(scheduler: Any, site: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="serial")
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state in ("queued", "running") and bj.scheduler_id
    script = site.layout.qsubmit / f"qlaunch{bj.id}.sh"
    assert "serial on 1 node(s) for 5 min" in script.read_text()
    assert bj.status_info["submit_script"] == str(script)
    until(lambda: BatchJob.objects.get(id=bj.id).state == "finished", scheduler)
    bj.refresh_from_db()
    assert bj.start_time is not None and bj.end_time is not None and bj.end_time >= bj.start_time
    assert bj.status_info["scheduler_state"] == "finished"
    assert f"batch job {bj.id}: serial" in output_path_for(script).read_text()
    assert site.store.execute("SELECT queued_jobs FROM site")[0][0] == "{}"


def test_pending_deletion_cancels_and_times_out_the_launchers_jobs(scheduler: Any, site: Any, hello: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_TEST_SLEEP", "60")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    until(lambda: BatchJob.objects.get(id=bj.id).state == "running", scheduler)
    job = hello.submit(workdir="w", say_hello_to="x")
    advance(job, "PREPROCESSED")
    (got,) = Session.objects.create(batch_job_id=bj.id).acquire_jobs()
    advance(got, "RUNNING")
    bj.state = "pending_deletion"
    bj.save()
    until(lambda: BatchJob.objects.get(id=bj.id).state == "finished", scheduler)
    assert BatchJob.objects.get(id=bj.id).status_info["scheduler_state"] == "cancelled"
    assert str(Job.objects.get(id=job.id).state) == "RUN_TIMEOUT"
    assert "ended while the job was running" in Job.objects.get(id=job.id).history()[-1].data["message"]


def test_deleting_before_submission_needs_no_scheduler(scheduler: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    bj.state = "pending_deletion"
    bj.save()
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state == "finished" and bj.scheduler_id is None


def test_a_refused_submission_is_submit_failed_with_the_reason(scheduler: Any, site: Any) -> None:
    (site.path / "job-template.sh").write_text("#!/bin/bash\necho {{ no_such_variable }}\n")
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    scheduler.run_cycle()
    bj.refresh_from_db()
    assert bj.state == "submit_failed"
    assert "no_such_variable" in bj.status_info["error"]
