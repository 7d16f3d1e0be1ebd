"""The processing service: the bulk default path, user hooks, and hooks that go wrong."""

from __future__ import annotations

from typing import Any

import pytest

from balsam.api import ApplicationDefinition, Job
from balsam.services.processing import ProcessingService
from balsam.settings import ProcessingSettings, SessionSettings
from tests.helpers import advance


@pytest.fixture
def processing(site: Any) -> Any:
    service = ProcessingService(site, ProcessingSettings(num_workers=2), SessionSettings(), host=site.host)
    yield service
    service.cleanup()


def states(*jobs: Any) -> list:
    return [str(Job.objects.get(id=j.id).state) for j in jobs]


def test_default_transitions_in_bulk(processing: Any, hello: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"j{i}", say_hello_to="x", save=False) for i in range(300)])
    processing.run_cycle()
    assert Job.objects.filter(state="PREPROCESSED").count() == 300
    a, b, c = jobs[:3]
    advance(a, "RUNNING", "RUN_DONE")
    advance(b, "RUNNING", "RUN_ERROR")
    advance(c, "RUNNING", "RUN_TIMEOUT")
    processing.run_cycle()
    assert states(a, b, c) == ["JOB_FINISHED", "FAILED", "RESTART_READY"]
    assert processing.backlog == 0


def test_a_flood_larger_than_a_batch_is_processed_in_one_cycle(processing: Any, hello: Any, monkeypatch: Any) -> None:
    """Bulk transitions commit BULK_BATCH jobs at a time (a flood's first jobs become runnable without waiting for
    the rest), and one cycle still takes the whole flood, the last partial batch included."""
    from balsam.services import processing as module

    monkeypatch.setattr(module, "BULK_BATCH", 100)
    Job.objects.bulk_create([hello.submit(workdir=f"f{i}", say_hello_to="x", save=False) for i in range(250)])
    processing.run_cycle()
    assert Job.objects.filter(state="PREPROCESSED").count() == 250
    assert processing.backlog == 0


class Retrying(ApplicationDefinition):
    """Retries a failed run twice, and spawns a follow-up job when it succeeds."""

    site = "test-site"
    command_template = "false"

    def handle_error(self) -> None:
        retries = self.job.data.get("retries", 0)
        if retries < 2:
            self.job.data["retries"] = retries + 1
            self.job.state = "RESTART_READY"
        else:
            self.job.state = "FAILED"
            self.job.state_data = {"message": "gave up after 2 retries"}

    def postprocess(self) -> None:
        Retrying.submit(workdir=self.job.workdir + "-next", tags={"spawned_by": str(self.job.id)})
        self.job.state = "POSTPROCESSED"


def test_user_hooks_run_and_their_changes_are_saved(processing: Any, site: Any) -> None:
    job = Retrying.submit(workdir="r")
    processing.run_cycle()  # no preprocess override: bulk path
    for attempt in (1, 2):
        advance(job, "RUNNING", "RUN_ERROR")
        processing.run_cycle()
        job.refresh_from_db()
        assert (str(job.state), job.data) == ("RESTART_READY", {"retries": attempt})
    advance(job, "RUNNING", "RUN_ERROR")
    processing.run_cycle()
    job.refresh_from_db()
    assert str(job.state) == "FAILED" and job.history()[-1].data == {"message": "gave up after 2 retries"}
    ok = Retrying.submit(workdir="ok")
    processing.run_cycle()
    advance(ok, "RUNNING", "RUN_DONE")
    processing.run_cycle()
    assert states(ok) == ["JOB_FINISHED"]
    assert Job.objects.filter(tags={"spawned_by": str(ok.id)}).count() == 1


class Diagnosed(ApplicationDefinition):
    """Each failed run asks for the job that collects its diagnostics (data['vary']: with other parameters each time),
    then runs again; the third failure is final."""

    site = "test-site"
    command_template = "false"

    def handle_error(self) -> None:
        runs = self.job.data.get("runs", 0) + 1
        who = f"run {runs}" if self.job.data.get("vary") else "diagnostics"
        Job(workdir=self.job.workdir + "/diag", app_id="Hello", parameters={"say_hello_to": who}).save()
        self.job.data = {**self.job.data, "runs": runs}
        self.job.state = "RESTART_READY" if runs < 3 else "FAILED"


def test_a_hook_run_again_takes_the_job_it_made_before_instead_of_failing(processing: Any, hello: Any) -> None:
    """handle_error runs after each failed run and asks for the same diagnostics job each time: the job it made the first
    time is that job (it failed the second time with 'workdir ... is already used'); one asked for with other
    parameters is still refused, saying how it differs."""
    job = Diagnosed.submit(workdir="d")
    processing.run_cycle()
    for runs, state in ((1, "RESTART_READY"), (2, "RESTART_READY"), (3, "FAILED")):
        advance(job, "RUNNING", "RUN_ERROR")
        processing.run_cycle()
        job.refresh_from_db()
        assert (str(job.state), job.data["runs"]) == (state, runs), job.history()[-1].data
    (diag,) = Job.objects.filter(workdir="d/diag")
    assert diag.parameters == {"say_hello_to": "diagnostics"}
    other = Diagnosed.submit(workdir="v", data={"vary": True})
    processing.run_cycle()
    advance(other, "RUNNING", "RUN_ERROR")
    processing.run_cycle()
    advance(other, "RUNNING", "RUN_ERROR")
    processing.run_cycle()
    assert states(other) == ["FAILED"]
    message = other.history()[-1].data["message"]
    assert "workdir 'v/diag' is already used" in message and "has other parameters than asked" in message
    assert Job.objects.filter(workdir="v/diag").count() == 1


class Broken(ApplicationDefinition):
    site = "test-site"
    command_template = "true {{ mode }}"

    def preprocess(self) -> None:
        mode = self.job.parameters["mode"]
        if mode == "raise":
            raise RuntimeError("cannot read the input deck")
        if mode == "illegal":
            self.job.state = "JOB_FINISHED"
        # mode == "forget": leaves the state unchanged


@pytest.mark.parametrize("mode,message", [
    ("raise", "preprocess hook raised RuntimeError: cannot read the input deck"),
    ("illegal", "set an illegal state STAGED_IN -> JOB_FINISHED"),
    ("forget", "left the job in STAGED_IN; a hook must set job.state"),
])
def test_a_hook_that_goes_wrong_fails_its_job_with_a_message(processing: Any, site: Any, mode: str, message: str) -> None:
    job = Broken.submit(workdir=mode, mode=mode)
    processing.run_cycle()
    assert states(job) == ["FAILED"]
    assert message in job.history()[-1].data["message"]
    assert site.store.execute("SELECT session_id FROM job WHERE id=?", (job.id,))[0][0] is None


def test_an_app_whose_code_no_longer_loads_fails_its_waiting_jobs(processing: Any, site: Any, hello: Any) -> None:
    job = hello.submit(workdir="x", say_hello_to="x")
    with site.store.write() as conn:
        conn.execute("UPDATE app SET source_code='raise ImportError(\"no module named numpy\")', version=version+1")
    processing.run_cycle()
    assert states(job) == ["FAILED"]
    assert "could not be loaded" in job.history()[-1].data["message"]
