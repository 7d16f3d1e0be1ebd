"""A writer stopped (SIGSTOP, Ctrl-Z, a debugger) while it holds the site DB's writer lock: every other writer waits
for it, and says after a few seconds which process holds the lock, that it is stopped, and how to resume it. When
it resumes, everything goes on and nothing was lost or written twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from balsam.db.lockwait import holder
from tests.launcher_support import REPO


def _env() -> dict:  # type: ignore[type-arg]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


@pytest.fixture
def stopped_writer(site: Any, hello: Any) -> Iterator["subprocess.Popen[str]"]:
    """A process that stops itself (SIGSTOP) inside a write transaction of the site: it holds the writer lock and
    has changed a job it made, not committed yet."""
    yield from _stopped_writer(hello)


def _stopped_writer(hello: Any) -> Iterator["subprocess.Popen[str]"]:
    script = textwrap.dedent("""
        import os, signal
        from balsam._api import sites
        from balsam.api import Job
        job = Job.objects.get(workdir="held")
        store = sites.resolve("test-site").store
        with store.write() as conn:
            conn.execute("UPDATE job SET wall_time_min=42 WHERE id=?", (int(job.id),))
            print("holding", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        print("committed", flush=True)
    """)
    hello.submit(workdir="held", say_hello_to="x")
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


def _wait_for_text(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = path.read_text() if path.exists() else ""
        if text in got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path}: {path.read_text() if path.exists() else '(none)'}")


@pytest.mark.slow
def test_a_cli_write_waiting_on_a_stopped_holder_names_it_and_completes_when_it_resumes(
        site: Any, hello: Any, stopped_writer: "subprocess.Popen[str]", tmp_path: Path) -> None:
    from balsam.api import Job

    err = tmp_path / "create.err"
    with open(err, "w") as stderr:
        create = subprocess.Popen([sys.executable, "-m", "balsam", "job", "create", "-a", "Hello", "-w", "new",
                                   "-p", "say_hello_to=y", "--site", str(site.path)], env=_env(), cwd=site.path,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        said = _wait_for_text(err, "kill -CONT", timeout=40)
        line = next(x for x in said.splitlines() if "kill -CONT" in x)
        assert f"pid {stopped_writer.pid} " in line and "which is stopped" in line and "writer lock" in line, line
        assert create.poll() is None  # still waiting, not given up with an error
        assert Job.objects.filter(workdir="new").count() == 0
        stopped_writer.send_signal(signal.SIGCONT)
        out, _ = create.communicate(timeout=60)
    finally:
        if create.poll() is None:
            create.kill()
            create.wait()
    assert create.returncode == 0, err.read_text()
    assert "Created job" in out
    assert "got the site DB's writer lock" in err.read_text()
    assert stopped_writer.wait(timeout=30) == 0
    assert Job.objects.filter(workdir="new").count() == 1
    assert Job.objects.get(workdir="held").wall_time_min == 42  # the stopped write was committed, once


def test_the_holder_of_a_lock_is_named_running_or_stopped(tmp_path: Path) -> None:
    lock = tmp_path / "db.lock"
    lock.touch()
    script = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
              "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        if not Path("/proc/locks").exists():
            pytest.skip("no /proc/locks on this OS: the holder cannot be told")
        who = holder(lock)
        assert who is not None and who.pid == proc.pid and not who.stopped
        assert who.command.startswith(sys.executable) and "still running" in who.describe()
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not (who := holder(lock)) or not who.stopped:
            assert time.monotonic() < deadline, who
            time.sleep(0.05)
        assert f"kill -CONT {proc.pid}" in who.describe()
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
    assert holder(lock) is None  # nobody holds it once its holder is gone


_CHURN = """
import fcntl, os, random, sys
fds = [os.open(os.path.join(sys.argv[1], f"{sys.argv[2]}.{i}"), os.O_RDWR | os.O_CREAT) for i in range(30)]
print("churning", flush=True)
while True:  # take and release a changing number of locks: the entries before the holder's come and go
    k = random.randrange(len(fds))
    for fd in fds[:k]:
        fcntl.flock(fd, fcntl.LOCK_EX)
    for fd in fds[:k]:
        fcntl.flock(fd, fcntl.LOCK_UN)
"""
_HOLD_MANY = """
import fcntl, os, sys, time
fds = [os.open(os.path.join(sys.argv[1], f"other.{i}"), os.O_RDWR | os.O_CREAT) for i in range(int(sys.argv[2]))]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_holder_is_named_while_other_processes_lock_and_unlock_all_the_time(tmp_path: Path) -> None:
    """On a busy machine /proc/locks is longer than the page the kernel hands out per read, and it changes between
    reads: a holder that was there all along used to be missed now and then (about 1 read in 200 here), and a
    client on another host was told its writes waited for "another process" instead of the stopped pid."""
    if not Path("/proc/locks").exists():
        pytest.skip("no /proc/locks on this OS: the holder cannot be told")
    lock = tmp_path / "db.lock"
    lock.touch()
    script = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
              "print('locked', flush=True); time.sleep(600)")
    procs: List["subprocess.Popen[str]"] = []
    try:
        for argv in ([script, str(lock)], [_HOLD_MANY, str(tmp_path), "150"],
                     *([_CHURN, str(tmp_path), f"churn{i}"] for i in range(4))):
            procs.append(subprocess.Popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE, text=True))
            assert procs[-1].stdout is not None and procs[-1].stdout.readline().strip() in ("locked", "churning")
        assert len(Path("/proc/locks").read_text()) > 4096  # more than one page, whatever else runs
        named = [holder(lock) for _ in range(2000)]
        missed = sum(1 for who in named if who is None or who.pid != procs[0].pid)
        assert missed == 0, f"the holder was missed {missed} times in {len(named)}"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_request_from_another_host_that_stalls_on_a_stopped_holder_says_so(site: Any, hello: Any) -> None:
    """A client on another host writes through the site agent while a stopped process holds the writer lock: its
    request times out, and the error says the agent runs but its writes wait for that pid, which is stopped (it
    said "is it running? start it with 'balsam site start'", of an agent that was running)."""
    from balsam.exceptions import ServiceError
    from balsam.http.client import HttpBackend, HttpClient
    from balsam.services.agent import start_agent, stop_agent

    start_agent(site.path)
    holding = _stopped_writer(hello)
    try:
        stopped_writer = next(holding)
        backend = HttpBackend(HttpClient(site.path / ".balsam", retry_s=1.0, timeout_s=8.0))
        with pytest.raises(ServiceError) as info:
            backend.create_session(host="login-2", pid=1234, batch_job_id=None, label="stalled")
        said = str(info.value)
        assert "runs but did not answer" in said and f"held by pid {stopped_writer.pid} " in said, said
        assert f"which is stopped ('kill -CONT {stopped_writer.pid}' there resumes it)" in said, said
        assert "is it running" not in said
        stopped_writer.send_signal(signal.SIGCONT)
        assert stopped_writer.wait(timeout=30) == 0
        session = backend.create_session(host="login-2", pid=1234, batch_job_id=None, label="after")  # going again
        assert session > 0
    finally:
        holding.close()
        stop_agent(site.path)
    log = (site.path / "log" / "service.log").read_text()
    assert f"held by pid {stopped_writer.pid} " in log and "which is stopped" in log
