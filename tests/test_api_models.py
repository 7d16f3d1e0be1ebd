"""BatchJob (policies, states, partitions), Site, EventLog filters, Session objects."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from balsam.api import BatchJob, EventLog, Job, Site, use_site
from balsam.exceptions import IllegalTransition, SiteNotFound, ValidationError
from tests.helpers import advance

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host through the agent's HTTP API."""


def _policies(store: Any) -> None:
    with store.write() as conn:
        conn.execute("""UPDATE site SET allowed_queues='{"debug":{"max_nodes":4,"max_wall_time_min":60,"max_queued_jobs":2},
            "prod":{"max_nodes":100,"max_wall_time_min":720,"max_queued_jobs":5}}', allowed_projects='["chem","bio"]',
            optional_batch_job_params='{"filesystems":"home"}'""")


def test_batch_job_defaults_on_a_local_site(site: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local")
    assert (bj.state, bj.queue, bj.project, bj.scheduler_id) == ("pending_submission", "local", "local", None)
    assert BatchJob(num_nodes=1, wall_time_min=5).queue is None  # filled from the site's only queue on save
    b2 = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    assert (b2.queue, b2.project) == ("local", "local")


@pytest.mark.parametrize("kwargs,message", [
    ({"queue": "nope", "project": "chem"}, "queue 'nope' is not allowed at site test-site"),
    ({"queue": "debug", "project": "chem", "num_nodes": 5}, "allows at most 4 nodes"),
    ({"queue": "debug", "project": "chem", "wall_time_min": 61}, "at most 60 minutes"),
    ({"queue": "debug", "project": "physics"}, "project 'physics' is not allowed"),
    ({"queue": "debug", "project": "chem", "optional_params": {"bogus": "1"}}, "unknown optional parameter 'bogus'"),
    ({"queue": "debug", "project": "chem", "job_mode": "parallel"}, "job_mode must be one of"),
    ({"queue": "debug", "project": "chem", "num_nodes": 3, "partitions": ["mpi:1", "serial:1"]}, "partitions add up to 2 nodes"),
    ({"queue": "debug"}, "a project is required"),
])
def test_batch_job_policies(site: Any, store: Any, kwargs: Any, message: str) -> None:
    _policies(store)
    args = dict({"num_nodes": 1, "wall_time_min": 30}, **kwargs)
    with pytest.raises(ValidationError, match=message):
        BatchJob.objects.create(**args)
    assert BatchJob.objects.count() == 0


def test_max_queued_jobs(site: Any, store: Any) -> None:
    _policies(store)
    for _ in range(2):
        BatchJob.objects.create(num_nodes=1, wall_time_min=5, queue="debug", project="bio")
    with pytest.raises(ValidationError, match="already has 2 batch jobs waiting"):
        BatchJob.objects.create(num_nodes=1, wall_time_min=5, queue="debug", project="bio")


def test_partitions_and_filters(site: Any, store: Any) -> None:
    _policies(store)
    bj = BatchJob.objects.create(num_nodes=8, wall_time_min=30, queue="prod", project="chem",
                                 partitions=["mpi:2:role=leader", "serial:6:role=worker,x=1"], filter_tags={"exp": "a"})
    assert bj.partitions == [{"job_mode": "mpi", "num_nodes": 2, "filter_tags": {"role": "leader"}},
                             {"job_mode": "serial", "num_nodes": 6, "filter_tags": {"role": "worker", "x": "1"}}]
    assert bj.partitions_to_cli_args() == "-p mpi:2:role=leader -p serial:6:role=worker,x=1"
    assert BatchJob.objects.filter(filter_tags={"exp": "a"}).count() == 1
    assert BatchJob.objects.filter(filter_tags={"exp": "b"}).count() == 0
    assert BatchJob.objects.filter(queue="prod", state=["pending_submission", "queued"]).count() == 1
    with pytest.raises(ValidationError, match="partition 'gpu:2'"):
        BatchJob(num_nodes=2, wall_time_min=5, partitions=["gpu:2"])


def test_batch_job_state_rules(site: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    bj.state = "pending_deletion"
    bj.save()
    bj.state = "running"
    with pytest.raises(IllegalTransition, match="cannot move from pending_deletion to running"):
        bj.save()
    bj.state = "finished"
    bj.end_time = dt.datetime.now(dt.timezone.utc)
    bj.save()
    assert BatchJob.objects.get(id=bj.id).state == "finished"
    active = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    bj.delete()
    assert [b.id for b in BatchJob.objects.all()] == [active.id]
    active.delete()  # never submitted: nothing exists at the scheduler, so it is simply gone
    assert BatchJob.objects.all().count() == 0
    with pytest.raises(ValidationError, match="does not exist"):
        active.delete()


def test_jobs_of_a_batch_job(site: Any, hello: Any) -> None:
    from balsam.api import Session

    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    job = hello.submit(workdir="a", say_hello_to="x")
    advance(job, "PREPROCESSED")
    session = Session.objects.create(batch_job_id=bj.id)
    session.acquire_jobs()
    assert [j.id for j in bj.jobs()] == [job.id]
    assert [e.job_id for e in EventLog.objects.filter(batch_job_id=bj.id)] == [job.id, job.id]


def test_event_log_filters(hello: Any) -> None:
    a = hello.submit(workdir="a", say_hello_to="x", tags={"exp": "1"})
    b = hello.submit(workdir="b", say_hello_to="x")
    t_mid = time.time()
    time.sleep(0.01)
    advance(a, "PREPROCESSED", "RUNNING")
    a.state = "RUN_ERROR"
    a.state_data = {"message": "OK: done!", "code": 7}
    a.save()
    assert EventLog.objects.filter(job_id=b.id).count() == 1
    assert [e.to_state for e in EventLog.objects.filter(tags={"exp": "1"}).order_by("id")] == [
        "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_ERROR"]
    assert EventLog.objects.filter(data={"message": "OK: done!"}).count() == 1
    assert EventLog.objects.filter(data=["code:7"]).count() == 1
    assert EventLog.objects.filter(from_state="RUNNING", to_state="RUN_ERROR").count() == 1
    assert EventLog.objects.filter(timestamp_after=t_mid).count() == 3
    assert EventLog.objects.filter(timestamp_before=t_mid).count() == 2
    newest = EventLog.objects.all()[0]
    assert newest.to_state == "RUN_ERROR"  # newest first by default
    with pytest.raises(ValidationError, match="EventLog is read-only: its from_state cannot be set"):
        newest.from_state = "CREATED"  # also an AttributeError, as Balsam 0.7 raised (test_compat_07_walk)
    newest.save()  # nothing changed, nothing to write: a no-op, as in Balsam 0.7
    assert EventLog.objects.all()[0].from_state == newest.from_state == "RUNNING"
    with pytest.raises(ValidationError, match="the EventLog is read-only: events are written by job state changes"):
        EventLog.objects.create(job_id=b.id, from_state="RUNNING", to_state="RUN_DONE")  # a TypeError about arguments before


def test_site_objects(site: Any, tmp_path: Path) -> None:
    sites = list(Site.objects.all())
    assert [(s.name, s.path) for s in sites] == [("test-site", site.path)]
    s = Site.objects.get(name="test-site")
    assert s.allowed_queues["local"]["max_nodes"] == 1 and s.hostname
    s.backfill_windows = {"debug": [{"num_nodes": 4, "wall_time_min": 30}]}
    s.save()
    assert Site.objects.get(id=s.id).backfill_windows == {"debug": [{"num_nodes": 4, "wall_time_min": 30}]}
    other = Site.objects.create(name="second", path=str(tmp_path / "second"))
    assert Site.objects.filter(path="second").count() == 1 and Site.objects.count() == 2
    other.delete()
    assert not (tmp_path / "second").exists()
    assert Site.objects.count() == 1


def test_queries_span_sites_unless_one_is_current(site: Any, hello: Any, tmp_path: Path) -> None:
    from balsam.api import ApplicationDefinition

    Site.objects.create(name="second", path=str(tmp_path / "second"))

    class Other(ApplicationDefinition):
        site = "second"
        command_template = "echo {{ x }}"

    hello.submit(workdir="one", say_hello_to="x")
    Other.submit(workdir="two", x=1)
    assert sorted(j.workdir for j in Job.objects.all()) == ["one", "two"]
    assert [j.workdir for j in Job.objects.filter(site_name="second")] == ["two"]
    assert Job.objects.filter(site_id=site.id).count() == 1
    assert [j.workdir for j in Job.objects.order_by("-workdir")[:1]] == ["two"]
    use_site("test-site")
    try:
        assert [j.workdir for j in Job.objects.all()] == ["one"]
    finally:
        use_site(None)
    with pytest.raises(SiteNotFound, match="no site 'third'"):
        Job.objects.filter(site_name="third").count()


@pytest.mark.parametrize("field,value", [("num_nodes", 10**20), ("num_nodes", 0), ("wall_time_min", float("inf")),
                                         ("filter_tags", {"k": ["not", "a", "string"]}), ("state", "exploded")])
def test_batch_job_updates_are_validated(site: Any, field: str, value: Any) -> None:
    """Every BatchJob write goes through one checked function (balsam.db.batch_jobs.update_batch_job)."""
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    setattr(bj, field, value)
    with pytest.raises(ValidationError, match=field.replace("state", "batch job state")) as info:
        bj.save()
    assert "\n" not in str(info.value)
    fresh = BatchJob.objects.get(id=bj.id)
    assert (fresh.num_nodes, fresh.wall_time_min, fresh.state) == (1, 5, "pending_submission")


def test_elastic_withdrawal_goes_through_the_state_table(site: Any) -> None:
    from balsam.db import batch_jobs as batch_db

    done = BatchJob.objects.create(num_nodes=1, wall_time_min=5)
    with site.store.write() as conn:
        batch_db.update_batch_job(conn, int(done.id), state="finished")
        assert not batch_db.update_batch_job(conn, int(done.id), state="pending_deletion", only_from=("pending_submission", "queued"))
    assert BatchJob.objects.get(id=done.id).state == "finished"
