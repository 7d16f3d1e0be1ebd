"""A fresh user's walk through Balsam 0.7's documented CLI, on the site's home host and from another host (each test
runs twice: ``BACKENDS``), one test per documented example that differed.

What differed and is now fixed:
- ``balsam job create -w test/1 -a demo.Hello -p name="world!"`` (0.7's own ``job create --help`` example names the
  app by its class path ``module.ClassName``) said there is no app 'demo.Hello'; the Python API already took it.
- ``balsam job modify -t experiment=foo -s RESTART_READY`` (0.7 selects by ``-i`` or ``-t`` and changes without a
  prompt) refused to change several jobs without ``-y`` when run from a script.
- ``balsam site ls`` on another host that sees the site's directory (a second login node) listed a site whose agent
  runs and answers as "not reachable from here", with no Active mark or job count.
- The API guide: "the new Balsam Python API was written to preserve a subset of the structure and syntax" of the
  Django ORM of Balsam 0.x. Its lookups ``state__in=[...]``, ``tags__experiment="foo"``, ``last_update__gte=t``,
  ``id__in`` were unknown filters; they are Balsam's own filters now, and ``__gte``/``__lte`` include the time given
  (to the microsecond the API shows), so ``last_update__gte=job.last_update`` finds ``job``.
- The API guide's update, ``job.state = "RESTART_READY"; job.save()``, worked on a job the agent had not yet
  preprocessed (STAGED_IN) and was an illegal transition once it had (PREPROCESSED): the same script passed or failed
  with the agent's timing. Both states wait for a launcher; the change is allowed from either (``balsam job reset``
  still says a PREPROCESSED job has not run).
- ``Site.objects.filter(last_refresh_after=hour_ago)`` ignored the time for a site reached from another host. Through
  the relay (a laptop with no site), ``Site.objects`` found none of the user's sites and ``balsam site ls`` marked an
  online site "Active no" (tests/test_relay_sync.py's laptop story).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, List

import pytest

from balsam.api import BatchJob, EventLog, Job, Site
from balsam.exceptions import BalsamError, ValidationError
from tests.cli_helpers import fails, ok

BACKENDS = ("local", "http")


def _states(jobs: List[Any]) -> List[str]:
    return [str(Job.objects.get(id=j.id).state) for j in jobs]


def test_job_create_names_the_app_by_its_class_path_as_0_7_help_shows(site: Any, hello: Any) -> None:
    out = ok("job", "create", "-w", "test/1", "-a", "demo.Hello", "-p", "say_hello_to=world!", "--site", "test-site").stdout
    assert "Created job" in out and "Hello in test/1" in out
    job = Job.objects.get(workdir="test/1")
    assert job.get_parameters() == {"say_hello_to": "world!"} and job.app_id == hello.__app_id__
    # An unknown class path is the usual one-line error naming what there is.
    assert "no app 'demo.Nope' here (apps: Hello)" in fails("job", "create", "-w", "test/2", "-a", "demo.Nope", "--site", "test-site")


def test_job_modify_by_ids_or_tags_changes_without_a_prompt_as_in_0_7(site: Any, hello: Any) -> None:
    """Jobs chosen as 0.7 chooses them (``-i``, ``-t``) change at once, as 0.7's ``job modify`` did; each change still
    goes through the state machine. A wider filter of ours (``-w``, ``--from-state``, ``--all``) still asks first."""
    foo = [hello.submit(f"foo/{i}", say_hello_to="x", tags={"experiment": "foo"}) for i in range(3)]
    bar = hello.submit("bar/0", say_hello_to="x", tags={"experiment": "bar"})
    out = ok("job", "modify", "-t", "experiment=foo", "-s", "RESTART_READY", "--site", "test-site").stdout
    assert out.strip() == "Set 3 jobs to RESTART_READY"
    assert _states(foo) == ["RESTART_READY"] * 3 and _states([bar]) == ["STAGED_IN"]
    ok("job", "modify", "-i", foo[0].id, "-i", foo[1].id, "-s", "FAILED", "--site", "test-site")
    assert _states(foo) == ["FAILED", "FAILED", "RESTART_READY"]
    assert "not changing 4 jobs without confirmation" in fails("job", "modify", "--all", "-s", "RESTART_READY", "--site", "test-site")
    assert "not changing 3 jobs without confirmation" in fails("job", "modify", "-w", "foo/", "-s", "RESTART_READY", "--site", "test-site")
    # A refused transition changes nothing, also when chosen by tags.
    assert "cannot move from" in fails("job", "modify", "-t", "experiment=foo", "-s", "RUN_DONE", "--site", "test-site", code=2)
    assert _states(foo) == ["FAILED", "FAILED", "RESTART_READY"]


def test_site_ls_shows_a_running_agent_from_another_host(site: Any, hello: Any, backend: str, tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    """The site guide: "The Active column indicates whether Sites have recently communicated ... and are most likely
    up and running". From another host that sees the site's directory, the agent is asked over HTTP; a site of
    another host whose agent does not run says so."""
    hello.submit("a/1", say_hello_to="x")
    hello.submit("a/2", say_hello_to="x")
    rows = [line.split() for line in ok("site", "ls").stdout.splitlines()]
    assert rows[0] == ["ID", "Name", "Host", "Active", "Jobs", "Status", "Path"]
    (row,) = [r for r in rows if r[1] == "test-site"]
    if backend == "local":  # the fixture runs no agent on the home host
        assert row[3:6] == ["no", "2", "ok"]
        return
    assert row[3:5] == ["yes", "2"] and " ".join(row[5:-1]) == f"agent running on {site.host}"
    # A second site made on a third host, whose agent is not running: seen, but its agent does not answer.
    from balsam.site import init_site

    monkeypatch.setenv("BALSAM_HOSTNAME", "login-3")
    init_site(tmp_path / "idle-site", name="idle-site")
    monkeypatch.setenv("BALSAM_HOSTNAME", "login-2")
    (idle,) = [r.split() for r in ok("site", "ls").stdout.splitlines() if " idle-site " in r]
    assert idle[3] == "no" and "on login-3: its agent does not answer from here" in " ".join(idle)


def test_the_django_lookups_of_balsam_0x_are_balsams_own_filters(site: Any, hello: Any) -> None:
    foo = [hello.submit(f"foo/{i}", say_hello_to="x", tags={"experiment": "foo", "run": str(i)}) for i in range(3)]
    bar = hello.submit("bar/0", say_hello_to="x", tags={"experiment": "bar"})
    Job.objects.filter(id=foo[0].id).update(state="PREPROCESSED")

    def ids(query: Any) -> List[int]:
        return sorted(int(j.id) for j in query)

    assert ids(Job.objects.filter(state__in=["PREPROCESSED"])) == [foo[0].id]
    assert ids(Job.objects.filter(tags__experiment="foo")) == ids(Job.objects.filter(tags={"experiment": "foo"})) == sorted(j.id for j in foo)
    assert ids(Job.objects.filter(tags__experiment="foo", tags__run="2")) == [foo[2].id]
    assert ids(Job.objects.filter(tags={"experiment": "foo"}).filter(tags__run="1")) == [foo[1].id]
    assert ids(Job.objects.filter(id__in=[foo[1].id, bar.id])) == sorted([foo[1].id, bar.id])
    assert Job.objects.filter(workdir__exact="bar/0").count() == 1

    first = Job.objects.get(id=foo[0].id)  # updated last: its last_update is the latest
    assert ids(Job.objects.filter(last_update__gte=first.last_update)) == [first.id]  # the shown time includes itself
    assert Job.objects.filter(last_update__gt=first.last_update).count() == 0
    assert first.id in ids(Job.objects.filter(last_update__lte=first.last_update))
    assert first.id not in ids(Job.objects.filter(last_update__lt=first.last_update))
    hour_ago = dt.datetime.utcnow() - dt.timedelta(hours=1)  # the API guide's naive UTC time
    assert Job.objects.filter(last_update__gte=hour_ago).count() == 4

    events = EventLog.objects.filter(timestamp__gte=hour_ago, to_state__in=["PREPROCESSED"], job_id__in=[first.id])
    assert [(e.from_state, e.to_state) for e in events] == [("STAGED_IN", "PREPROCESSED")]
    BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="mpi", queue="local", project="local", site_id=site.id)
    assert BatchJob.objects.filter(state__in=["pending_submission"]).count() == 1
    assert Site.objects.filter(name__in=["test-site"]).count() == 1
    with pytest.raises(ValidationError, match="unknown filter 'state__bogus' for Job"):
        Job.objects.filter(state__bogus="x")


def test_restart_ready_as_the_api_guide_sets_it_whether_or_not_the_agent_preprocessed(site: Any, hello: Any) -> None:
    early = hello.submit("early", say_hello_to="x")
    late = hello.submit("late", say_hello_to="x")
    Job.objects.filter(id=late.id).update(state="PREPROCESSED")  # what the agent does within a second
    for job in (Job.objects.get(id=early.id), Job.objects.get(id=late.id)):
        job.state = "RESTART_READY"
        job.save()
    assert _states([early, late]) == ["RESTART_READY", "RESTART_READY"]
    (event,) = EventLog.objects.filter(job_id=late.id, to_state="RESTART_READY")
    assert event.from_state == "PREPROCESSED"
    other = hello.submit("other", say_hello_to="x")
    Job.objects.filter(id=other.id).update(state="PREPROCESSED")
    err = fails("job", "reset", other.id, "--site", "test-site", code=2)
    assert "cannot move from PREPROCESSED to RESTART_READY with reset: it has not run yet" in err


def test_sites_by_last_refresh_as_the_api_guide_queries_them(site: Any) -> None:
    """``Site.objects.filter(last_refresh_after=hour_ago)`` (the API guide's first query). From another host the
    filter was ignored: a site refreshed long ago was "recently used"."""
    (me,) = Site.objects.all()
    assert me.last_refresh is not None
    recent = me.last_refresh - dt.timedelta(minutes=1)
    assert [s.name for s in Site.objects.filter(last_refresh_after=recent)] == ["test-site"]
    assert Site.objects.filter(last_refresh_after=me.last_refresh + dt.timedelta(minutes=1)).count() == 0
    assert Site.objects.filter(last_refresh__gte=me.last_refresh).count() == 1  # the time shown includes itself
    assert Site.objects.filter(last_refresh__lt=me.last_refresh).count() == 0


def test_0_7s_own_api_tests_typed_fields_and_the_read_only_event_log(site: Any, hello: Any) -> None:
    """Balsam 0.7's tests/api/test_api.py: ``job.workdir.as_posix()``, ``child.parent_ids == {parent.id}``,
    ``transfer.remote_path.as_posix()``, ``Job.objects.create("test/run1", app_id=...)`` (workdir positional),
    ``job._state`` ("creating", "dirty", "clean"), and the EventLog refusing writes with an AttributeError
    (``EventLog.objects.create``: "has no attribute 'create'"; setting a field: "EventLog is read-only") while saving
    an unchanged event is a no-op. Here workdir was plain text (no ``as_posix``), parent_ids a list unequal to the
    set, create() took no positional argument, and the EventLog's refusals were only ValidationErrors."""
    from balsam.exceptions import ReadOnlyError

    job = Job.objects.create("test/run1", app_id=hello.__app_id__, parameters={"say_hello_to": "x"})
    assert job.workdir.as_posix() == "test/run1" and job.workdir == "test/run1" and job.workdir == Path("test/run1")
    assert job.workdir.name == "run1" and job.workdir / "job.out" == Path("test/run1/job.out")
    assert site.path / "data" / job.workdir == site.path / "data" / "test" / "run1"
    assert {j.workdir.as_posix() for j in Job.objects.filter(workdir__contains="test/")} == {"test/run1"}
    child = Job("test/child", app_id=hello.__app_id__, parameters={"say_hello_to": "x"}, parent_ids=[job.id])
    assert child._state == "creating"
    child.save()
    assert child._state == "clean" and child.parent_ids == {job.id} and Job.objects.get(id=child.id).parent_ids == {job.id}
    assert child.parent_ids == [job.id]  # still a list, as stored and sent
    child.num_nodes = 2
    assert child._state == "dirty"
    child.save()
    assert child._state == "clean" and Job.objects.get(id=child.id).num_nodes == 2

    with pytest.raises(AttributeError, match="has no attribute 'create'"):
        EventLog.objects.create(job_id=job.id, from_state="RUNNING", to_state="RUN_DONE")
    log = EventLog.objects.first()
    assert log is not None
    before = log.from_state
    with pytest.raises(AttributeError, match="EventLog is read-only") as refused:
        log.from_state = "RUN_DONE"
    assert isinstance(refused.value, ReadOnlyError) and isinstance(refused.value, ValidationError)
    log.save()  # nothing to write
    assert EventLog.objects.first() == log and log.from_state == before != "RUN_DONE"


def test_sessions_as_0_7s_api_tests_drive_them(site: Any, hello: Any) -> None:
    """0.7's TestSessions: a lease on a BatchJob acquires the runnable jobs, ``app_ids`` given as a set (from another
    host that was a TypeError: a set is not JSON), tick, and a deleted session's jobs are acquired again."""
    from balsam.api import Session

    jobs = Job.objects.bulk_create([Job(f"test/{i}", app_id=hello.__app_id__, parameters={"say_hello_to": "x"}) for i in range(3)])
    for job in jobs:
        job.state = "PREPROCESSED"
    Job.objects.bulk_update(jobs)
    batch_job = BatchJob.objects.create(site_id=site.id, project="local", queue="local", num_nodes=1, wall_time_min=30, job_mode="mpi")
    before = dt.datetime.utcnow()
    sess = Session.objects.create(batch_job_id=batch_job.id, site_id=site.id)
    assert sess.heartbeat > before - dt.timedelta(seconds=1)
    acquired = sess.acquire_jobs(max_wall_time_min=60, max_nodes_per_job=8, max_num_jobs=8, app_ids={hello.__app_id__})
    assert sorted(j.id for j in acquired) == sorted(j.id for j in jobs) and all(j.batch_job_id == batch_job.id for j in acquired)
    assert sorted(j.id for j in Job.objects.filter(batch_job_id=batch_job.id)) == sorted(j.id for j in acquired)
    sess.tick()
    sess.delete()
    assert Session.objects.all().count() == 0
    again = Session.objects.create(batch_job_id=batch_job.id, site_id=site.id)
    assert len(again.acquire_jobs(max_wall_time_min=60, max_nodes_per_job=8, max_num_jobs=8)) == 3
    again.delete()


def test_0_7s_module_paths_and_the_apps_class_path(site: Any, hello: Any) -> None:
    """0.7's tests and hooks import ``balsam.schemas`` (``from balsam.schemas import TransferItemState``,
    ``from balsam.schemas.batchjob import BatchJobState``: no such module here before; ``JobState.is_valid`` too),
    and its site integration
    test finds the app by ``App.objects.get(class_path="hello.Hello")`` (an unknown filter before)."""
    from balsam.api import App, JobState, TransferItemState
    from balsam.schemas import JobMode
    from balsam.schemas import JobState as SchemaJobState
    from balsam.schemas import TransferItemState as SchemaTransferItemState
    from balsam.schemas.batchjob import BatchJobState
    from balsam.schemas.job import JobTransferItem

    assert SchemaJobState is JobState and SchemaTransferItemState is TransferItemState
    assert JobState.is_valid("RUNNING") and JobState.is_valid(JobState.job_finished) and not JobState.is_valid("NOPE")
    assert (str(JobMode.mpi), str(BatchJobState.pending_deletion), JobTransferItem(location_alias="a", path="/b").path) == (
        "mpi", "pending_deletion", "/b")
    app = App.objects.get(class_path="hello.Hello")
    assert app.id == hello.__app_id__ and App.objects.filter(class_path=["x.Nope", "Hello"]).count() == 1
    job = Job.objects.create(Path("bar/0"), app_id=app.id, parameters={"say_hello_to": "x"}, node_packing_count=2)
    assert job.state == "STAGED_IN" and job.resolve_workdir(site.path / "data").joinpath("job.out") == site.path / "data/bar/0/job.out"


def test_a_deleted_site_has_no_id_as_0_7s_site_tests_check(site: Any, tmp_path: Path, backend: str) -> None:
    if backend == "http":  # removing a site's directory is its home host's business (a clear refusal elsewhere)
        with pytest.raises(BalsamError, match="home host"):
            Site.objects.get(name="test-site").delete()
        return
    temp = Site.objects.create(name="cooley", path=str(tmp_path / "projects" / "bar"))
    assert temp.id is not None and temp.path.as_posix().endswith("projects/bar") and len(Site.objects.all()) == 2
    temp.delete()
    assert temp.id is None and [s.name for s in Site.objects.all()] == ["test-site"]
