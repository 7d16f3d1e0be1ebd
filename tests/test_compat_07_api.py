"""Balsam 0.7's Python API user guide (docs/user-guide/api.md, jobs, batchjob, transfer pages) and the ALCF
workshop scripts, run as written against a fresh local site: every snippet is here as a user would type it.

What differed and is now fixed: ``from balsam.api import models`` (``models.App.objects.get(...)``), the typed
specs 0.7 exported (``AppParameter``, ``TransferSlot``, ``TransferDirection``, ``JobTransferItem``, ``JobMode``,
``BatchJobPartition``, ``TransferItemState``), ``Site.objects.get("name")`` with the name positional, and
``JobState``'s 0.7 member names (``JobState.job_finished``).
"""

from __future__ import annotations

import concurrent.futures
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from balsam.api import (
    App,
    ApplicationDefinition,
    AppParameter,
    BatchJob,
    BatchJobPartition,
    EventLog,
    Job,
    JobMode,
    JobState,
    JobTransferItem,
    Site,
    TransferDirection,
    TransferItem,
    TransferItemState,
    TransferSlot,
)
from balsam.exceptions import BalsamError
from balsam.schemas import DONE_STATES, RUNNABLE_STATES, AllowedQueue
from tests.launcher_support import run, runnable

BACKENDS = ("local", "http")  # each test on the home host, and from another host through the agent's HTTP API


class SimulationX(ApplicationDefinition):
    """A shell app without parameters (the batchjob guide's ``SimulationX``)."""

    site = "test-site"
    command_template = "echo sim"


class MySimulation(ApplicationDefinition):
    """Some description of the app goes here"""

    site = "test-site"
    environment_variables = {"HDF5_USE_FILE_LOCKING": "FALSE"}
    command_template = "echo --mode {{ mode }} -inp {{ input_filename }}"
    parameters = {
        "input_filename": {"required": True},
        "mode": {"required": False, "default": "explore", "help": "The simulation mode (default: explore)"},
    }
    cleanup_files = ["*.hdf", "*.imm", "*.h5"]


class TypedSimulation(ApplicationDefinition):
    """The same app written with 0.7's typed specs."""

    site = "test-site"
    command_template = "cat input.nw --mode {{ mode }}"
    parameters = {"mode": AppParameter(required=False, default="explore", help="The simulation mode")}
    transfers = {
        "input_file": TransferSlot(required=True, direction=TransferDirection.stage_in, local_path="input.nw",
                                   description="Input Deck"),
        "result": TransferSlot(required=False, direction="out", local_path="job.out", description="stdout"),
    }


def _sync_all() -> None:
    for app in (SimulationX, MySimulation, TypedSimulation):
        app.sync()


def test_the_three_ways_of_creating_and_updating_and_deleting(hello: Any) -> None:
    # Create in memory, then persist; create and persist at once; bulk-create.
    j = Job(workdir="test/1", app_id="Hello", parameters={"say_hello_to": "world"})
    assert j.id is None
    j.save()
    assert j.id is not None and j.state == "STAGED_IN" and j.state == JobState.staged_in
    j2 = Job.objects.create(workdir="test/2", app_id="Hello", parameters={"say_hello_to": "again"})
    assert j2.id is not None
    specs = [dict(workdir=f"bulk/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}) for i in range(3)]
    jobs = [Job(**kwargs) for kwargs in specs]
    Job.objects.bulk_create(jobs)
    for job in jobs:
        assert job.id is not None

    # Updating: save() after changing a field; refresh_from_db(); query update; bulk_update.
    j.num_nodes = 2
    j.save()
    Job.objects.filter(id=[j.id]).update(state="FAILED")
    j.refresh_from_db()
    assert j.num_nodes == 2 and j.state == "FAILED"
    n = Job.objects.filter(state="FAILED").update(num_nodes=1, state="RESTART_READY")
    j.refresh_from_db()
    assert n == 1 and (j.num_nodes, j.state) == (1, "RESTART_READY")
    for job in jobs:
        job.wall_time_min = 5 + int(job.workdir.split("/")[1])
    Job.objects.bulk_update(jobs)
    assert [x.wall_time_min for x in Job.objects.filter(workdir__contains="bulk").order_by("workdir")] == [5, 6, 7]

    # Deleting one job, then a query.
    j2.delete()
    assert j2.id is None
    Job.objects.filter(id=[j.id]).update(state="FAILED")
    assert Job.objects.filter(state="FAILED").delete() == 1
    assert Job.objects.count() == 3


def test_querying_as_the_api_guide_shows(hello: Any) -> None:
    for i in range(4):
        hello.submit(workdir=f"foo/{i}", say_hello_to=str(i), tags={"experiment": "foo"})
    hello.submit(workdir="h2o", say_hello_to="water", tags={"system": "H2O"})
    hello.submit(workdir="bar", say_hello_to="bar", tags={"experiment": "bar"})
    Job.objects.filter(workdir__contains="foo/1").update(state="FAILED")

    # Chained filters equal one filter.
    all_jobs = Job.objects.all()
    foo_jobs = all_jobs.filter(tags={"experiment": "foo"})
    failed_foo_jobs = foo_jobs.filter(state="FAILED")
    assert [x.workdir for x in failed_foo_jobs] == ["foo/1"]
    assert [x.workdir for x in Job.objects.filter(tags={"experiment": "foo"}, state="FAILED")] == ["foo/1"]

    # Order and slice; [0] and first(); count(); get() and its two errors.
    recent = Job.objects.filter(tags={"experiment": "foo"}).order_by("-last_update")[0:1000]
    assert len(recent) == 4
    assert [x.workdir for x in Job.objects.order_by("-id")[1:3]] == ["h2o", "foo/3"]
    assert Job.objects.filter(state="STAGED_IN")[0].id == Job.objects.filter(state="STAGED_IN").first().id  # type: ignore[union-attr]
    assert Job.objects.filter(state="RUNNING").first() is None
    with pytest.raises(IndexError):
        Job.objects.filter(state="RUNNING")[0]
    counts = {state: Job.objects.filter(state=state).count() for state in ["RUNNING", "JOB_FINISHED", "STAGED_IN", "FAILED"]}
    assert counts == {"RUNNING": 0, "JOB_FINISHED": 0, "STAGED_IN": 5, "FAILED": 1}
    assert Job.objects.get(tags={"system": "H2O"}).workdir == "h2o"
    with pytest.raises(Job.DoesNotExist):
        Job.objects.get(tags={"system": "CO2"})
    with pytest.raises(Job.MultipleObjectsReturned):
        Job.objects.get(tags={"experiment": "foo"})

    # Lazy and cached: a query fetches once, len() and bool() evaluate it.
    failed_jobs = Job.objects.filter(state="FAILED")
    first = [x.id for x in failed_jobs]
    Job.objects.filter(workdir__contains="foo/2").update(state="FAILED")
    assert [x.id for x in failed_jobs] == first  # the cached result
    assert len(Job.objects.filter(state="FAILED")) == 2 and bool(failed_jobs) and not Job.objects.filter(state="RUNNING")

    # The other Job filters of the guide: ids, states, state__ne, workdir__contains, last_update_after (naive UTC).
    hour_ago = datetime.utcnow() - timedelta(hours=1)
    assert Job.objects.filter(last_update_after=hour_ago).count() == 6
    assert Job.objects.filter(last_update_before=hour_ago).count() == 0
    assert Job.objects.filter(state__ne="FAILED").count() == 4
    assert Job.objects.filter(state=["FAILED", "STAGED_IN"]).count() == 6
    assert Job.objects.filter(id=first + [Job.objects.get(workdir__contains="h2o").id]).count() == 2
    assert Job.objects.filter(id=[]).count() == 0
    with pytest.raises(BalsamError, match="negative"):
        Job.objects.all()[-1]


def test_sites_and_models_as_the_workshop_scripts_use_them(site: Any, hello: Any) -> None:
    # 9_complete_example.py / 4_create_multiple_jobs_with_deps.py: Site.objects.get(name) positionally.
    s = Site.objects.get("test-site")
    assert s.id == site.id and isinstance(s.path, Path) and Site.objects.get(s.id).name == "test-site"
    hour_ago = datetime.utcnow() - timedelta(hours=1)
    assert [x.name for x in Site.objects.filter(last_refresh_after=hour_ago)] == ["test-site"]
    assert (s.allowed_projects, list(s.allowed_queues)) == (["local"], ["local"])

    # 6_analytics.py: from balsam.api import models; models.App.objects.get(site_name=..., name=...).
    from balsam.api import models

    app = models.App.objects.get(site_name="test-site", name="Hello")
    assert app is not None and isinstance(app, App) and app.description == "Says hello."
    hello.submit(workdir="demo/a", say_hello_to="a", tags={"workflow": "hello_deps"})
    jl = Job.objects.filter(app_id=app.id, tags={"workflow": "hello_deps"})
    events = EventLog.objects.filter(job_id=[job.id for job in jl])
    assert [(e.from_state, e.to_state) for e in events] == [("CREATED", "STAGED_IN")]
    from balsam.analytics import throughput_report

    times, counts = throughput_report(events, to_state="STAGED_IN")  # from another host too, through the agent
    t0 = min(times)
    assert counts == [1] and [(t - t0).total_seconds() / 60 for t in times] == [0.0]


def test_job_forms_of_the_workshop_and_batchjob_guide(site: Any, hello: Any) -> None:
    _sync_all()
    # 3_create_multiple_jobs.py: Job(site_name=..., app_id="Hello", ...) in a list, then bulk_create.
    jobs = [Job(site_name="test-site", app_id="Hello", workdir=f"demo/hello_multi{n}", parameters={"say_hello_to": f"world {n}!"},
                tags={"workflow": "hello_multi"}, node_packing_count=8, gpus_per_rank=1) for n in range(8)]
    jobs = Job.objects.bulk_create(jobs)
    assert len(jobs) == 8 and all(j.id for j in jobs) and {j.node_packing_count for j in jobs} == {8}

    # 4_create_jobs_dependencies.py: a chain through parent_ids.
    job = Job(site_name="test-site", app_id="Hello", workdir="demo/hello_deps0", parameters={"say_hello_to": "world 0!"},
              tags={"workflow": "hello_deps"})
    job.save()
    chain = [job]
    for n in range(1, 4):
        job = Job(site_name="test-site", app_id="Hello", workdir=f"demo/hello_deps{n}", parameters={"say_hello_to": f"world {n}!"},
                  tags={"workflow": "hello_deps"}, parent_ids=[job.id])
        job.save()
        chain.append(job)
    assert [str(j.state) for j in chain] == ["STAGED_IN"] + ["AWAITING_PARENTS"] * 3
    assert [p.id for p in chain[2].parent_query()] == [chain[1].id]
    assert [c.id for c in Job.objects.filter(parent_id=[chain[0].id])] == [chain[1].id]

    # 9_complete_example.py: Job.objects.create with resources and launch_params; the batchjob guide's create by
    # site_name and app name with no parameters.
    created = Job.objects.create(app_id="Hello", site_name="test-site", workdir="affinity/0",
                                 parameters={"say_hello_to": "gpu"}, gpus_per_rank=1, threads_per_rank=16, threads_per_core=2,
                                 ranks_per_node=4, node_packing_count=1, num_nodes=2, launch_params={"cpu_bind": "depth"},
                                 tags={"test": "affinity"})
    assert (created.num_nodes, created.launch_params) == (2, {"cpu_bind": "depth"})
    sim = Job.objects.create(site_name="test-site", app_id="SimulationX", workdir="test-runs/foo/1")
    assert sim.site_id == site.id and sim.app_id == SimulationX.__app_id__

    # App by class and by id; parameters with a default are filled in.
    by_class = Job(workdir="sim/1", app_id=MySimulation, parameters={"input_filename": "in.dat"})
    by_id = Job(workdir="sim/2", app_id=MySimulation.__app_id__, parameters={"input_filename": "in.dat", "mode": "exploit"})
    Job.objects.bulk_create([by_class, by_id])
    assert MySimulation.render_command({"input_filename": "in.dat"}) == "echo --mode explore -inp in.dat"
    with pytest.raises(BalsamError, match="input_filename"):
        Job.objects.create(workdir="sim/3", app_id="MySimulation")


def test_batch_jobs_as_the_guide_creates_and_queries_them(site: Any, hello: Any, backend: str) -> None:
    hello_job = hello.submit(workdir="demo/hello", say_hello_to="world")
    bj = BatchJob.objects.create(site_id=hello_job.site_id, num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local",
                                 project="local")
    assert bj.state == "pending_submission" and bj.scheduler_id is None
    # validate() of a BatchJob read back (the client-side check before changing one) read its fields as None and
    # refused it ("num_nodes must be an integer ..., got None").
    loaded = BatchJob.objects.get(id=bj.id)
    loaded.validate()
    loaded.num_nodes = 4
    if backend == "local":  # from another host the agent checks it when it is saved
        with pytest.raises(BalsamError, match="queue 'local' allows at most 1 nodes, asked for 4"):
            loaded.validate()
    # 0.7's client-side validate(allowed_queues, allowed_projects, optional_batch_job_params), from any host; its
    # AllowedQueue named the wall time limit max_walltime. It was a TypeError (validate() took no policies).
    site_row = Site.objects.get(id=site.id)
    with pytest.raises(ValueError, match="queue 'local' allows at most 1 nodes, asked for 4"):
        loaded.validate(site_row.allowed_queues, site_row.allowed_projects, site_row.optional_batch_job_params)
    loaded.validate({"local": {"max_nodes": 8, "max_walltime": 60, "max_queued_jobs": 5}}, ["local"], {})
    loaded.validate({"local": AllowedQueue(max_nodes=8, max_walltime=60, max_queued_jobs=5)}, ["local"], {})
    with pytest.raises(ValueError, match="allows at most 2 nodes"):
        loaded.validate({"local": AllowedQueue(max_nodes=2, max_walltime=60, max_queued_jobs=5)}, ["local"], {})
    for queues, projects, extras, why in [
        ({"local": {"max_nodes": 8, "max_walltime": 5}}, ["local"], {}, "allows at most 5 minutes, asked for 10"),
        ({"debug": {"max_nodes": 8}}, ["local"], {}, "queue 'local' is not allowed by the policies given"),
        ({"local": {"max_nodes": 8}}, ["datascience"], {}, "project 'local' is not allowed by the policies given"),
    ]:
        with pytest.raises(ValueError, match=why):
            loaded.validate(queues, projects, extras)
    loaded.optional_params = {"mig_count": "3"}
    with pytest.raises(ValueError, match="unknown optional parameter 'mig_count'"):
        loaded.validate({"local": {"max_nodes": 8}}, ["local"], {})
    loaded.validate({"local": {"max_nodes": 8}}, ["local"], {"mig_count": "1"})
    tagged = BatchJob.objects.create(site_id=site.id, num_nodes=1, wall_time_min=10, job_mode=JobMode.serial, queue="local",
                                     project="local", filter_tags={"system": "H2O", "scale": "4"})
    parted = BatchJob.objects.create(site_id=site.id, num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local",
                                     partitions=[BatchJobPartition(job_mode=JobMode.mpi, num_nodes=1, filter_tags={"role": "leader"})])
    assert tagged.job_mode == "serial" and parted.partitions_to_cli_args() == "-p mpi:1:role=leader"
    assert [b.id for b in BatchJob.objects.filter(filter_tags={"system": "H2O"})] == [tagged.id]

    queued_nodes = sum(batch_job.num_nodes for batch_job in BatchJob.objects.filter(site_id=site.id, state="queued"))
    pending = BatchJob.objects.filter(site_id=site.id, state="pending_submission")
    assert queued_nodes == 0 and pending.count() == 3

    # optional_params are checked against settings.yml's optional_batch_job_params.
    with pytest.raises(BalsamError, match="mig_count"):
        BatchJob.objects.create(site_id=site.id, num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local",
                                optional_params={"mig_count": "3"})

    # "cleanly terminate an allocation": a query update to pending_deletion.
    assert BatchJob.objects.filter(scheduler_id=1234).update(state="pending_deletion") == 0
    BatchJob.objects.filter(site_id=site.id, state="pending_submission").update(state="pending_deletion")
    assert BatchJob.objects.filter(site_id=site.id, state="pending_deletion").count() == 3


def test_a_sites_queues_windows_and_queued_jobs_read_as_07s_models(site: Any) -> None:
    """0.7's Site held AllowedQueue, BackfillWindow and SchedulerJobStatus models: ``q.max_nodes``, ``q.max_walltime``,
    ``w.num_nodes``. Here they were plain dicts (AttributeError); they are dicts that also read so."""
    from balsam.db.site_row import update_site_row

    with site.store.write() as conn:  # what the agent's scheduler service records from the batch system each cycle
        update_site_row(conn, {"backfill_windows": {"debug": [{"num_nodes": 4, "wall_time_min": 30}]},
                               "queued_jobs": {"4242": {"state": "queued", "queue": "local", "num_nodes": 1}}})
    row = Site.objects.get(id=site.id)
    (name, queue), = row.allowed_queues.items()
    assert (name, queue.max_nodes, queue.max_walltime, queue.max_queued_jobs) == ("local", 1, 1440, 10)
    assert queue == {"max_nodes": 1, "max_wall_time_min": 1440, "max_queued_jobs": 10}  # still the dict it was
    (window,) = row.backfill_windows["debug"]
    assert (window.num_nodes, window.wall_time_min) == (4, 30)
    assert row.queued_jobs["4242"].state == "queued"
    with pytest.raises(AttributeError, match="no 'max_cores' here"):
        queue.max_cores  # noqa: B018


def test_the_state_sets_balsam_schemas_exported() -> None:
    assert RUNNABLE_STATES == {JobState.PREPROCESSED, JobState.RESTART_READY}
    assert {JobState.JOB_FINISHED, JobState.FAILED} <= DONE_STATES and JobState.RUNNING not in DONE_STATES


def test_typed_specs_and_transfer_items(site: Any) -> None:
    (site.path / "settings.yml").write_text((site.path / "settings.yml").read_text() + "transfers:\n  transfer_locations:\n    laptop: local\n")
    from tests.cli_helpers import ok

    ok("site", "sync", "--site", "test-site", env={"BALSAM_HOSTNAME": site.host})  # on the site's home host
    TypedSimulation.sync()
    assert TypedSimulation.parameter_spec()["mode"] == {"required": False, "help": "The simulation mode", "default": "explore"}
    job = Job.objects.create(workdir="ensemble/1", app_id="TypedSimulation",
                             transfers={"input_file": JobTransferItem(location_alias="laptop", path="/path/to/input.dat"),
                                        "result": "laptop:/path/to/output.json"})
    assert job.state == "READY"  # waiting for its stage-in
    for item in TransferItem.objects.filter(direction="in", state="pending"):
        assert (item.job_id, item.remote_path, item.local_path) == (job.id, "/path/to/input.dat", "input.nw") and not item.task_id
        assert item.remote_path.as_posix() == "/path/to/input.dat"  # 0.7's test_create_transfers_shortcut: a Path there
        assert item.local_path == Path("input.nw") and item.local_path.name == "input.nw"
    assert TransferItem.objects.filter(state=TransferItemState.awaiting_job).count() == 1
    assert str(TransferDirection.stage_out) == "out" and JobState.job_finished == "JOB_FINISHED"
    assert [s.name for s in JobState][:2] == ["CREATED", "AWAITING_PARENTS"]  # the aliases add no states


def test_event_log_as_the_monitoring_scripts_read_it(hello: Any, site: Any) -> None:
    jobs = [hello.submit(workdir=f"m/{i}", say_hello_to=str(i), tags={"workflow": "hello_multi"}) for i in range(2)]
    runnable(site.store, jobs)
    yesterday = datetime.utcnow() - timedelta(days=1)
    events = list(EventLog.objects.filter(timestamp_after=yesterday))
    assert len(events) == 4 and [e.timestamp for e in events] == sorted((e.timestamp for e in events), reverse=True)
    for evt in EventLog.objects.filter(tags={"workflow": "hello_multi"}):
        assert evt.job_id in {j.id for j in jobs} and isinstance(evt.timestamp, datetime)
        assert (evt.from_state, evt.to_state) in {("CREATED", "STAGED_IN"), ("STAGED_IN", "PREPROCESSED")}
    assert EventLog.objects.filter(to_state="PREPROCESSED", job_id=jobs[0].id).count() == 1
    assert EventLog.objects.filter(from_state="CREATED").order_by("timestamp").count() == 2
    assert EventLog.objects.filter(timestamp_before=yesterday).count() == 0


def test_futures_without_a_launcher(site: Any, adder: Any) -> None:
    job = adder.submit("test/add", x=1, y=2)
    with pytest.raises(Job.NoResult):
        job.result_nowait()
    assert job.done() is False
    with pytest.raises(concurrent.futures.TimeoutError):
        job.result(timeout=0.2)
    with pytest.raises(concurrent.futures.TimeoutError):
        list(Job.objects.as_completed([job], timeout=0.2))
    done, not_done = Job.objects.wait([job], timeout=0.2, poll_interval=0.1, return_when="FIRST_COMPLETED")
    assert (done, [j.id for j in not_done]) == ([], [job.id])


def test_the_jobs_guides_examples(site: Any, hello: Any, adder: Any) -> None:
    # "At a minimum": app_id or app_name and site_path; the CLI-equivalent Job(...).save(); create(); bulk_create.
    job = Job(app_name="Hello", site_path=str(site.path), workdir="test/1", parameters={"say_hello_to": "world!"})
    job.save()
    assert job.site_id == site.id
    Job.objects.create(app_id=hello.__app_id__, workdir="test/2", parameters={"say_hello_to": "x"},
                       tags={"experiment": "foo", "system": "H2O", "run": "5"}, data={"retry_count": 0, "input_coords": [0, 1]})
    jobs = Job.objects.bulk_create([Job(app_id=hello.__app_id__, workdir=f"test/{n}", parameters={"say_hello_to": f"world {n}!"})
                                    for n in range(3, 10)])
    assert len(jobs) == 7

    # Filtering: Site.objects.get(name=..., path=fragment); single ids; parameters; slices; return_code loops.
    theta_site = Site.objects.get(name="test-site", path="test-site")
    foo_jobs = Job.objects.filter(site_id=theta_site.id, tags={"experiment": "foo"})
    assert [j.workdir for j in foo_jobs] == ["test/2"] and [j.workdir for j in foo_jobs.filter(state="FAILED")] == []
    assert Job.objects.filter(id=job.id).count() == 1 and Job.objects.get(id=job.id).workdir == "test/1"
    assert [j.workdir for j in Job.objects.filter(parameters={"say_hello_to": "world 4!"})] == ["test/4"]
    assert len(Job.objects.all()[5:15]) == 4
    child = hello.submit(workdir="child", say_hello_to="c", parent_ids=[job.id])
    assert [j.id for j in Job.objects.filter(parent_id=job.id)] == [child.id]

    # data: assign a merged dict, then save.
    job2 = Job.objects.get(tags={"experiment": "foo"}, workdir__contains="test/2")
    dat = job2.data
    job2.data = {**dat, "retry_count": dat["retry_count"] + 1}
    job2.save()
    assert Job.objects.get(id=job2.id).data == {"retry_count": 1, "input_coords": [0, 1]}

    # "for job in failed: if job.return_code == 1: ... job.state = 'RESTART_READY'; job.save()" after a real run.
    class Exit(ApplicationDefinition):
        site = "test-site"
        command_template = "exit {{ code }}"

    Exit.sync()
    runs = [Exit.submit(workdir=f"production-X/{code}", code=code) for code in (1, 2)]
    runnable(site.store, runs)
    assert run(site, "mpi") == 0
    from balsam.analytics import available_nodes, throughput_report, utilization_report

    events = EventLog.objects.filter(job_id=[r.id for r in runs])
    assert throughput_report(events, to_state="RUN_ERROR")[1] == [1, 2]
    times, busy = utilization_report(events, node_weighting=True)
    assert len(times) == 4 and max(busy) >= 1 and busy[-1] == 0
    assert available_nodes(BatchJob.objects.all()) == ([], [])  # no BatchJob started
    Job.objects.filter(state="RUN_ERROR").update(state="FAILED")  # what the default handle_error does at the agent
    failed = Job.objects.filter(workdir__contains="production-X", state="FAILED")
    for j in failed:
        if j.return_code == 1:
            j.num_nodes = 16
            j.state = "RESTART_READY"
            j.save()
    assert [(j.workdir, str(j.state), j.num_nodes) for j in Job.objects.filter(workdir__contains="production-X").order_by("id")] == [
        ("production-X/1", "RESTART_READY", 16), ("production-X/2", "FAILED", 1)]

    # Resolving the workdir, three ways.
    s = Site.objects.get(id=site.id)
    assert s.path / "data" / job.workdir == job.resolve_workdir(s.path / "data") == site.path / "data" / "test/1"
    # Deleting: one job, and a query.
    jobs[2].tags = {"run": "H2O"}
    jobs[2].save()
    Job.objects.filter(id=[jobs[2].id]).update(state="FAILED")
    assert Job.objects.filter(state="FAILED", tags={"run": "H2O"}).delete() == 1
    child.delete()
    assert child.id is None
    # Futures: wait() with the guide's arguments.
    add = adder.submit("test/123", x=3, y=7)
    wait_result = Job.objects.wait([add], return_when="FIRST_COMPLETED", timeout=0.2, poll_interval=10)
    assert (len(wait_result.done), len(wait_result.not_done)) == (0, 1)


def test_the_app_guides_definitions(site: Any) -> None:
    # site as a name, an id, or a Site object; submit() is sync + Job(...).save(); save=False for bulk creation.
    class Sleeper(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep {{ sleeptime }} && echo goodbye"

    job = Sleeper.submit(workdir="test/sleep_3", sleeptime=3)
    same = Job(workdir="test/sleep_3b", app_id=Sleeper, parameters={"sleeptime": 3})
    same.save()
    assert job.app_id == same.app_id == Sleeper.__app_id__ and job.get_parameters() == same.get_parameters() == {"sleeptime": 3}
    jobs = Job.objects.bulk_create([Sleeper.submit(workdir=f"test/{i}", sleeptime=3, save=False) for i in range(5)])
    assert len({j.id for j in jobs}) == 5

    the_id = site.id

    class ById(ApplicationDefinition):
        site = the_id
        command_template = "echo {{ x }}"

    class ByObject(ApplicationDefinition):
        site = Site.objects.get("test-site")

        def run(self, *dims: int) -> int:
            return len(dims)

    class WithPython(ApplicationDefinition):
        """A run() app with its own interpreter."""

        site = "test-site"
        python_exe = sys.executable

        def run(self, vec: Any) -> float:
            return float(sum(x**2 for x in vec) ** 0.5)

    for app in (ById, ByObject, WithPython):
        app.sync()
    assert ById.__app_site__ == ByObject.__app_site__ == site.path

    # Loading existing apps by site; app_id by name, by id, or by 0.7's "module.ClassName" class path.
    apps_by_name = ApplicationDefinition.load_by_site("test-site")
    assert set(apps_by_name) >= {"Sleeper", "ById", "ByObject", "WithPython"}
    loaded = apps_by_name["Sleeper"]
    assert loaded.submit(workdir="test/loaded", sleeptime=1).app_id == Sleeper.__app_id__
    sim = Job.objects.create(workdir="ensemble/1", app_name="sim.Sleeper", parameters={"sleeptime": 2})
    assert sim.app_id == Sleeper.__app_id__
    dims = ByObject.submit(workdir="test/parallel", dims=[5, 6], ranks_per_node=1)
    norm = WithPython.submit(workdir="test/norm", vec=[3, 4])
    runnable(site.store, [dims, norm])
    assert run(site, "mpi") == 0 and dims.result() == 2 and norm.result() == 5.0

    # Re-syncing a class of the same name at the same site overwrites the app.
    class Sleeper(ApplicationDefinition):  # type: ignore[no-redef]
        site = "test-site"
        command_template = "sleep {{ sleeptime }} && echo {{ word }}"
        parameters = {"word": {"required": False, "default": "goodbye"}}

    Sleeper.sync()
    assert Sleeper.__app_id__ == job.app_id
    assert set(App.objects.get(id=job.app_id).parameters) == {"sleeptime", "word"}

    # SiteConfig().client, the guide's way to reach the API without importing balsam.api in an app.
    from balsam.config import SiteConfig

    client = SiteConfig(site.path).client
    assert client.Job.objects.filter(workdir__contains="test/").count() == Job.objects.filter(workdir__contains="test/").count()
    assert client.BatchJob is BatchJob


def test_lookups_raise_the_models_own_errors_as_07_users_catch_them(site: Any, hello: Any, adder: Any, backend: str,
                                                                    tmp_path: Path) -> None:
    # The API guide's pattern, ``except Job.DoesNotExist``, for the lookups that name an app or a site as well: an
    # unknown app name or id is App.DoesNotExist, an unknown site App's or Job's is Site.DoesNotExist (they were a
    # ValidationError, an AppError and a SiteNotFound only, which the model's error did not catch).
    with pytest.raises(App.DoesNotExist, match="NoSuchApp"):
        Job.objects.create(workdir="x/1", app_id="NoSuchApp", parameters={})
    with pytest.raises(App.DoesNotExist):
        Job(workdir="x/2", app_id="sim.NoSuchApp").save()
    with pytest.raises(App.DoesNotExist, match="NoSuchApp"):
        ApplicationDefinition.load_by_name("NoSuchApp", "test-site")
    with pytest.raises(App.DoesNotExist):
        ApplicationDefinition.load_by_id(hello.__app_id__ + 1000)
    with pytest.raises(Site.DoesNotExist, match="no-such-site"):
        ApplicationDefinition.load_by_site("no-such-site")
    with pytest.raises(Site.DoesNotExist, match="no-such-site"):
        Job.objects.create(workdir="x/3", app_id="Hello", site_name="no-such-site", parameters={"say_hello_to": "x"})

    class Nowhere(ApplicationDefinition):
        site = "no-such-site"
        command_template = "echo nowhere"

    with pytest.raises(Site.DoesNotExist):
        Nowhere.sync()
    # Still the errors they were for code that catches those, and each model keeps its own class.
    from balsam.exceptions import AppError, SiteNotFound

    with pytest.raises(ValueError):
        Job.objects.create(workdir="x/4", app_id="NoSuchApp")
    with pytest.raises(AppError):
        ApplicationDefinition.load_by_name("NoSuchApp", "test-site")
    with pytest.raises(SiteNotFound):
        ApplicationDefinition.load_by_site("no-such-site")
    assert not issubclass(App.DoesNotExist, Job.DoesNotExist) and not issubclass(Site.DoesNotExist, App.DoesNotExist)
    assert Job.objects.count() == 0
    if backend == "local":  # the same app name at two sites, and no site_name to choose: App.MultipleObjectsReturned
        from balsam.site import init_site

        init_site(tmp_path / "other-site", name="other-site")

        class Hello(ApplicationDefinition):
            site = "other-site"
            command_template = "echo other {{ say_hello_to }}"

        Hello.sync()
        with pytest.raises(App.MultipleObjectsReturned, match="several sites"):
            Job.objects.create(workdir="x/5", app_id="Hello", parameters={"say_hello_to": "x"})
        assert Job.objects.create(workdir="x/5", app_id="Hello", site_name="other-site", parameters={"say_hello_to": "x"}).id


def test_result_nowait_returns_a_result_that_is_available(site: Any, adder: Any) -> None:
    # The jobs guide: "result_nowait() will return the result in a non-blocking fashion and raise Job.NoResult if a
    # result is not immediately available": once the launcher has run the job, the same object returns it.
    job = adder.submit("test/nowait", x=3, y=7)
    with pytest.raises(Job.NoResult):
        job.result_nowait()
    runnable(site.store, [job])
    assert run(site, "mpi") == 0
    assert job.result_nowait() == 10 and str(job.state) == "JOB_FINISHED"


def test_returned_times_meet_naive_utc_times_as_07_gave_them(site: Any, hello: Any) -> None:
    # The API guide builds hour_ago = datetime.utcnow() - timedelta(hours=1) (naive UTC, as Balsam 0.7's times were);
    # users then compare it with and subtract it from the times the API returns, which are aware UTC datetimes here.
    hour_ago = datetime.utcnow() - timedelta(hours=1)
    job = Job.objects.get(id=hello.submit(workdir="t/1", say_hello_to="x").id)
    assert job.last_update > hour_ago and hour_ago < job.last_update and job.last_update.tzinfo is not None
    assert timedelta(0) <= datetime.utcnow() - job.last_update < timedelta(minutes=10)
    assert [j.workdir for j in Job.objects.all() if j.last_update > hour_ago] == ["t/1"]
    (event,) = EventLog.objects.filter(job_id=job.id)
    assert job.last_update - event.timestamp >= timedelta(0) and event.timestamp - hour_ago > timedelta(minutes=59)
    assert Site.objects.get("test-site").last_refresh > hour_ago
    assert repr(event.timestamp).startswith("datetime.datetime(")
