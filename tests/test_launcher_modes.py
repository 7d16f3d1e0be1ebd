"""Both launcher modes end to end with real processes: shell and Python apps, results and exceptions coming
back to ``job.result()``, exit codes with the tail of job.out, the job environment, GPUs, preambles, and jobs
that cannot run."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from tests.helpers import advance
from tests.launcher_support import configure, events, job_row, output, run, runnable, states

MODES = ["mpi", "serial"]


@pytest.mark.parametrize("mode", MODES)
def test_shell_jobs_run_to_run_done(site: Any, hello: Any, mode: str) -> None:
    jobs = [hello.submit(f"hello/{i}", say_hello_to=f"world {i}", node_packing_count=4) for i in range(6)]
    ids = runnable(site.store, jobs)
    assert run(site, mode) == 0
    assert set(states(site.store, ids).values()) == {"JOB_FINISHED"}
    for i in range(6):
        assert output(site.path, f"hello/{i}") == f"Hello, world {i}!\n"
    row = job_row(site.store, ids[0])
    assert row["return_code"] == 0 and row["session_id"] is None
    history = [e["to"] for e in events(site.store, ids[0])]
    assert history[-4:] == ["RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert site.store.execute("SELECT count(*) FROM session")[0][0] == 0, "the lease is released"


@pytest.mark.parametrize("mode", MODES)
def test_exit_code_and_output_tail_are_recorded(site: Any, mode: str) -> None:
    from balsam.api import ApplicationDefinition

    class Fails(ApplicationDefinition):
        site = "test-site"
        command_template = "echo one; echo two; echo three; exit 7"

    configure(site.path, error_tail_num_lines=2)
    [job_id] = runnable(site.store, [Fails.submit("fails")])
    assert run(site, mode) == 0
    row = job_row(site.store, job_id)
    assert row["state"] == "RUN_ERROR" and row["return_code"] == 7
    data = events(site.store, job_id)[-1]["data"]
    assert data == {"returncode": 7, "error": "two\nthree"}


@pytest.mark.parametrize("mode", MODES)
def test_python_results_and_exceptions_reach_job_result(site: Any, adder: Any, mode: str) -> None:
    ok = adder.submit("add/ok", x=3, node_packing_count=2)
    bad = adder.submit("add/bad", x=3, y="text", node_packing_count=2)
    runnable(site.store, [ok, bad])
    assert run(site, mode) == 0
    ok.refresh_from_db()
    bad.refresh_from_db()
    assert ok.state == "JOB_FINISHED" and bad.state == "RUN_ERROR" and bad.return_code == 1
    advance(bad, "FAILED")  # what the agent's processing does next (ok needs nothing: its app has no postprocess hook)
    assert ok.result() == 5
    with pytest.raises(TypeError, match="unsupported operand"):
        bad.result()
    assert "TypeError" in output(site.path, "add/bad"), "the traceback goes to job.out"


def test_python_jobs_reuse_warm_workers_and_keep_output_apart(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Pid(ApplicationDefinition):
        site = "test-site"

        def run(self, i: int) -> int:
            import os

            print("job", i, "in", os.getcwd())
            return os.getpid()

    jobs = [Pid.submit(f"pid/{i}", i=i, node_packing_count=2) for i in range(10)]
    ids = runnable(site.store, jobs)
    assert run(site, "mpi") == 0
    pids = {pickle.loads(job_row(site.store, j)["serialized_return_value"]) for j in ids}
    assert len(pids) <= 2, f"10 jobs on 2 CPUs should share at most 2 warm workers, got {len(pids)}"
    for i in range(10):
        out = output(site.path, f"pid/{i}")
        assert out.startswith(f"job {i} in ") and out.strip().endswith(f"data/pid/{i}")


@pytest.mark.parametrize("mode", MODES)
def test_job_environment(site: Any, mode: str) -> None:
    from balsam.api import ApplicationDefinition

    class Env(ApplicationDefinition):
        site = "test-site"
        command_template = "echo id=$BALSAM_JOB_ID omp=$OMP_NUM_THREADS foo=$FOO gpus=$CUDA_VISIBLE_DEVICES"
        environment_variables = {"FOO": "bar baz"}

    configure(site.path, gpus_per_node=2, cpus_per_node=4)
    a = Env.submit("env/a", threads_per_rank=2, gpus_per_rank=1, node_packing_count=2)
    b = Env.submit("env/b", gpus_per_rank=1, node_packing_count=2)
    ids = runnable(site.store, [a, b])
    assert run(site, mode) == 0
    out_a, out_b = output(site.path, "env/a"), output(site.path, "env/b")
    assert out_a.startswith(f"id={ids[0]} omp=2 foo=bar baz gpus=")
    assert out_b.startswith(f"id={ids[1]} omp=1 foo=bar baz gpus=")
    gpu_a, gpu_b = out_a.split("gpus=")[1].strip(), out_b.split("gpus=")[1].strip()
    assert {gpu_a, gpu_b} <= {"0", "1"} and gpu_a != "" and gpu_b != ""


def test_cpu_binding_pins_python_jobs_to_their_cpus(site: Any) -> None:
    import os

    from balsam.api import ApplicationDefinition

    class Affinity(ApplicationDefinition):
        site = "test-site"

        def run(self) -> list:  # type: ignore[type-arg]
            import os

            return sorted(os.sched_getaffinity(0))

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    configure(site.path, cpus_per_node=2)
    job = Affinity.submit("aff", launch_params={"cpu_bind": "core"}, node_packing_count=2)
    [job_id] = runnable(site.store, [job])
    assert run(site, "mpi") == 0
    assert pickle.loads(job_row(site.store, job_id)["serialized_return_value"]) == [0]


@pytest.mark.parametrize("mode", MODES)
def test_shell_preamble_runs_first(site: Any, mode: str) -> None:
    from balsam.api import ApplicationDefinition

    class WithPreamble(ApplicationDefinition):
        site = "test-site"
        command_template = "echo $GREETING from {{ who }}"

        def shell_preamble(self) -> Any:
            return ["export GREETING=preamble", "true"]

    [job_id] = runnable(site.store, [WithPreamble.submit("pre", who="job")])
    assert run(site, mode) == 0
    assert job_row(site.store, job_id)["state"] == "JOB_FINISHED"
    assert output(site.path, "pre") == "preamble from job\n"


@pytest.mark.parametrize("mode", MODES)
def test_jobs_this_launcher_cannot_hold_are_left_for_another(site: Any, mode: str) -> None:
    """A job needing GPUs the nodes lack is not failed: it stays runnable for a launcher that has them, and
    ``balsam job show`` (diagnose.explain) says why it waits while this launcher runs."""
    from balsam.api import ApplicationDefinition
    from balsam.site.diagnosis import explain
    from tests.launcher_support import start, wait_for

    class NeedsGpus(ApplicationDefinition):
        site = "test-site"
        command_template = "true"

    configure(site.path, gpus_per_node=0)
    a = NeedsGpus.submit("gpu", gpus_per_rank=4)
    b = NeedsGpus.submit("cpu")
    ids = runnable(site.store, [a, b])
    assert run(site, mode) == 0
    assert states(site.store, ids) == {ids[0]: "PREPROCESSED", ids[1]: "JOB_FINISHED"}
    assert job_row(site.store, ids[0])["session_id"] is None
    proc = start(site.path, mode, idle_ttl_s=60)
    try:
        wait_for(lambda: site.store.execute("SELECT count(*) FROM session")[0][0] == 1, timeout=60, what="the launcher's lease")
        reasons = explain(site.store, site.path, ids[0])
        assert any(r.startswith("no running launcher has GPUs; this job needs 4 per node") for r in reasons), reasons
        assert states(site.store, ids[:1]) == {ids[0]: "PREPROCESSED"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_serial_mode_leaves_multi_node_jobs_for_an_mpi_launcher(site: Any, hello: Any) -> None:
    """Serial mode runs single-node jobs only: a two-node job stays runnable, unlocked, for an mpi-mode launcher
    with two nodes."""
    wide = hello.submit("wide", say_hello_to="two nodes", num_nodes=2)
    small = [hello.submit(f"small/{i}", say_hello_to=str(i), node_packing_count=4) for i in range(3)]
    ids = runnable(site.store, [wide, *small])
    assert run(site, "serial") == 0
    assert states(site.store, ids) == {ids[0]: "PREPROCESSED", **{i: "JOB_FINISHED" for i in ids[1:]}}
    assert job_row(site.store, ids[0])["session_id"] is None


def test_missing_program_is_a_run_error(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Missing(ApplicationDefinition):
        site = "test-site"
        command_template = "/no/such/program --flag"

    [job_id] = runnable(site.store, [Missing.submit("missing")])
    assert run(site, "mpi") == 0
    row = job_row(site.store, job_id)
    assert row["state"] == "RUN_ERROR" and row["return_code"] == 127
    assert "/no/such/program" in events(site.store, job_id)[-1]["data"]["error"]


def test_serial_mode_with_a_worker_process(site: Any, hello: Any, adder: Any) -> None:
    jobs = [hello.submit(f"w/{i}", say_hello_to=str(i), node_packing_count=2) for i in range(4)]
    jobs += [adder.submit("w/add", x=40), adder.submit("w/add2", x=1, y=1, node_packing_count=2)]
    ids = runnable(site.store, jobs)
    assert run(site, "serial", serial_workers="process") == 0
    assert set(states(site.store, ids).values()) == {"JOB_FINISHED"}
    assert pickle.loads(job_row(site.store, ids[-2])["serialized_return_value"]) == 42
    assert pickle.loads(job_row(site.store, ids[-1])["serialized_return_value"]) == 2, "the app's code is sent once per worker"
    assert output(site.path, "w/3") == "Hello, 3!\n"


def test_filter_tags_select_jobs(site: Any, hello: Any) -> None:
    a = hello.submit("tag/a", say_hello_to="a", tags={"role": "a"})
    b = hello.submit("tag/b", say_hello_to="b", tags={"role": "b"})
    ids = runnable(site.store, [a, b])
    assert run(site, "mpi", filter_tags={"role": "b"}) == 0
    assert states(site.store, ids) == {ids[0]: "PREPROCESSED", ids[1]: "JOB_FINISHED"}


@pytest.mark.parametrize("sort_by, expected", [(None, [5, 3, 1]), ("short_small_first", [1, 3, 5])])
def test_launcher_sort_by_orders_what_runs_first(site: Any, hello: Any, sort_by: Any, expected: list) -> None:
    """launcher.sort_by (Balsam 0.7's setting); unset, Balsam's default order puts the longest first among equals."""
    configure(site.path, max_concurrent_mpiruns=1, **({"sort_by": sort_by} if sort_by else {}))  # one at a time
    jobs = [hello.submit(f"sort/{w}", say_hello_to=str(w), wall_time_min=w) for w in (3, 1, 5)]
    runnable(site.store, jobs)
    assert run(site, "mpi", wall_time_min=10) == 0
    started = site.store.execute("SELECT job_id FROM event WHERE to_state='RUNNING' ORDER BY timestamp, id")  # when each started
    walls = {j.id: j.wall_time_min for j in jobs}
    assert [walls[r[0]] for r in started] == expected


@pytest.mark.parametrize("mode", MODES)
def test_a_run_that_makes_a_job_takes_it_again_when_it_runs_again(site: Any, hello: Any, mode: str) -> None:
    """A Python run() that makes a child job and is cut short (here: it raises once) runs again after a reset: asking for
    the same child again, it gets the job it made the first time, instead of failing with 'workdir ... is already
    used'; one child only."""
    from balsam.api import ApplicationDefinition, Job

    class Splits(ApplicationDefinition):
        site = "test-site"

        def run(self) -> str:
            from pathlib import Path

            from balsam.api import Job

            child = Job(workdir=self.job.workdir + "/part", app_id="Hello", parameters={"say_hello_to": "part"})
            child.save()
            marker = Path("tried")
            if not marker.exists():
                marker.write_text("once")
                raise RuntimeError("cut short after making its part")
            return f"made {child.id}"

    Splits.sync()
    [job_id] = runnable(site.store, [Splits.submit("split")])
    assert run(site, mode) == 0
    assert job_row(site.store, job_id)["state"] == "RUN_ERROR"
    job = Job.objects.get(id=job_id)
    job.state = "RESTART_READY"
    job.save()
    assert run(site, mode) == 0
    (part,) = Job.objects.filter(workdir="split/part")
    assert job_row(site.store, job_id)["state"] == "JOB_FINISHED"
    assert pickle.loads(job_row(site.store, job_id)["serialized_return_value"]) == f"made {part.id}"
