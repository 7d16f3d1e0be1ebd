"""Jobs do not outlive the launcher that started them.

Each job runs in its own session (so a signal to the launcher's terminal does not reach it), which also means
that killing the launcher, even its whole process group with SIGKILL, leaves the jobs running: a second copy
would then run in the same directory when the job is retried. Two guards, both cheap:

* **A watchdog process** per executor (:mod:`balsam.jobwatch`, stdlib only), in a session of its own, reading
  a pipe whose only writer is the launcher. The launcher writes ``+PGID`` when a job (or a warm Python worker)
  starts and ``-PGID`` when it ends. When the launcher dies, however it dies, the kernel closes its end of the
  pipe; the watchdog reads end-of-file, stops every group still listed and what the jobs left in sessions of
  their own, and exits.
* **A pid record** in the job's workdir (``.balsam-job.pid``: pid, process start time, host), written once the
  job has run for half a second (the watchdog alone covers shorter ones). Before a job
  starts again in that workdir, a launcher on the same host kills the recorded process group if that very
  process (pid and start time) still runs, and waits until it is gone. This covers a watchdog that was
  killed too.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from typing import Container, List, Mapping, Optional

from balsam.db.sessions import process_alive, process_start_time
from balsam.jobwatch import GRACE_S, MODULE, copies_of, kill_groups, kill_process

logger = logging.getLogger(__name__)

PID_RECORD = ".balsam-job.pid"
BENCH_UNGUARDED_ENV = "_BALSAM_BENCH_UNGUARDED"
"""For benchmarks only (``bench/bench_launcher.py``): set to ``1`` in a launcher's environment (read by its entry
points into ``LauncherConfig.guarded``), it runs without its journal, watchdog and pid records, so the bench can
show in one run what they cost. Deliberately not a setting: without them a killed launcher loses results and
leaves copies of its jobs running."""
_HOST = socket.gethostname()


class Watchdog:
    """The launcher's side: start the watchdog process, tell it which process groups are jobs."""

    def __init__(self, log_path: str, home: str, env: Mapping[str, str], nonce: Optional[str] = None,
                 enabled: bool = True) -> None:
        self.log_path = log_path
        self.nonce = nonce
        """When set, the watchdog also kills every process of this user carrying it (:mod:`balsam.jobwatch`)."""
        self.home = home
        self.env = env
        self.pid: Optional[int] = None
        self._w: Optional[int] = None
        self.enabled = enabled
        self._lines: List[bytes] = []

    def start(self) -> None:
        """Spawn the watchdog (once); a failure is logged and the launcher goes on without it."""
        if self._w is not None or not self.enabled:
            return
        from balsam.launcher.spawn import python_env, spawn

        r, w = os.pipe()
        try:
            # -S: no site packages to scan; the watchdog needs only the standard library (and PYTHONPATH).
            argv = [sys.executable, "-S", "-m", MODULE, str(r)] + ([self.nonce] if self.nonce else [])
            env = python_env(self.env, None)
            self.pid = spawn(argv, cwd=self.home, env=env, output=self.log_path, append=True, pass_fds=[r])
            self._w = w
        except OSError as exc:
            logger.warning("cannot start the job watchdog (%s): jobs may outlive a killed launcher", exc)
            os.close(w)
            self.enabled = False
        finally:
            os.close(r)

    def _send(self, line: bytes) -> None:
        if self._w is None:
            return
        try:
            os.write(self._w, line)
        except OSError as exc:
            logger.warning("the job watchdog is gone (%s)", exc)
            os.close(self._w)
            self._w = None

    def add(self, pgid: int) -> None:
        """A job's process group started: told at once (from any thread)."""
        self._send(b"+%d\n" % pgid)

    def discard(self, pgid: int) -> None:
        """A job's process group ended or was cleaned up: told at the next :meth:`flush` (from the thread that
        calls it)."""
        if self._w is not None:
            self._lines.append(b"-%d\n" % pgid)

    def flush(self) -> None:
        """Tell the watchdog which groups ended since the last call, in one write (the launcher calls it once per
        pass of its loop: a group that ended is harmless in the watchdog's list meanwhile)."""
        if self._lines and self._w is not None:
            lines = b"".join(self._lines)
            self._lines.clear()
            self._send(lines)

    def close(self) -> None:
        """Orderly end: the watchdog sees end-of-file with nothing listed and exits."""
        self.flush()
        if self._w is not None:
            os.close(self._w)
            self._w = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass


# ------------------------------------------------------------------------------------------ pid records
def write_record(workdir: str, pid: int) -> None:
    """Record the job's process in its workdir (best effort: a full disk must not stop the job)."""
    start = process_start_time(pid)
    try:
        fd = os.open(f"{workdir}/{PID_RECORD}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{pid} {start if start is not None else '-'} {_HOST}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def stop_previous(workdir: str, timeout_s: float = 30.0, spare: Container[int] = ()) -> Optional[int]:
    """If an earlier copy of this job still runs on this host (a launcher died), kill its process group and
    wait until it is gone; returns its pid, or None if there was none. Processes in ``spare`` (the caller's
    own running jobs: another job may share the workdir) are never stopped."""
    try:
        with open(f"{workdir}/{PID_RECORD}") as f:
            words = f.read().split()
    except OSError:
        return None
    if len(words) != 3 or not words[0].isdigit() or words[2] != _HOST:
        return None
    pid = int(words[0])
    start = None if words[1] == "-" else float(words[1])
    if pid == os.getpid() or pid in spare or start is None or not _running(pid, start):
        return None
    logger.warning("an earlier copy of the job in %s still runs (pid %d): stopping it before the job runs again", workdir, pid)
    kill_groups([pid], GRACE_S)
    deadline = time.monotonic() + timeout_s
    while _running(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def stop_copies(job_id: int, nonce: str, timeout_s: float = 30.0) -> List[int]:
    """Before a job runs again on this host: kill every process still carrying the job's id from another
    launcher (a copy its dead launcher's watchdog has not stopped yet: the job was released the moment that
    launcher was seen gone) and wait until they are gone; returns their pids. Covers copies too young to have
    a pid record, and what they left in sessions of their own."""
    found = copies_of(job_id, nonce)
    if not found:
        return []
    logger.warning("job %d: an earlier copy still runs (pids %s): stopping it before the job runs again", job_id, found)
    for pid in found:
        kill_process(pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in found):
        time.sleep(0.02)
    return found


def _proc_state(pid: int) -> Optional[bytes]:
    """The process's state letter from /proc (``b"Z"`` for a zombie); None when it cannot be read (gone, or no
    /proc on this system)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :][:1]
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (pids found by scanning /proc)."""
    state = _proc_state(pid)
    return state is not None and state != b"Z"


def _running(pid: int, start: float) -> bool:
    """The recorded process still runs (a zombie has ended: its parent just has not reaped it). Without a
    readable /proc entry the signal-0 check decides."""
    return process_alive(pid, start) and _proc_state(pid) != b"Z"
