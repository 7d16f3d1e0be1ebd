"""Balsam 0.x's dag functions on Job: current(), spawn_child, clone, kill, add_parent / add_dependency."""

from __future__ import annotations

from typing import Any

import pytest

from balsam.api import Job, add_dependency
from balsam.exceptions import ValidationError
from tests.helpers import advance


def test_current_job_from_the_launcher_environment(site: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    monkeypatch.delenv("BALSAM_JOB_ID", raising=False)
    with pytest.raises(ValidationError, match="inside a job"):
        Job.current()
    monkeypatch.setenv("BALSAM_JOB_ID", str(job.id))
    assert Job.current().id == job.id


def test_spawn_child_waits_for_the_parent(site: Any, hello: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x", tags={"exp": "1"})
    kid = job.spawn_child(hello, "a/kid", say_hello_to="kid", job_options={"num_nodes": 2})
    assert kid.parent_ids == [job.id] and str(kid.state) == "AWAITING_PARENTS"
    assert kid.tags == {"exp": "1"} and kid.num_nodes == 2 and kid.parameters == {"say_hello_to": "kid"}
    advance(job, "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
    kid.refresh_from_db()
    assert str(kid.state) == "STAGED_IN"


def test_clone_and_kill(site: Any, hello: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x", num_nodes=3)
    twin = job.clone(parameters={"say_hello_to": "y"})
    assert twin.workdir == "a.clone1" and twin.num_nodes == 3 and twin.parameters == {"say_hello_to": "y"}
    assert job.clone().workdir == "a.clone2"
    with pytest.raises(ValidationError, match="not a job field"):
        job.clone(colour="red")
    kid = job.spawn_child(hello, "a/kid", say_hello_to="kid")
    job.kill()
    kid.refresh_from_db()
    assert str(job.state) == "USER_KILLED" and str(kid.state) == "FAILED"


def test_add_dependency(site: Any, hello: Any) -> None:
    a = hello.submit(workdir="a", say_hello_to="x")
    b = hello.submit(workdir="b", say_hello_to="x")
    add_dependency(a, b)
    b.refresh_from_db()
    assert b.parent_ids == [a.id] and str(b.state) == "AWAITING_PARENTS"
    with pytest.raises(ValidationError, match="cycle"):
        add_dependency(b.id, a.id)
