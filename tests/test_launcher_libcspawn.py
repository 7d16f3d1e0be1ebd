"""The launcher's spawn through the C library's posix_spawn starts the same child as ``os.posix_spawn`` does (its
directory, its own session, default signals, stdin from /dev/null, output to job.out) and fails the same way,
without changing the launcher's own working directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from balsam.launcher import spawn as sp
from balsam.launcher.libcspawn import load

PROBE = ('echo "cwd=$(pwd) foo=$FOO pid=$$ sid=$(cut -d" " -f6 /proc/$$/stat)"; '
         'echo "ignored=$(grep SigIgn /proc/$$/status | cut -f2)"; read line; echo "stdin=$?"; echo to-stderr >&2')

needs_libc = pytest.mark.skipif(load(()) is None, reason="the C library has no posix_spawn_file_actions_addchdir_np")


@pytest.fixture(params=["libc", "os"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Which way the launcher spawns: through the C library, or os.posix_spawn."""
    if request.param == "libc" and load(()) is None:
        pytest.skip("the C library has no posix_spawn_file_actions_addchdir_np")
    monkeypatch.setattr(sp, "USE_LIBC", request.param == "libc")
    yield str(request.param)


def _run(tmp_path: Path, name: str, command: str, **kw: object) -> Dict[str, str]:
    workdir = tmp_path / name
    workdir.mkdir()
    out = workdir / "job.out"
    pid = sp.spawn(["/bin/sh", "-c", command], cwd=str(workdir), env=dict(os.environ, FOO="a b"), output=str(out), **kw)  # type: ignore[arg-type]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = out.read_text()
    fields = dict(w.split("=", 1) for line in text.splitlines() for w in line.split() if "=" in w)
    fields["pid"] = fields.get("pid", "")
    fields["_spawned"] = str(pid)
    fields["_text"] = text
    return fields


def test_the_child_runs_in_its_directory_and_session_with_default_signals(tmp_path: Path, path: str) -> None:
    got = _run(tmp_path, "job", PROBE)
    assert got["cwd"] == str(tmp_path / "job")
    assert got["foo"] == "a"  # FOO="a b": the environment is passed as given
    assert got["pid"] == got["_spawned"] == got["sid"], "the job leads its own session"
    ignored = int(got["ignored"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE (ignored by Python) is back to its default in the job"
    assert not ignored & (1 << (signal.SIGINT - 1))
    assert got["stdin"] == "1", "stdin is /dev/null (read finds end-of-file)"
    assert "to-stderr" in got["_text"], "stderr goes to job.out too"


def test_output_is_truncated_or_appended(tmp_path: Path, path: str) -> None:
    (tmp_path / "job").mkdir()
    out = tmp_path / "job" / "job.out"
    out.write_text("old run\n")
    for append in (True, False):
        pid = sp.spawn(["/bin/echo", "new"], cwd=str(tmp_path / "job"), env=dict(os.environ), output=str(out), append=append)
        os.waitpid(pid, 0)
        assert out.read_text() == ("old run\nnew\n" if append else "new\n")


def test_a_missing_program_or_directory_is_a_clear_error(tmp_path: Path, path: str) -> None:
    (tmp_path / "job").mkdir()
    with pytest.raises(FileNotFoundError):
        sp.spawn(["/no/such/program"], cwd=str(tmp_path / "job"), env={}, output=str(tmp_path / "job" / "job.out"))
    with pytest.raises(FileNotFoundError, match="gone"):
        sp.spawn(["/bin/true"], cwd=str(tmp_path / "gone"), env={}, output=str(tmp_path / "job.out"))
    with pytest.raises(FileNotFoundError, match="command not found"):
        sp.spawn(["no-such-command-anywhere"], cwd=str(tmp_path / "job"), env={"PATH": "/usr/bin"}, output=str(tmp_path / "o"))


@needs_libc
def test_the_launchers_working_directory_never_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.posix_spawn has no "change directory" action: that path changes this process's directory around the call
    # (under a lock). The C library path does it in the child, so another thread's relative paths stay valid.
    monkeypatch.setattr(sp, "USE_LIBC", True)
    here = os.getcwd()
    _run(tmp_path, "job", "true")
    assert os.getcwd() == here


def test_a_prepared_environment_with_each_jobs_own_variables_on_top(tmp_path: Path, path: str) -> None:
    """The launcher encodes its environment once; each job adds (or overrides) its own variables, and sees
    none of another job's."""
    block = sp.env_block({"PATH": os.environ["PATH"], "SHARED": "base", "FOO": "from-base"})
    outputs = []
    for i, extra in enumerate([{"BALSAM_JOB_ID": "1", "FOO": "job one"}, {"BALSAM_JOB_ID": "2"}, {"BALSAM_JOB_ID": "3", "FOO": "3"}]):
        workdir = tmp_path / f"job{i}"
        workdir.mkdir()
        pid = sp.spawn(["env"], cwd=str(workdir), env=block, extra=extra, output=str(workdir / "job.out"))
        os.waitpid(pid, 0)
        lines = (workdir / "job.out").read_text().splitlines()
        outputs.append(dict(line.split("=", 1) for line in lines))
        assert len(lines) == len(set(line.split("=", 1)[0] for line in lines)), "no variable appears twice"
    assert [o["BALSAM_JOB_ID"] for o in outputs] == ["1", "2", "3"]
    assert [o["FOO"] for o in outputs] == ["job one", "from-base", "3"]
    assert {o["SHARED"] for o in outputs} == {"base"}
    with pytest.raises(ValueError, match="illegal environment variable"):
        sp.spawn(["env"], cwd=str(tmp_path), env=block, extra={"BAD=NAME": "x"}, output=str(tmp_path / "bad.out"))


@needs_libc
def test_jobs_spawned_from_several_threads_at_once_never_inherit_a_helpers_fd(tmp_path: Path) -> None:
    """The launcher spawns jobs from helper threads while its loop may start a helper process (a warm Python
    worker, the watchdog) that is handed an fd: the helper gets it, and no job started at the same moment does."""
    import threading

    r, w = os.pipe()
    errors: List[BaseException] = []
    pids: List[Tuple[int, Path]] = []

    def jobs(k: int) -> None:
        try:
            for i in range(40):
                workdir = tmp_path / f"job-{k}-{i}"
                workdir.mkdir()
                pids.append((sp.spawn(["/bin/sh", "-c", f"test -e /proc/self/fd/{r} && echo LEAKED || echo clean"],
                                      cwd=str(workdir), env=os.environ, output=str(workdir / "job.out")), workdir))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=jobs, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    helpers = []
    for i in range(20):
        helper = tmp_path / f"helper-{i}"
        helper.mkdir()
        helpers.append((sp.spawn(["/bin/sh", "-c", f"test -e /proc/self/fd/{r} && echo got-it || echo missing"], cwd=str(helper),
                                 env=os.environ, output=str(helper / "job.out"), pass_fds=[r]), helper))
    for t in threads:
        t.join()
    for pid, _ in pids + helpers:
        os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert not errors
    assert {(d / "job.out").read_text().strip() for _, d in helpers} == {"got-it"}
    assert {(d / "job.out").read_text().strip() for _, d in pids} == {"clean"}


@needs_libc
def test_spawn_threads_report_every_pid_or_the_reason_it_did_not_start(tmp_path: Path) -> None:
    """Spawns handed to the helper threads: each comes back once with its key, a pid that ran in the job's
    directory, or the error (a missing directory) for the job that could not start."""
    import threading

    got: Dict[object, Tuple[int, object]] = {}
    done = threading.Event()
    lock = threading.Lock()

    def record(key: object, pid: int, exc: object) -> None:
        with lock:
            assert key not in got
            got[key] = (pid, exc)
            if len(got) == 31:
                done.set()

    spawner = sp.SpawnThreads(2, record)
    for i in range(30):
        (tmp_path / str(i)).mkdir()
        spawner.submit(i, ["/bin/sh", "-c", f"echo {i} > here"], cwd=str(tmp_path / str(i)), env=os.environ,
                       output=str(tmp_path / str(i) / "job.out"))
    spawner.submit("missing", ["/bin/true"], cwd=str(tmp_path / "nope"), env=os.environ, output=str(tmp_path / "nope.out"))
    assert done.wait(30)
    spawner.close()
    for i in range(30):
        pid, exc = got[i]
        assert exc is None and pid > 0
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert (tmp_path / str(i) / "here").read_text().strip() == str(i)
    pid, exc = got["missing"]
    assert pid == 0 and isinstance(exc, FileNotFoundError) and "no such working directory" in str(exc)


def test_a_spawn_whose_lease_lapsed_while_it_waited_is_not_made(tmp_path: Path) -> None:
    """A launcher stopped (SIGSTOP, a frozen VM) after it decided to start a job and before the spawn must not start it
    when it resumes: its lease may have expired meanwhile and another launcher run the job. The spawn is checked
    against the lease's ``start_by`` right before it is made."""
    import threading
    import time

    got: Dict[object, Tuple[int, object]] = {}
    done = threading.Event()

    def record(key: object, pid: int, exc: object) -> None:
        got[key] = (pid, exc)
        if len(got) == 2:
            done.set()

    spawner = sp.SpawnThreads(1, record)
    for key, start_by in (("lapsed", time.monotonic() - 0.5), ("fresh", time.monotonic() + 60)):
        (tmp_path / key).mkdir()
        spawner.submit(key, ["/bin/sh", "-c", "echo ran > marker"], cwd=str(tmp_path / key), env=os.environ,
                       output=str(tmp_path / key / "job.out"), start_by=start_by)
    assert done.wait(30)
    spawner.close()
    pid, exc = got["lapsed"]
    assert pid == 0 and isinstance(exc, sp.LeaseLapsed) and "lease" in str(exc)
    pid, exc = got["fresh"]
    assert exc is None and os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert (tmp_path / "fresh" / "marker").exists() and not (tmp_path / "lapsed" / "marker").exists()


@pytest.mark.parametrize("kind", ["shell", "python"])
def test_an_executor_ends_a_job_whose_lease_lapsed_before_its_spawn_as_timed_out(tmp_path: Path, kind: str) -> None:
    """The executor's side: a job whose turn to spawn came after its lease's ``start_by`` never runs, and ends timed
    out (RUN_TIMEOUT: retried as a timeout), with its RUNNING announced before (so the record never misses a run)."""
    import time

    from balsam.launcher.executor import Executor
    from balsam.launcher.resources import ResourceManager
    from balsam.launcher.tasks import Task
    from balsam.platforms.mpi import get_mpi_launcher

    ex = Executor(mpi=get_mpi_launcher("mpirun", None), local_hosts=set(), all_local=True, gpu_env="CUDA_VISIBLE_DEVICES",
                  env=dict(os.environ), home=str(tmp_path), log_dir=str(tmp_path), error_tail_num_lines=5,
                  python_exe=None, pylib=None, max_workers=2, guarded=False)
    ex.start_by = lambda: time.monotonic() - 1.0
    rm = ResourceManager([("localhost", (0, 1), ())])
    announced: List[float] = []
    workdir = tmp_path / "job"
    app = ("demo.App", "", "", "") if kind == "python" else None
    task = Task(id=7, workdir=str(workdir), kind=kind, command="echo ran > marker", app=app, params=[], env={}, preamble=None,
                python_exe=None, num_nodes=1, ranks_per_node=1, threads_per_rank=1, threads_per_core=1, gpus_per_rank=0,
                node_packing_count=1, cpu_bind="none", launch_params={}, wall_time_min=0, job={}, rerun=False)
    placement = rm.place(rm.request(1, 1, 1, 1, 0, 1))
    assert placement is not None
    try:
        ex.start(task, placement, announce=announced.append)
        ex.launch()
        deadline = time.monotonic() + 30
        ended: List[Any] = []
        while not ended and time.monotonic() < deadline:
            ended = ex.poll(0.1)
    finally:
        ex.close()
    assert len(announced) == 1
    assert [(f.job_id, f.timed_out) for f in ended] == [(7, True)] and "lease" in ended[0].message
    assert not (workdir / "marker").exists()
