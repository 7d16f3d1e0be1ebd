"""Jobs do not outlive the launcher that started them.

Each job runs in its own session (so a signal to the launcher's terminal does not reach it), which also means
that killing the launcher, even its whole process group with SIGKILL, leaves the jobs running: a second copy
would then run in the same directory when the job is retried. Two guards, both cheap:

* **A watchdog process** per executor, in a session of its own, reading a pipe whose only writer is the
  launcher. The launcher writes ``+PGID`` when a job (or a warm Python worker) starts and ``-PGID`` when it
  ends. When the launcher dies, however it dies, the kernel closes its end of the pipe; the watchdog reads
  end-of-file, sends SIGTERM to every group still listed, SIGKILL after a grace period, and exits.
* **A pid record** in the job's workdir (``.balsam-job.pid``: pid, process start time, host), written once the
  job has run for half a second (the watchdog alone covers shorter ones). Before a job
  starts again in that workdir, a launcher on the same host kills the recorded process group if that very
  process (pid and start time) still runs, and waits until it is gone. This covers a watchdog that was
  killed too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import List, Mapping, Optional, Set

from balsam.db.sessions import process_alive, process_start_time

logger = logging.getLogger(__name__)

PID_RECORD = ".balsam-job.pid"
WATCHDOG_MODULE = "balsam.launcher.watchdog"
GRACE_S = 2.0
READ_PAUSE_S = 0.2
_HOST = socket.gethostname()


class Watchdog:
    """The launcher's side: start the watchdog process, tell it which process groups are jobs."""

    def __init__(self, log_path: str, home: str, env: Mapping[str, str]) -> None:
        self.log_path = log_path
        self.home = home
        self.env = env
        self.pid: Optional[int] = None
        self._w: Optional[int] = None

    def start(self) -> None:
        """Spawn the watchdog (once); a failure is logged and the launcher goes on without it."""
        if self._w is not None:
            return
        from balsam.launcher.spawn import python_env, python_module_argv, spawn

        r, w = os.pipe()
        try:
            argv = python_module_argv(WATCHDOG_MODULE) + [str(r)]
            env = python_env(self.env, None)
            self.pid = spawn(argv, cwd=self.home, env=env, output=self.log_path, append=True, pass_fds=[r])
            self._w = w
        except OSError as exc:
            logger.warning("cannot start the job watchdog (%s): jobs may outlive a killed launcher", exc)
            os.close(w)
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
        """A job's process group started."""
        self._send(b"+%d\n" % pgid)

    def discard(self, pgid: int) -> None:
        """A job's process group ended (or was cleaned up)."""
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """Orderly end: the watchdog sees end-of-file with nothing listed and exits."""
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


def stop_previous(workdir: str, timeout_s: float = 30.0) -> Optional[int]:
    """If an earlier copy of this job still runs on this host (a launcher died), kill its process group and
    wait until it is gone; returns its pid, or None if there was none."""
    try:
        with open(f"{workdir}/{PID_RECORD}") as f:
            words = f.read().split()
    except OSError:
        return None
    if len(words) != 3 or not words[0].isdigit() or words[2] != _HOST:
        return None
    pid = int(words[0])
    start = None if words[1] == "-" else float(words[1])
    if pid == os.getpid() or start is None or not _running(pid, start):
        return None
    logger.warning("an earlier copy of the job in %s still runs (pid %d): stopping it before the job runs again", workdir, pid)
    _kill_groups([pid], GRACE_S)
    deadline = time.monotonic() + timeout_s
    while _running(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _running(pid: int, start: float) -> bool:
    """The recorded process still runs (a zombie has ended: its parent just has not reaped it)."""
    if not process_alive(pid, start):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 :][:1] != b"Z"
    except (OSError, ValueError):
        return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_groups(groups: List[int], grace_s: float) -> None:
    for g in groups:
        try:
            os.killpg(g, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.05)
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------ the watchdog
def watch(fd: int, grace_s: float = GRACE_S) -> int:
    """Read ``+PGID``/``-PGID`` lines until end-of-file, then stop every group still listed."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end decides; a batch system's kill -9 still works
    groups: Set[int] = set()
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        if not chunk:
            break
        time.sleep(READ_PAUSE_S)  # let lines gather: a wake-up per job would cost the launcher's jobs CPU
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if len(line) > 1 and line[1:].isdigit():
                (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
    live = [g for g in groups if _group_alive(g)]
    if live:
        print(f"balsam watchdog: the launcher is gone; stopping {len(live)} job process group(s): {sorted(live)}", flush=True)
        _kill_groups(live, grace_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(watch(int(sys.argv[1])))
