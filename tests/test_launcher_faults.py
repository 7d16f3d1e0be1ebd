"""A killed launcher leaves no twin and loses no result (issue 19): its jobs die with it, what it learned is
recovered from its journal, re-runs are recorded as re-runs, and a job's leftover processes are cleaned up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest

from tests.launcher_support import (
    REPO,
    configure,
    events,
    job_row,
    kill_quietly,
    pid_alive,
    read_pid,
    run,
    runnable,
    set_state,
    start,
    states,
    wait_for,
)

MODES = ["mpi", "serial"]




def _release_dead_leases(site: Any) -> None:
    """What the agent (or any launcher opening a lease on this host) does when it finds a dead launcher."""
    from balsam.db.jobsource import JobSource
    from balsam.site import this_host

    JobSource(site.store, host=this_host()).start().release()


@pytest.mark.parametrize("mode", MODES)
def test_a_killed_launchers_jobs_die_with_it(site: Any, sleeper: Any, pids: List[int], mode: str) -> None:
    (job,) = runnable(site.store, [sleeper.submit("twin/0", seconds=120)])
    proc = start(site.path, mode)
    wait_for(lambda: states(site.store, [job])[job] == "RUNNING", timeout=30, what="the job RUNNING")
    pid = read_pid(site.path, "twin/0")
    pids.append(pid)
    record = site.path / "data" / "twin" / "0" / ".balsam-job.pid"
    if mode == "mpi":  # a job that runs a while leaves a pid record for the next launcher (serial: on its node)
        wait_for(lambda: record.exists() and record.read_text().split()[0] == str(pid), what="the pid record")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not pid_alive(pid), timeout=20, what="the job's process to end with its launcher")


def test_the_next_launcher_stops_an_earlier_copy_before_rerunning(tmp_path: Path) -> None:
    """The pid record in the workdir covers a watchdog that was killed too."""
    from balsam.launcher.watchdog import stop_previous, write_record

    proc = subprocess.Popen(["sleep", "120"], cwd=tmp_path, start_new_session=True)
    try:
        write_record(str(tmp_path), proc.pid)
        assert stop_previous(str(tmp_path)) == proc.pid
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert stop_previous(str(tmp_path)) is None  # the record now names a dead process: nothing to do
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("app", ["shell", "python"])
@pytest.mark.parametrize("mode", MODES)
def test_results_a_killed_launcher_had_not_written_are_recovered(site: Any, hello: Any, adder: Any, sleeper: Any, pids: List[int],
                                                                 mode: str, app: str) -> None:
    """The launcher's in-memory batch never reaches the DB (flush period of an hour, and a long job beside them
    keeps the launcher busy: one with nothing left to run writes at once); its journal does, with a Python app's
    return value."""
    configure(site.path, status_flush_period_s=3600.0)
    if app == "shell":
        jobs = runnable(site.store, [hello.submit(workdir=f"j/{i}", say_hello_to=str(i), node_packing_count=2) for i in range(5)])
    else:
        jobs = runnable(site.store, [adder.submit(workdir=f"j/{i}", x=i, y=100, node_packing_count=2) for i in range(5)])
    (long_job,) = runnable(site.store, [sleeper.submit("long", seconds=120, node_packing_count=2)])
    proc = start(site.path, mode)
    journal = site.layout.state / "journal"

    def journaled() -> bool:
        text = "".join(p.read_text() for p in journal.glob("*.jsonl")) if journal.is_dir() else ""
        return text.count('"RUN_DONE"') == len(jobs)

    try:
        wait_for(journaled, timeout=30, what="every RUN_DONE in the journal")
        pids.append(read_pid(site.path, "long"))
        assert all(s == "PREPROCESSED" for s in states(site.store, jobs + [long_job]).values())  # the DB has heard nothing
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _release_dead_leases(site)
    assert set(states(site.store, jobs).values()) == {"JOB_FINISHED"}  # finished: never run again
    assert states(site.store, [long_job])[long_job] == "RUN_TIMEOUT"  # its run, journaled, is on record
    for i, j in enumerate(jobs):
        assert job_row(site.store, j)["return_code"] == 0
        if app == "python":
            from balsam.api import Job

            assert Job.objects.get(id=j).result() == i + 100
        ev = events(site.store, j)
        assert [e["to"] for e in ev].count("RUNNING") == 1
        assert [e["data"].get("from_journal") is not None for e in ev if e["to"] in ("RUN_DONE", "POSTPROCESSED")] == [True, True]
    assert not list(journal.glob("*.jsonl"))  # the journal of an ended lease is removed


def test_a_running_job_of_a_dead_launcher_times_out_and_its_rerun_is_recorded(site: Any, sleeper: Any,
                                                                              pids: List[int]) -> None:
    configure(site.path, status_flush_period_s=3600.0)
    (job,) = runnable(site.store, [sleeper.submit("rr/0", seconds=120)])
    proc = start(site.path, "mpi")
    pid = read_pid(site.path, "rr/0")
    pids.append(pid)
    journal = site.layout.state / "journal"
    wait_for(lambda: '"RUNNING"' in "".join(p.read_text() for p in journal.glob("*.jsonl")), what="RUNNING journaled")
    assert states(site.store, [job])[job] == "PREPROCESSED"  # RUNNING is only in the journal
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _release_dead_leases(site)
    ev = events(site.store, job)
    assert [e["to"] for e in ev][-2:] == ["RUNNING", "RUN_TIMEOUT"]  # the run is in the history
    assert "the launcher died" in ev[-1]["data"]["message"]
    set_state(site.store, job, "RESTART_READY")  # what handle_timeout does
    configure(site.path, status_flush_period_s=0.05)
    proc = start(site.path, "mpi")
    try:
        wait_for(lambda: states(site.store, [job])[job] == "RUNNING", timeout=30, what="the re-run")
        rerun = [e for e in events(site.store, job) if e["to"] == "RUNNING"]
        assert len(rerun) == 2 and rerun[-1]["data"]["run"] == 2 and "run" not in rerun[0]["data"]
    finally:
        proc.kill()
        proc.wait()
        pids.append(read_pid(site.path, "rr/0"))


def test_a_jobs_leftover_background_processes_are_killed_when_it_ends(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Spawner(ApplicationDefinition):
        site = "test-site"
        command_template = "sleep 120 & echo $! > child; echo started"

    Spawner.sync()
    (job,) = runnable(site.store, [Spawner.submit("orph/0")])
    assert run(site, "mpi") == 0
    assert states(site.store, [job])[job] == "JOB_FINISHED"
    child = int((site.path / "data" / "orph" / "0" / "child").read_text())
    try:
        wait_for(lambda: not pid_alive(child), timeout=10, what="the job's background child to be killed")
    finally:
        kill_quietly(child)


def _own_session(stat_file: Path) -> int:
    """The session id a process recorded from its /proc/<pid>/stat (field 6)."""
    text = wait_for(lambda: stat_file.exists() and stat_file.read_text().strip(), what=f"{stat_file}")
    return int(text.rsplit(")", 1)[1].split()[3])


@pytest.mark.parametrize("mode", MODES)
def test_processes_a_job_left_in_sessions_of_their_own_are_killed_when_it_ends(site: Any, mode: str) -> None:
    """A child started with setsid, and a daemon (double fork, setsid), outlive the job's process group; the
    launcher adopts them (it is their subreaper) and knows them by the job marker in their environment."""
    from balsam.api import ApplicationDefinition

    class Detacher(ApplicationDefinition):
        site = "test-site"
        command_template = ("setsid sh -c 'cat /proc/$$/stat > setsid.stat; exec sleep 120' & "
                            "( setsid sh -c 'cat /proc/$$/stat > daemon.stat; exec sleep 120' & ); "
                            "while [ ! -s setsid.stat ] || [ ! -s daemon.stat ]; do sleep 0.05; done; echo started")

    Detacher.sync()
    (job,) = runnable(site.store, [Detacher.submit("detach/0")])
    proc = start(site.path, mode)  # it stays up (idle ttl 30 s): the cleanup is the job's end, not the launcher's
    workdir = site.path / "data" / "detach" / "0"
    found: List[int] = []
    try:
        wait_for(lambda: states(site.store, [job])[job] == "JOB_FINISHED", timeout=30, what="the job to finish")
        for name in ("setsid.stat", "daemon.stat"):
            pid = int((workdir / name).read_text().split()[0])
            found.append(pid)
            assert _own_session(workdir / name) == pid  # it led a session of its own: the job's group did not hold it
        for pid in found:
            wait_for(lambda p=pid: not pid_alive(p), timeout=10, what=f"the detached process {pid} to be killed")
        assert proc.poll() is None
    finally:
        _stop(proc, found)


def _stop(proc: "subprocess.Popen[bytes]", pids: List[int]) -> None:
    proc.terminate()
    proc.wait()
    for pid in pids:
        kill_quietly(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.mark.parametrize("mode", MODES)
def test_processes_a_python_run_left_behind_are_killed_when_it_ends(site: Any, mode: str) -> None:
    """A run() in a warm worker that starts processes and returns: the worker lives on, its leftovers do not."""
    from balsam.api import ApplicationDefinition, Job

    class Starter(ApplicationDefinition):
        site = "test-site"

        def run(self) -> list:  # type: ignore[type-arg]
            import subprocess

            procs = [subprocess.Popen(["sleep", "120"]), subprocess.Popen(["setsid", "sleep", "120"])]
            return [p.pid for p in procs]

    Starter.sync()
    (job,) = runnable(site.store, [Starter.submit("pyleft/0")])
    proc = start(site.path, mode)
    left: List[int] = []
    try:
        wait_for(lambda: states(site.store, [job])[job] == "JOB_FINISHED", timeout=30, what="the job to finish")
        left.extend(Job.objects.get(id=job).result())
        assert len(left) == 2
        for pid in left:
            wait_for(lambda p=pid: not pid_alive(p), timeout=10, what=f"process {pid} the run() left to be killed")
        assert proc.poll() is None
    finally:
        _stop(proc, left)


def test_a_killed_launchers_watchdog_kills_what_its_jobs_left_in_other_sessions(site: Any, sleeper: Any,
                                                                                pids: List[int]) -> None:
    from balsam.api import ApplicationDefinition

    class Detacher(ApplicationDefinition):
        site = "test-site"
        command_template = "echo $$ > pid; setsid sh -c 'echo $$ > daemon; exec sleep 120' & exec sleep 120"

    Detacher.sync()
    runnable(site.store, [Detacher.submit("wd/0")])
    proc = start(site.path, "mpi")
    pids.append(read_pid(site.path, "wd/0"))
    daemon_file = site.path / "data" / "wd" / "0" / "daemon"
    daemon = int(wait_for(lambda: daemon_file.exists() and daemon_file.read_text().strip(), what="the daemon's pid"))
    pids.append(daemon)
    assert pid_alive(daemon)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not pid_alive(pids[0]), timeout=20, what="the job to end with its launcher")
    wait_for(lambda: not pid_alive(daemon), timeout=20, what="the job's detached process to end with its launcher")


def test_kill_orphans_can_be_turned_off(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Spawner(ApplicationDefinition):
        site = "test-site"
        command_template = ("sleep 120 & echo $! > child; setsid sh -c 'echo $$ > detached; exec sleep 120' & "
                            "while [ ! -s detached ]; do sleep 0.05; done")

    Spawner.sync()
    configure(site.path, kill_orphans=False)
    runnable(site.store, [Spawner.submit("keep/0")])
    assert run(site, "mpi") == 0
    workdir = site.path / "data" / "keep" / "0"
    children = [int((workdir / name).read_text()) for name in ("child", "detached")]
    try:
        time.sleep(0.2)
        assert all(pid_alive(pid) for pid in children)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)


def test_a_failed_runs_event_keeps_a_bounded_tail_and_job_out_keeps_everything(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    class Noisy(ApplicationDefinition):
        site = "test-site"
        command_template = "printf '%0200000d' 0; echo; echo last words; exit 3"

    Noisy.sync()
    configure(site.path, error_tail_num_lines=5, error_tail_max_bytes=1000)
    (job,) = runnable(site.store, [Noisy.submit("noisy/0")])
    assert run(site, "mpi") == 0
    assert states(site.store, [job])[job] == "RUN_ERROR"
    error = events(site.store, job)[-1]["data"]["error"]
    assert error.endswith("last words") and len(error.encode()) <= 1100
    assert "full output is in job.out" in error
    assert (site.path / "data" / "noisy" / "0" / "job.out").stat().st_size > 200000
    assert events(site.store, job)[-1]["data"]["returncode"] == 3
    stored = site.store.execute("SELECT sum(length(data)) FROM event WHERE job_id=?", (job,))[0][0]
    assert stored < 1500  # not 64 KB per failed run


def test_the_journal_keeps_lines_it_cannot_write_until_it_can(small_disk: Path) -> None:
    from balsam.db.journal import JournalWriter, read
    from tests.helpers import fill

    writer = JournalWriter(small_disk / "state", 7)
    writer.append(1, "RUNNING", 1.0)
    assert writer.flush()
    fill(small_disk / "filler")
    for job_id in range(2, 2000):
        writer.append(job_id, "RUN_DONE", 2.0, {"returncode": 0}, {"return_code": 0})
    assert not writer.flush() and writer.pending  # the disk is full: kept, not dropped
    (small_disk / "filler").unlink()
    assert writer.close()
    assert [c.job_id for c in read(writer.path)] == list(range(1, 2000))  # every line, in order, none torn


class _FullDiskRun:
    """Two jobs of a site on the 8 MB tmpfs, running in a launcher thread until the test says go; markers of
    each run go outside the tmpfs."""

    def __init__(self, small_disk: Path, tmp_path: Path) -> None:
        import threading

        from balsam._api import sites
        from balsam.api import ApplicationDefinition
        from balsam.site import init_site

        init_site(small_disk / "site", name="full-site")
        self.ref = sites.resolve("full-site")
        self.disk, self.marks, self.go = small_disk, tmp_path / "marks", tmp_path / "go"
        self.marks.mkdir()

        class Marker(ApplicationDefinition):
            site = "full-site"
            command_template = ("echo ran >> " + str(self.marks) + "/{{ n }}; "
                                "while [ ! -e " + str(self.go) + " ]; do sleep 0.05; done")

        Marker.sync()
        self.jobs = runnable(self.ref.store, [Marker.submit(f"m/{i}", n=i, node_packing_count=2) for i in range(2)])
        self.result: List[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(run(self.ref, "mpi", idle_ttl_s=0.5, wall_time_min=5.0)))

    def start_and_fill(self) -> None:
        """Start the launcher; once both jobs run, fill the disk and let the jobs end."""
        from tests.helpers import fill

        self.thread.start()
        wait_for(lambda: set(self.states()) == {"RUNNING"}, timeout=30, what="every job RUNNING")
        fill(self.disk / "filler")

    def states(self) -> List[str]:
        return list(states(self.ref.store, self.jobs).values())

    def free(self) -> None:
        self.go.touch()
        (self.disk / "filler").unlink(missing_ok=True)

    def check_each_ran_once_and_finished(self) -> None:
        assert set(self.states()) == {"JOB_FINISHED"}
        for j in self.jobs:
            assert [e["to"] for e in events(self.ref.store, j)].count("RUNNING") == 1
        assert run(self.ref, "mpi") == 0  # nothing left to run
        assert sorted((self.marks / str(i)).read_text() for i in range(2)) == ["ran\n"] * 2  # each ran exactly once


def test_a_launcher_that_can_write_neither_db_nor_journal_keeps_its_results_until_it_can(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The site (DB and journal) is on a full 8 MB tmpfs when the jobs end: the launcher keeps their results,
    past the time it gives the DB alone (shortened here), until space is freed; then every result is recorded
    once and nothing runs again."""
    from balsam.launcher import base

    monkeypatch.setattr(base, "DB_WAIT_S", 0.5)
    fd = _FullDiskRun(small_disk, tmp_path)
    try:
        fd.start_and_fill()
        journal = next((fd.ref.path / ".balsam" / "journal").glob("*.jsonl"))
        with open(journal, "ab", buffering=0) as f:  # fill the journal's last page too (blank lines are skipped)
            while True:
                try:
                    f.write(b"\n")
                except OSError:
                    break
        fd.go.touch()  # the jobs end while nothing can be written
        time.sleep(5)
        assert fd.thread.is_alive()  # done, idle, and past DB_WAIT_S: still holding the results
        assert set(fd.states()) == {"RUNNING"}
        assert '"RUN_DONE"' not in journal.read_text()
    finally:
        fd.free()
        fd.thread.join(timeout=90)
    assert not fd.thread.is_alive() and fd.result == [0]
    fd.check_each_ran_once_and_finished()


def test_a_launcher_that_can_write_only_its_journal_leaves_its_results_there(small_disk: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The DB cannot take the results but the journal's last page can: after DB_WAIT_S (shortened here) the
    launcher goes; once there is space, releasing its lease (what the agent does) records every result."""
    from balsam.launcher import base

    monkeypatch.setattr(base, "DB_WAIT_S", 0.5)
    fd = _FullDiskRun(small_disk, tmp_path)
    try:
        fd.start_and_fill()
        fd.go.touch()
        fd.thread.join(timeout=60)
        assert not fd.thread.is_alive() and len(fd.result) == 1, fd.result  # it ended, not crashed at its log's flush
        assert set(fd.states()) == {"RUNNING"}  # the DB has heard nothing...
        (journal,) = (fd.ref.path / ".balsam" / "journal").glob("*.jsonl")  # its release failed: the journal stays
        assert journal.read_text().count('"RUN_DONE"') == 2  # ...the journal has it all
    finally:
        fd.free()
    from balsam.db import sessions

    with fd.ref.store.write() as conn:  # what the agent does once it can write: the launcher thread is gone
        sessions.release(conn, int(journal.stem), message="the launcher died")
    assert not journal.exists()
    fd.check_each_ran_once_and_finished()


def test_a_clock_jump_does_not_end_a_live_launchers_lease(site: Any, sleeper: Any, pids: List[int]) -> None:
    """NTP steps the home host's wall clock 10 minutes ahead while a launcher runs a job: its heartbeat looks 10
    minutes old, but it is alive: its lease is kept (its job is not timed out and re-run), and it finishes."""
    from balsam.db import sessions
    from balsam.db.meta import read_meta, write_meta
    from balsam.site import this_host

    (job,) = runnable(site.store, [sleeper.submit("jump/0", seconds=4)])
    proc = start(site.path, "mpi", idle_ttl_s=1.0)
    try:
        wait_for(lambda: states(site.store, [job])[job] == "RUNNING", timeout=30, what="the job RUNNING")
        pids.append(read_pid(site.path, "jump/0"))
        with site.store.write() as conn:  # an expiry check before the jump (the agent makes one every few seconds)
            assert sessions.expire_sessions(conn, expiry_s=300, host=this_host()) == []
        with site.store.write() as conn:
            # The wall clock steps 600 s ahead: seen from the new clock, every wall time stored is 600 s older.
            conn.execute("UPDATE session SET heartbeat=heartbeat-600")
            wall, boot = (read_meta(conn, "clock_seen") or "").split()
            write_meta(conn, "clock_seen", f"{float(wall) - 600!r} {boot}")
            assert sessions.expire_sessions(conn, expiry_s=300, host=this_host()) == []
        assert states(site.store, [job])[job] == "RUNNING"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    history = [e["to"] for e in events(site.store, job)]
    assert history.count("RUNNING") == 1 and "RUN_TIMEOUT" not in history and "RUN_DONE" in history



def _balsam_cli(*args: str) -> "subprocess.CompletedProcess[str]":
    import sys

    from tests.launcher_support import REPO

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "balsam", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_launcher_whose_workdirs_disk_fills_starts_nothing_new_and_resumes_once_space_is_freed(
        site: Any, small_disk: Path, tmp_path: Path) -> None:
    """The scratch filesystem holding the jobs' workdirs fills up while a launcher works through short jobs (the site
    DB, elsewhere, still takes writes). While it is full the launcher starts no new job (each would fail for lack
    of space), a job that failed then says why, and the launcher waits rather than ending; once space is freed
    everything resumes, and every job ran exactly as often as its history says. No traceback anywhere."""
    import shutil
    import sys

    from balsam.api import ApplicationDefinition
    from tests.helpers import fill
    from tests.launcher_support import REPO

    shutil.rmtree(site.path / "data")
    (small_disk / "data").mkdir()
    (site.path / "data").symlink_to(small_disk / "data")  # data/ on a scratch filesystem of its own
    marks = tmp_path / "marks"  # off the full disk: one line per run of each job
    marks.mkdir()

    class Short(ApplicationDefinition):
        site = "test-site"
        command_template = "echo ran >> " + str(marks) + "/{{ n }}; sleep 0.2; echo done {{ n }}"

    Short.sync()
    ids = runnable(site.store, [Short.submit(f"s/{i}", n=i, node_packing_count=4) for i in range(40)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out_path = tmp_path / "launcher.out"

    def launcher() -> "subprocess.Popen[bytes]":
        with open(out_path, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "balsam", "launcher", "--site", str(site.path), "-j", "mpi", "-t", "5",
                                     "--idle-ttl", "2"], env=env, stdout=out, stderr=subprocess.STDOUT)

    def runs() -> int:
        return sum(len(p.read_text().splitlines()) for p in marks.iterdir())

    proc = launcher()
    filler = small_disk / "filler"
    try:
        wait_for(lambda: list(states(site.store, ids).values()).count("JOB_FINISHED") >= 4, timeout=60, what="4 jobs done")
        fill(filler)
        time.sleep(2)  # jobs started just before the fill end
        started = runs()
        time.sleep(4)  # twice the idle TTL
        assert runs() == started, "jobs were started on a full disk"
        assert started < len(ids) and proc.poll() is None  # work left, and the launcher waits for space
        filler.unlink()
        wait_for(lambda: set(states(site.store, ids).values()) <= {"JOB_FINISHED", "RUN_ERROR"}, timeout=60, what="all ended")
    finally:
        filler.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.wait(timeout=60)  # idle: it ends after its idle TTL
    failed = [j for j, s in states(site.store, ids).items() if s == "RUN_ERROR"]
    for job_id in failed:  # started just before the fill, they failed for it and say so
        (error,) = [e["data"]["error"] for e in events(site.store, job_id) if e["to"] == "RUN_ERROR"]
        assert error.startswith("the disk holding the workdirs was full") and f"balsam job reset {job_id}" in error, error
    if failed:
        reset = _balsam_cli("job", "reset", *map(str, failed), "--site", str(site.path), "-y")
        assert reset.returncode == 0, reset.stderr
        proc = launcher()
        wait_for(lambda: set(states(site.store, ids).values()) == {"JOB_FINISHED"}, timeout=60, what="reset jobs done")
        proc.wait(timeout=60)
    assert set(states(site.store, ids).values()) == {"JOB_FINISHED"}
    for n, job_id in enumerate(ids):
        ran = len((marks / str(n)).read_text().splitlines())
        assert ran == [e["to"] for e in events(site.store, job_id)].count("RUNNING"), f"job {n} ran {ran} times"
    said = out_path.read_text()
    assert "Traceback" not in said and "Logging error" not in said, said[-3000:]
    assert "is full" in said and "starting jobs again" in said


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_jobs_held_ahead_wait_for_space_like_new_ones(site: Any, small_disk: Path, tmp_path: Path, mode: str) -> None:
    """A job runs on the only node while the next ones wait, acquired but not started (mpi mode's backlog; serial
    mode's node worker's queue). The
    workdirs' disk fills: when the node frees up, the held jobs do not start (each would fail for lack of space), and
    the launcher waits past its idle TTL; once space is freed they run, each once."""
    import shutil

    from balsam.api import ApplicationDefinition
    from tests.helpers import fill

    shutil.rmtree(site.path / "data")
    (small_disk / "data").mkdir()
    (site.path / "data").symlink_to(small_disk / "data")
    marks, go = tmp_path / "marks", tmp_path / "go"  # off the full disk
    marks.mkdir()

    class Held(ApplicationDefinition):
        site = "test-site"
        command_template = f"echo ran >> {marks}/{{{{ n }}}}; while [ ! -e {go} ]; do sleep 0.05; done"

    Held.sync()
    ids = runnable(site.store, [Held.submit(f"h/{i}", n=i, node_packing_count=1) for i in range(3)])
    proc = start(site.path, mode, wall_time_min=3, idle_ttl_s=1)
    filler = small_disk / "filler"
    try:
        wait_for(lambda: (marks / "0").exists(), timeout=60, what="the first job to run")
        wait_for(lambda: job_row(site.store, ids[1])["session_id"] is not None, timeout=30, what="the next job held ahead")
        assert not (marks / "1").exists()  # one node, one job at a time: job 1 waits, held ahead
        fill(filler)
        time.sleep(1.5)  # past the launcher's once-a-second look at the disk
        go.touch()  # the node frees up
        wait_for(lambda: states(site.store, ids[:1])[ids[0]] in ("RUN_DONE", "JOB_FINISHED"), timeout=30, what="job 0 done")
        time.sleep(3)  # three times the idle TTL
        assert sorted(p.name for p in marks.iterdir()) == ["0"], "a job held ahead started on a full disk"
        assert proc.poll() is None, "the launcher ended while jobs wait for space"
        filler.unlink()
        wait_for(lambda: set(states(site.store, ids).values()) == {"JOB_FINISHED"}, timeout=60, what="all jobs done")
    finally:
        filler.unlink(missing_ok=True)
        go.touch()
        if proc.poll() is None:
            proc.wait(timeout=60)  # idle: it ends after its idle TTL
    assert [len((marks / str(n)).read_text().splitlines()) for n in range(3)] == [1, 1, 1]
    said = (site.path / "launcher-test.out").read_text()
    assert "Traceback" not in said, said[-3000:]


@pytest.mark.slow
def test_a_write_on_a_full_disk_is_one_line_that_says_so_and_works_once_space_is_freed(small_disk: Path) -> None:
    from balsam.site import init_site
    from tests.helpers import fill

    root = small_disk / "site"
    init_site(root, name="full-site")
    (root / "apps.py").write_text("from balsam.api import ApplicationDefinition\n\n\nclass Echo(ApplicationDefinition):\n"
                                  "    site = 'full-site'\n    command_template = 'echo hi'\n")
    synced = _balsam_cli("app", "sync", str(root / "apps.py"), "--site", str(root))
    assert synced.returncode == 0, synced.stderr
    from balsam._api import sites

    assert sites.resolve("full-site").store.execute("SELECT count(*) FROM job") == [(0,)]  # open, as an agent keeps it
    fill(small_disk / "filler")
    create = _balsam_cli("job", "create", "-a", "Echo", "-w", "late", "--site", str(root))
    assert create.returncode == 1 and len(create.stderr.strip().splitlines()) == 1, create.stderr
    assert "the disk holding it is full" in create.stderr and "free some space and retry" in create.stderr, create.stderr
    (small_disk / "filler").unlink()
    create = _balsam_cli("job", "create", "-a", "Echo", "-w", "late", "--site", str(root))
    assert create.returncode == 0, create.stderr
    listed = _balsam_cli("job", "ls", "--site", str(root))
    assert listed.stdout.count("late") == 1
    check = _balsam_cli("db", "check", "--site", str(root))
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mpi", "serial", "serial-process"])
def test_a_launcher_stopped_past_its_lease_starts_none_of_the_jobs_it_held_when_it_resumes(site: Any, mode: str) -> None:
    """A launcher is stopped (SIGSTOP, Ctrl-Z) with jobs acquired and waiting to start; its lease expires and another
    launcher runs those jobs. When it resumes it must not start them again (it did, with no RUNNING recorded for
    the copy, which it killed once its RUNNING was refused: an unrecorded second start of a finished job): jobs
    start only under a lease the site confirmed recently, and a lease found gone drops them. In serial mode with
    node worker processes (other nodes) only the master is stopped: its workers, which went on starting the jobs
    queued with them, unrecorded, start nothing once the lease the master last confirmed is too old, and journal
    each start themselves."""
    from balsam.api import ApplicationDefinition

    class Counted(ApplicationDefinition):
        site = "test-site"
        command_template = "echo start >> marker; sleep 0.4"

    Counted.sync()
    configure(site.path, status_flush_period_s=0.2, session={"heartbeat_period_s": 0.5, "expiry_s": 5.0})
    ids = runnable(site.store, [Counted.submit(f"c/{i}", node_packing_count=2) for i in range(30)])

    def held_waiting() -> int:
        rows = site.store.execute("SELECT count(*) FROM job WHERE session_id IS NOT NULL AND state='PREPROCESSED'")
        return int(rows[0][0])

    workers = mode == "serial-process"
    if workers:
        runner = ("import sys; from balsam.launcher import run_launcher; "
                  f"sys.exit(run_launcher({str(site.path)!r}, job_mode='serial', wall_time_min=1.0, idle_ttl_s=3.0, serial_workers='process'))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        with open(site.path / "launcher-test.out", "ab") as out:
            first = subprocess.Popen([sys.executable, "-c", runner], env=env, stdout=out, stderr=subprocess.STDOUT)
        mode = "serial"
    else:
        first = start(site.path, mode, idle_ttl_s=3.0)
    second = None
    try:
        wait_for(lambda: held_waiting() >= 2, timeout=30, interval=0.005, what="jobs acquired ahead by the first launcher")
        if workers:  # once they run jobs, with more queued
            wait_for(lambda: (site.path / "data" / "c" / "0" / "marker").exists(), timeout=30, interval=0.005, what="a first job")
        first.send_signal(signal.SIGSTOP)
        time.sleep(6.0)  # past its lease's expiry
        second = start(site.path, mode, idle_ttl_s=3.0)  # expires the silent lease and runs its jobs
        done = {"JOB_FINISHED", "RUN_TIMEOUT"}
        wait_for(lambda: set(states(site.store, ids).values()) <= done, timeout=60, what="every job run by the second")
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=60) == 0 and second.wait(timeout=60) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    for i, job_id in enumerate(ids):
        marker = site.path / "data" / "c" / str(i) / "marker"
        runs = marker.read_text().count("start") if marker.exists() else 0
        recorded = [e["to"] for e in events(site.store, job_id)].count("RUNNING")
        # Never started without its RUNNING recorded, never twice. RUNNING is journaled just before the spawn, so a
        # launcher stopped between the two leaves a RUNNING that never ran, which its lease's expiry ends as RUN_TIMEOUT.
        assert runs <= recorded <= 1, f"job {i}: ran {runs} times, {recorded} recorded"
        assert runs == 1 or states(site.store, [job_id])[job_id] == "RUN_TIMEOUT", f"job {i}: never ran, yet not timed out"


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("app", ["shell", "python"])
def test_a_job_killed_from_outside_says_so_and_how_to_run_it_again(site: Any, pids: List[int], mode: str, app: str) -> None:
    """The OOM killer (kill -9) ends a job's process, or the warm Python worker running its run(): as in Balsam 0.7 it
    is not retried (RUN_ERROR, then FAILED by the default handle_error); its error names the signal and gives the
    `balsam job reset` that runs it again, which then does."""
    from balsam.api import ApplicationDefinition

    flag = site.path / "let-it-live"

    class Victim(ApplicationDefinition):
        site = "test-site"
        command_template = f"echo $$ > pid; while [ ! -e {flag} ]; do sleep 0.05; done"

    class PyVictim(ApplicationDefinition):
        site = "test-site"

        def run(self, flag: str) -> int:
            import os
            import time

            with open("pid", "w") as f:
                f.write(str(os.getpid()))
            while not os.path.exists(flag):
                time.sleep(0.05)
            return 7

    cls = Victim if app == "shell" else PyVictim
    cls.sync()
    (job,) = runnable(site.store, [Victim.submit("oom/0") if app == "shell" else PyVictim.submit("oom/0", flag=str(flag))])
    proc = start(site.path, mode, idle_ttl_s=1)
    try:
        pid = read_pid(site.path, "oom/0")
        pids.append(pid)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: states(site.store, [job])[job] == "RUN_ERROR", timeout=60, what="RUN_ERROR")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    data = [e["data"] for e in events(site.store, job) if e["to"] == "RUN_ERROR"][-1]
    assert data["returncode"] == -9, data
    assert f"ended by SIGKILL (the OOM killer, or kill -9 from outside): 'balsam job reset {job}' runs it again" in data["error"]
    from balsam.services.processing import ProcessingService
    from balsam.settings import ProcessingSettings, SessionSettings
    from balsam.site import this_host

    ProcessingService(site, ProcessingSettings(), SessionSettings(), this_host()).run_cycle()  # the default handle_error
    assert states(site.store, [job])[job] == "FAILED"
    show = _balsam_cli("job", "show", str(job), "--site", str(site.path))
    assert "SIGKILL" in show.stdout and f"balsam job reset {job}" in show.stdout, show.stdout + show.stderr
    reset = _balsam_cli("job", "reset", str(job), "--site", str(site.path), "-y")
    assert reset.returncode == 0, reset.stderr
    flag.touch()
    assert run(site, mode) == 0
    assert states(site.store, [job])[job] in ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
