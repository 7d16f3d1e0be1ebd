"""The agent daemon (start, status, refusal, stop, crash and restart) and the file cleaner (transfers: test_services_transfers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from balsam.api import ApplicationDefinition, Job
from balsam.exceptions import ServiceError
from balsam.services.agent import agent_status, start_agent, stop_agent
from balsam.services.file_cleaner import FileCleanerService, clean_workdir
from balsam.settings import FileCleanerSettings
from tests.helpers import advance, fill


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


def test_a_pattern_glob_cannot_read_skips_only_itself_and_none_deletes_the_workdir(tmp_path: Path) -> None:
    """cleanup_files stored before they were checked (by an older Balsam): '.', './' or '' made Python's glob raise,
    which ended every cleaner cycle before its jobs were marked cleaned, so no job of any app was cleaned again; and
    '**' deleted the whole workdir, job.out with it."""
    data = tmp_path / "data"
    (data / "job" / "scratch").mkdir(parents=True)
    for name in ("a.tmp", "job.out", "scratch/x"):
        (data / "job" / name).write_text("x")
    assert clean_workdir(data, "job", [".", "./", "", "**", "*.tmp"]) == 2  # scratch/ (by '**') and a.tmp
    assert sorted(p.name for p in (data / "job").iterdir()) == ["job.out"]


def test_stuck_jobs_say_why(site: Any, hello: Any) -> None:
    from balsam.api import BatchJob
    from balsam.site.diagnosis import explain

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


def test_the_agent_survives_a_full_disk_and_says_so(small_disk: Path) -> None:
    from balsam._api import sites
    from balsam.cli.service import format_status
    from balsam.site import init_site
    from balsam.site.diagnosis import explain

    root = small_disk / "site"
    init_site(root, name="full-site")

    class Echo(ApplicationDefinition):
        site = "full-site"
        command_template = "echo {{ x }}"

    Echo.sync()
    pid = start_agent(root)
    try:
        first = Echo.submit(workdir="a", x=1)
        wait_for(lambda: str(Job.objects.get(id=first.id).state) == "PREPROCESSED")
        filler = small_disk / "filler"
        fill(filler)
        time.sleep(5)  # a few status periods with every write failing
        status = agent_status(root)
        assert status["running"] and status["pid"] == pid  # still alive
        assert status["disk"]["full"]
        assert "disk: FULL" in format_status(status)
        ref = sites.resolve("full-site")
        assert "disk is full" in explain(ref.store, root, int(first.id))[0]
        filler.unlink()
        second = Echo.submit(workdir="b", x=2)  # space again: the agent serves the new job
        wait_for(lambda: str(Job.objects.get(id=second.id).state) == "PREPROCESSED", timeout=40)
        assert not agent_status(root)["disk"]["full"]
        wait_for(lambda: agent_status(root).get("updated", 0) > time.time() - 10)  # its status is written again
    finally:
        stop_agent(root)


def test_settings_yml_edits_take_effect_without_a_restart(site: Any) -> None:
    """settings.yml is the truth: a new queue is usable at once from the API (no 'site sync', no restart); an
    invalid edit is one error naming the key, and the running agent keeps the last good settings."""
    from balsam.api import BatchJob
    from balsam.exceptions import ConfigError

    settings = site.path / "settings.yml"
    good = settings.read_text()
    pid = start_agent(site.path)
    try:
        with_debug = good.replace("  allowed_queues:\n", "  allowed_queues:\n    debug: {max_nodes: 1, max_wall_time_min: 30}\n")
        settings.write_text(with_debug)
        bj = BatchJob.objects.create(num_nodes=1, wall_time_min=20, queue="debug")  # the API re-reads the file
        assert bj.queue == "debug"
        settings.write_text(with_debug.replace("max_wall_time_min: 30}", "max_wall_time_min: 30, max_nodez: 2}"))
        with pytest.raises(ConfigError, match=r"unknown setting scheduler\.allowed_queues\.debug\.max_nodez"):
            BatchJob.objects.create(num_nodes=1, wall_time_min=20, queue="debug")
        wait_for(lambda: "max_nodez" in agent_status(site.path).get("settings_error", ""))
        status = agent_status(site.path)
        assert status["running"] and status["pid"] == pid and "last good settings" in status["settings_error"]
        fixed = with_debug.replace("debug: {max_nodes: 1, max_wall_time_min: 30}", "debug: {max_nodes: 1, max_wall_time_min: 45}")
        settings.write_text(fixed)
        wait_for(lambda: "settings_error" not in agent_status(site.path) and json.loads(
            site.store.execute("SELECT allowed_queues FROM site")[0][0])["debug"]["max_wall_time_min"] == 45)  # the agent copied it
        assert agent_status(site.path)["pid"] == pid
        assert {"processing", "scheduler", "file_cleaner"} <= set(agent_status(site.path)["services"])
    finally:
        stop_agent(site.path)


class SlowPre(ApplicationDefinition):
    """Its preprocess hook notes each run (pid), then sleeps while ``block`` exists in the site folder."""

    site = "test-site"
    command_template = "true"

    def preprocess(self) -> None:
        import os as _os
        import time as _time
        from pathlib import Path as _Path

        with open("hook-runs", "a") as f:
            f.write(f"{_os.getpid()}\n")
        block = _Path("../../../block")  # the hook runs in the job's workdir, <site>/data/slow/0
        while block.exists():
            _time.sleep(0.1)
        self.job.state = "PREPROCESSED"


def _hook_runs(site: Any, job: Any) -> List[int]:
    path = site.layout.data / job.workdir / "hook-runs"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _kill_agent(site: Any) -> None:
    """kill -9 the site's agent and wait until the site says it is not running."""
    from balsam.pidfile import read_pid
    from balsam.site.agent_state import pid_path

    agent = read_pid(pid_path(site.layout))
    assert agent is not None
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: not agent_status(site.path)["running"], timeout=15)


def _held_by(site: Any, job_id: int) -> Any:
    return site.store.execute("SELECT session_id FROM job WHERE id=?", (job_id,))[0][0]


def _service_run(site: Any) -> "subprocess.Popen[bytes]":
    """``balsam service run`` as a user runs it in a terminal: a foreground process group of its own."""
    from balsam.runtime import balsam_argv, subprocess_env

    out = open(site.path / "service-run.out", "ab")
    try:
        return subprocess.Popen([*balsam_argv(), "service", "run", "--site", str(site.path)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=subprocess_env())
    finally:
        out.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["site stop", "Ctrl-C"])
def test_a_stop_during_a_long_hook_takes_seconds_and_hands_the_job_back(site: Any, how: str) -> None:
    """``balsam site stop`` (SIGTERM) or a Ctrl-C in the terminal (SIGINT to the foreground group) while a preprocess
    hook runs: the agent is gone within seconds, the hook's worker with it, and the job is handed back unchanged
    (not FAILED, not locked); the next agent runs the hook again (an interrupted hook is re-run, as after a crash)."""
    from tests.launcher_support import pid_alive

    SlowPre.sync()
    (site.path / "block").write_text("")
    job = SlowPre.submit(workdir="slow/0")
    proc = _service_run(site) if how == "Ctrl-C" else None
    if proc is None:
        start_agent(site.path)
    try:
        hook_pid, agent = _hook_running(site, job)
        began = time.monotonic()
        if proc is None:
            assert stop_agent(site.path, timeout_s=120) == agent
        else:
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=120) == 0
        took = time.monotonic() - began
        assert took < 10, f"the agent took {took:.1f} s to stop"
        wait_for(lambda: not pid_alive(hook_pid), timeout=10)
        assert str(Job.objects.get(id=job.id).state) == "STAGED_IN" and _held_by(site, int(job.id)) is None
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_agent(site.path)
    (site.path / "block").unlink()
    start_agent(site.path)
    try:
        wait_for(lambda: str(Job.objects.get(id=job.id).state) == "PREPROCESSED", timeout=60)
    finally:
        stop_agent(site.path)
    assert len(_hook_runs(site, job)) == 2
    assert "cut short" in Job.objects.get(id=job.id).history()[-1].data.get("rerun", "")  # and the user is told why


def _hook_running(site: Any, job: Any) -> Tuple[int, int]:
    """(the pid of the hook worker running ``job``'s hook, the agent's pid), once the hook runs."""
    from balsam.pidfile import read_pid
    from balsam.site.agent_state import pid_path

    wait_for(lambda: _hook_runs(site, job), timeout=60)
    (hook_pid,) = _hook_runs(site, job)
    agent = read_pid(pid_path(site.layout))
    assert agent is not None
    return hook_pid, agent


def _children(pid: int) -> List[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the agent's children in /proc")
def test_a_killed_agents_hook_workers_end_with_it_and_the_next_agent_runs_the_hook_again(site: Any) -> None:
    """kill -9 of the agent while a hook runs: its hook workers end within seconds (they lived on, one set per crash,
    the cut-off hook still running while the next agent ran it again), and the next agent runs the hook once more
    (an interrupted hook is re-run, as the README says) and it completes."""
    from tests.launcher_support import pid_alive

    SlowPre.sync()
    (site.path / "block").write_text("")
    job = SlowPre.submit(workdir="slow/0")
    start_agent(site.path)
    try:
        hook_pid, agent = _hook_running(site, job)
        workers = _children(agent)
        assert hook_pid in workers
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=15)
        (site.path / "block").unlink()
        start_agent(site.path)
        wait_for(lambda: str(Job.objects.get(id=job.id).state) == "PREPROCESSED", timeout=90)
    finally:
        stop_agent(site.path)
    runs = _hook_runs(site, job)
    assert len(runs) == 2 and runs[0] == hook_pid, runs
    check = subprocess.run([sys.executable, "-m", "balsam", "db", "check", "--site", str(site.path)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr


class SlowPost(ApplicationDefinition):
    """Its postprocess hook notes each run; a job tagged slow sleeps while ``block`` exists in the site folder."""

    site = "test-site"
    command_template = "true"

    def postprocess(self) -> None:
        import time as _time
        from pathlib import Path as _Path

        with open("post-runs", "a") as f:
            f.write("run\n")
        while self.job.tags.get("slow") and _Path("../../../block").exists():
            _time.sleep(0.1)
        self.job.state = "POSTPROCESSED"


@pytest.mark.slow
def test_an_agent_killed_mid_postprocess_releases_every_waiting_child_once(site: Any, hello: Any) -> None:
    """Parents in RUN_DONE, half of whose postprocess hooks end at once and half block; children wait on a quick
    parent alone, or on a quick and a blocked one. The agent is killed with kill -9 while the blocked hooks run, then
    started again. Every parent finishes and every child is released exactly once (one 'all parents finished' event):
    none stays AWAITING_PARENTS with its parents done, none is released twice."""
    from tests.helpers import finish_run
    from tests.launcher_support import events

    SlowPost.sync()
    (site.path / "block").write_text("")
    quick = [SlowPost.submit(workdir=f"q/x/{i}") for i in range(4)]
    slow = [SlowPost.submit(workdir=f"s/x/{i}", tags={"slow": "1"}) for i in range(4)]
    for job in (*quick, *slow):
        advance(job, "PREPROCESSED", "RUNNING")
        finish_run(job, "RUN_DONE", return_code=0)
    early = [hello.submit(workdir=f"early/{i}", say_hello_to="x", parent_ids=[quick[i].id]) for i in range(4)]
    late = [hello.submit(workdir=f"late/{i}", say_hello_to="x", parent_ids=[quick[i].id, slow[i].id]) for i in range(4)]
    start_agent(site.path)
    try:
        wait_for(lambda: all(str(Job.objects.get(id=j.id).state) == "JOB_FINISHED" for j in quick)
                 and all((site.layout.data / j.workdir / "post-runs").exists() for j in slow), timeout=60)
        _kill_agent(site)
        (site.path / "block").unlink()
        start_agent(site.path)
        wait_for(lambda: all(str(Job.objects.get(id=j.id).state) == "PREPROCESSED" for j in (*early, *late)), timeout=90)
    finally:
        stop_agent(site.path)
    assert all(str(Job.objects.get(id=j.id).state) == "JOB_FINISHED" for j in (*quick, *slow))
    for child in (*early, *late):
        released = [e for e in events(site.store, int(child.id)) if e["from"] == "AWAITING_PARENTS"]
        assert [e["to"] for e in released] == ["READY"], (child.workdir, released)


def test_two_site_starts_at_once_give_one_agent_and_one_clear_refusal(site: Any) -> None:
    from tests.cli_helpers import ROOT

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    starts = [subprocess.Popen([sys.executable, "-m", "balsam", "site", "start"], cwd=site.path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        results = sorted((p.wait(timeout=120), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "")
                         for p in starts)
    finally:
        stop_agent(site.path)
    (ok_rc, ok_out, _), (bad_rc, _, bad_err) = results
    assert ok_rc == 0 and "Started the site agent" in ok_out
    assert bad_rc == 1 and bad_err.count("Error") == 1 and "already running" in bad_err and "\n" not in bad_err.strip(), bad_err


class SlowPreIgnoringTerm(SlowPre):
    """Like SlowPre, in a worker that ignores SIGTERM (as a hook's library may make it)."""

    def preprocess(self) -> None:
        import signal as _signal

        _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
        super().preprocess()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the agent's children in /proc")
def test_a_hook_worker_killed_mid_hook_fails_only_its_job_and_leaves_no_worker_behind(site: Any) -> None:
    """Two hooks run in the agent's two hook workers, with more jobs queued behind them; one worker is killed with
    kill -9 (the OOM killer). Its job fails and says what happened and how to run it again; the other worker, whose
    hook ignores SIGTERM, does not live on; the other hooks are handed back and run again; the agent goes on."""
    from tests.launcher_support import events, pid_alive
    from tests.launcher_support import wait_for as wait

    SlowPre.sync()
    SlowPreIgnoringTerm.sync()
    (site.path / "block").write_text("")
    victim = SlowPre.submit(workdir="slow/0")
    bystander = SlowPreIgnoringTerm.submit(workdir="slow/1")
    queued = [SlowPre.submit(workdir=f"slow/{i}") for i in (2, 3)]
    start_agent(site.path)
    try:
        victim_pid, agent = _hook_running(site, victim)
        bystander_pid, _ = _hook_running(site, bystander)
        assert {victim_pid, bystander_pid} <= set(_children(agent))
        os.kill(victim_pid, signal.SIGKILL)
        wait(lambda: str(Job.objects.get(id=victim.id).state) == "FAILED", timeout=60,
             what=f"the killed worker's job FAILED (hook runs: {_hook_runs(site, victim)})")
        wait(lambda: not pid_alive(bystander_pid), timeout=15, what="the broken pool's other worker to be killed")
        (failed,) = [e["data"] for e in events(site.store, int(victim.id)) if e["to"] == "FAILED"]
        assert "hook worker running preprocess died (killed by SIGKILL" in failed["message"], failed
        assert f"balsam job reset {victim.id}" in failed["message"], failed
        (site.path / "block").unlink()
        others = [bystander, *queued]
        wait(lambda: all(str(Job.objects.get(id=j.id).state) == "PREPROCESSED" for j in others), timeout=90,
             what="the handed-back jobs PREPROCESSED")
        assert len(_hook_runs(site, bystander)) == 2, _hook_runs(site, bystander)  # cut short with the pool: run again
        assert len(_hook_runs(site, victim)) == 1, _hook_runs(site, victim)
        workers = [p for p in _children(agent) if pid_alive(p)]
        assert victim_pid not in workers and bystander_pid not in workers
    finally:
        (site.path / "block").unlink(missing_ok=True)
        stop_agent(site.path)
    reset = subprocess.run([sys.executable, "-m", "balsam", "job", "reset", str(victim.id), "--site", str(site.path), "-y"],
                           capture_output=True, text=True, timeout=120)
    assert reset.returncode == 0, reset.stderr
    assert str(Job.objects.get(id=victim.id).state) == "RESTART_READY"


@pytest.mark.slow
def test_an_agent_killed_while_one_hook_runs_on_keeps_the_hooks_that_ended_and_runs_them_once(site: Any) -> None:
    """One slow hook and three quick ones in the same batch; the quick ones end and the agent is killed with kill -9
    while the slow one still runs. The quick hooks' results were saved as each ended (they waited for the slowest of
    the batch, so all four ran again after the crash: a postprocess that moved or appended to files, run twice); the
    next agent runs only the slow hook again."""

    SlowPre.sync()
    (site.path / "block").write_text("")
    slow = SlowPre.submit(workdir="slow/0")
    quick = [SlowPre.submit(workdir=f"q/x/{i}") for i in range(3)]  # their hook looks for data/block: never there
    start_agent(site.path)
    try:
        wait_for(lambda: _hook_runs(site, slow) and all(_hook_runs(site, j) for j in quick), timeout=60)
        wait_for(lambda: all(str(Job.objects.get(id=j.id).state) == "PREPROCESSED" for j in quick), timeout=20)
        _kill_agent(site)
        (site.path / "block").unlink()
        start_agent(site.path)
        wait_for(lambda: str(Job.objects.get(id=slow.id).state) == "PREPROCESSED", timeout=90)
    finally:
        stop_agent(site.path)
    assert [len(_hook_runs(site, j)) for j in quick] == [1, 1, 1]
    assert len(_hook_runs(site, slow)) == 2
    # the user is told which hook ran again, and why: in its event (balsam job show) and in its log
    told = Job.objects.get(id=slow.id).history()[-1].data["rerun"]
    assert "cut short" in told and str(_hook_runs(site, slow)[0]) in told
    assert "cut short" in (site.layout.data / "slow" / "0" / "balsam.log").read_text()
    assert not any("rerun" in Job.objects.get(id=j.id).history()[-1].data for j in quick)


class SpawningPost(ApplicationDefinition):
    """Its postprocess makes a child job (in ``<workdir>/child``, app Hello), notes each run (pid), then sleeps while
    ``block`` exists in the site folder."""

    site = "test-site"
    command_template = "true"

    def postprocess(self) -> None:
        import os as _os
        import time as _time
        from pathlib import Path as _Path

        from balsam.api import Job as _Job

        _Job(workdir=self.job.workdir + "/child", app_id="Hello", parameters={"say_hello_to": "child"},
             parent_ids=[self.job.id]).save()
        with open("hook-runs", "a") as f:
            f.write(f"{_os.getpid()}\n")
        while _Path("../../../block").exists():
            _time.sleep(0.1)
        self.job.state = "POSTPROCESSED"


@pytest.mark.slow
def test_a_postprocess_cut_short_after_making_a_child_runs_again_with_that_child(site: Any, hello: Any) -> None:
    """kill -9 of the agent while a postprocess that made a child job still runs: the next agent runs the hook again,
    which asks for the same child. The parent FAILED ('workdir ... is already used'); now the hook takes the child it
    made, the parent finishes, and there is one child, which runs after it."""
    from tests.helpers import finish_run

    SpawningPost.sync()
    (site.path / "block").write_text("")
    parent = SpawningPost.submit(workdir="spawn/0")
    advance(parent, "PREPROCESSED", "RUNNING")
    finish_run(parent, "RUN_DONE")
    start_agent(site.path)
    try:
        wait_for(lambda: _hook_runs(site, parent), timeout=60)
        _kill_agent(site)
        assert Job.objects.filter(workdir="spawn/0/child").count() == 1  # made before the kill
        (site.path / "block").unlink()
        start_agent(site.path)
        wait_for(lambda: str(Job.objects.get(id=parent.id).state) in ("JOB_FINISHED", "FAILED"), timeout=90)
        ended = Job.objects.get(id=parent.id)
        assert str(ended.state) == "JOB_FINISHED", ended.history()[-1].data
        (child,) = Job.objects.filter(workdir="spawn/0/child")
        wait_for(lambda: str(Job.objects.get(id=child.id).state) == "PREPROCESSED", timeout=60)  # released by its parent
    finally:
        stop_agent(site.path)
    assert len(_hook_runs(site, parent)) == 2
    assert "cut short" in Job.objects.get(id=parent.id).history()[-2].data.get("rerun", "")
    assert child.parent_ids == [parent.id]


@pytest.mark.slow
def test_a_hook_whose_result_meets_a_full_disk_is_saved_once_there_is_space_and_not_run_again(small_disk: Path) -> None:
    """A postprocess hook fills the disk (its output, or another user's) and its result cannot be written: the agent
    keeps the result and writes it once space is freed, instead of running the hook again (it had already done its
    work: a postprocess run twice)."""
    from balsam.site import init_site
    from tests.helpers import advance

    root = small_disk / "site"
    init_site(root, name="full-site")

    class Filling(ApplicationDefinition):
        site = "full-site"
        command_template = "true"

        def postprocess(self) -> None:
            from pathlib import Path as _Path

            from tests.helpers import fill  # the hook worker imports from the checkout, as the agent does

            with open("post", "a") as f:
                f.write("post\n")
            fill(_Path("../../../filler"))  # <mount>/filler: the workdir is <mount>/site/data/p
            self.job.state = "POSTPROCESSED"

    Filling.sync()
    job = Filling.submit(workdir="p")
    advance(job, "PREPROCESSED", "RUNNING")
    filler = small_disk / "filler"
    start_agent(root)
    try:
        advance(job, "RUN_DONE")  # once the agent runs: a disk filled while it starts stops it from starting at all
        wait_for(lambda: filler.exists() and (root / "data" / "p" / "post").exists(), timeout=120)
        time.sleep(5)  # a few cycles with every write failing (a commit that fits in the WAL's pages may still land)
        filler.unlink()
        # Before, the job stayed locked to the lease for five minutes, then its postprocess ran again.
        wait_for(lambda: str(Job.objects.get(id=job.id).state) in ("POSTPROCESSED", "JOB_FINISHED"), timeout=120)
    finally:
        stop_agent(root)
    assert (root / "data" / "p" / "post").read_text() == "post\n"
