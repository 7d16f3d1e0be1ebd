"""The agent's view through the API, on the home host and from another host through the agent: ``Job.why()``
(why a job waits: its parents, a BatchJob that cannot take it, the agent not running) and
``BatchJob.preview_submission()`` (the batch script and submit line, nothing written; away from the home host the
agent renders a draft, with the id the site's DB would give it)."""

from __future__ import annotations

from typing import Any

import pytest

from balsam.exceptions import ValidationError
from tests.helpers import advance

BACKENDS = ("local", "http")


def test_why_a_job_waits(site: Any, hello: Any) -> None:
    from balsam.api import BatchJob, Job

    parent = hello.submit(workdir="p", say_hello_to="x")
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    assert Job.objects.get(id=child.id).why() == [f"waits for parent job {parent.id} (STAGED_IN)"]
    assert any("the site agent is not running" in r for r in parent.why())
    # the command works from any directory (it said 'balsam site start', which outside the site finds none)
    assert any(r.endswith(f"start it with 'balsam site start --site {site.path}'") for r in parent.why()), parent.why()
    advance(parent, "PREPROCESSED")
    assert "no BatchJob is queued or running" in " ".join(parent.why())
    BatchJob.objects.create(num_nodes=1, wall_time_min=5, filter_tags={"exp": "other"})
    assert "only runs jobs tagged {'exp': 'other'}" in " ".join(parent.why())
    BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    assert "waits to be submitted, but the site agent is not running" in " ".join(parent.why())


def test_preview_of_a_saved_batch_job_writes_nothing(site: Any, backend: str) -> None:
    from balsam.api import BatchJob

    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=7, job_mode="serial", filter_tags={"exp": "a b"})
    preview = BatchJob.objects.get(id=bj.id).preview_submission()
    assert preview.batch_job_id == bj.id
    assert preview.script_path == site.path / "qsubmit" / f"qlaunch{bj.id}.sh"
    assert preview.command == ["bash", str(preview.script_path)]
    assert preview.script.startswith("#!/bin/bash") and f"--batch-job-id {bj.id} -j serial -t 7 --tag 'exp=a b'" in preview.script
    assert not list((site.path / "qsubmit").glob("*.sh")) and BatchJob.objects.get(id=bj.id).state == "pending_submission"


def test_preview_of_a_draft_gives_the_id_it_would_get_on_either_host(site: Any, backend: str) -> None:
    """From another host the agent renders the draft (POST /v1/batch-jobs/preview): the same script, its queue and
    project filled in as its creation would, the id the site's DB would give it; nothing written or created."""
    from balsam.api import BatchJob

    draft = BatchJob(num_nodes=1, wall_time_min=5, job_mode="serial", filter_tags={"exp": "a b"})
    preview = draft.preview_submission()
    assert BatchJob.objects.count() == 0 and not list((site.path / "qsubmit").glob("*.sh"))
    assert preview.script_path == site.path / "qsubmit" / f"qlaunch{preview.batch_job_id}.sh"
    assert preview.command == ["bash", str(preview.script_path)]
    assert f"--batch-job-id {preview.batch_job_id} -j serial -t 5 --tag 'exp=a b'" in preview.script
    assert BatchJob.objects.create(num_nodes=1, wall_time_min=5).id == preview.batch_job_id
    with pytest.raises(ValidationError, match="allows at most 1 nodes"):  # checked against the site's queues first
        BatchJob(num_nodes=2, wall_time_min=5).preview_submission()


def test_a_job_failed_by_its_parent_says_to_reset_the_parent_first(site: Any, hello: Any) -> None:
    """A child failed because its parent was killed was told to reset itself, which fails it again at once (the
    parent is still killed): it now says to reset the parent first, then itself; a job that failed on its own does not."""
    from balsam.api import Job

    parent = hello.submit(workdir="p", say_hello_to="x")
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    parent.kill()
    why = Job.objects.get(id=child.id).why()
    assert why[0].startswith("FAILED") and str(parent.id) in why[0]
    assert why[1] == (f"to run it again, reset its failed parent first ('balsam job reset {parent.id}'), then this job "
                      f"('balsam job reset {child.id}')")
    assert Job.objects.get(id=parent.id).why()[-1] == f"reset it to run again: 'balsam job reset {parent.id}'"
