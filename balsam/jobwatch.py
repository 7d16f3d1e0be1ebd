"""The job watchdog process: a launcher's jobs do not outlive it, however it dies.

Each job runs in its own session (so a signal to the launcher's terminal does not reach it), which also means
that killing the launcher, even its whole process group with SIGKILL, would leave the jobs running. So each
launcher (:class:`balsam.launcher.watchdog.Watchdog`) starts this process, in a session of its own, reading a
pipe whose only writer is the launcher: ``+PGID`` when a job (or a warm Python worker) starts, ``-PGID`` when
it ends. When the launcher dies the kernel closes its end of the pipe; the watchdog reads end-of-file, sends
SIGTERM to every group still listed, SIGKILL after a grace period, then (given the launcher's nonce) SIGKILL
to every process of this user that carries the nonce in its environment: what the jobs left in sessions of
their own (``setsid``, daemons; see :mod:`balsam.launcher.orphans`).

It imports nothing but the standard library and starts without ``site`` (``python -S -m balsam.jobwatch``),
so it costs the launcher a few milliseconds of CPU, not the ~0.1 s of importing the launcher package.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Dict, Iterable, List, Optional, Set, Tuple

MODULE = "balsam.jobwatch"
GRACE_S = 2.0
READ_PAUSE_S = 0.2
RESCAN_PAUSES_S = (0.0, 0.1, 0.4)
"""Looks for processes carrying the launcher's nonce, after these pauses: a job whose spawn was under way when the
launcher died (glibc's posix_spawn returns only once the child has exec'd) shows its environment only once it
has exec'd, and may not be in any listed group."""
NONCE_ENV = "BALSAM_LAUNCHER_NONCE"
"""Set in every job's environment: which launcher started it (inherited by everything the job starts)."""
JOB_ENV = "BALSAM_JOB_ID"


def group_alive(pgid: int) -> bool:
    """True while process group ``pgid`` has a member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_groups(groups: List[int], grace_s: float) -> None:
    """SIGTERM to each group, SIGKILL to those still there after ``grace_s``."""
    for g in groups:
        try:
            os.killpg(g, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_alive(g) for g in groups):
        time.sleep(0.05)
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except OSError:
            pass


def kill_process(pid: int) -> None:
    """SIGKILL a process and the group it leads, if it leads one (a setsid'd process does)."""
    for send in (os.killpg, os.kill):
        try:
            send(pid, signal.SIGKILL)
        except OSError:
            pass


def environ(pid: int) -> Optional[bytes]:
    """A process's environment as it started (NUL-separated), None if it is gone or not ours to read. Empty
    while the process is between two programs (in execve): look again."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def marker(pid: int, raw: Optional[bytes] = None) -> Optional[Tuple[str, int]]:
    """(launcher nonce, job id) from a process's environment (``raw``, default read now), or None if it
    carries no marker (or is gone, or is not ours to read)."""
    raw = environ(pid) if raw is None else raw
    if not raw:
        return None
    found: Dict[bytes, bytes] = {}
    for item in raw.split(b"\0"):
        if item.startswith(b"BALSAM_"):
            key, _, value = item.partition(b"=")
            found[key] = value
    nonce, job = found.get(NONCE_ENV.encode()), found.get(JOB_ENV.encode())
    if nonce is None or job is None or not job.isdigit():
        return None
    return nonce.decode(errors="replace"), int(job)


def _marks(pids: Optional[Iterable[int]]) -> Iterable[Tuple[int, Tuple[str, int]]]:
    """(pid, (nonce, job id)) of this user's processes (among ``pids``, default all) that carry a job marker."""
    me, uid = os.getpid(), os.getuid()
    if pids is None:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    for pid in pids:
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        mark = marker(pid)
        if mark is not None:
            yield pid, mark


def marked(nonce: str, pids: Optional[Iterable[int]] = None) -> List[int]:
    """Processes of this user (among ``pids``, default all) whose environment names ``nonce`` and a job."""
    return [pid for pid, (owner, _job) in _marks(pids) if owner == nonce]


def copies_of(job_id: int, nonce: str, pids: Optional[Iterable[int]] = None) -> List[int]:
    """Processes of this user that belong to job ``job_id`` (by their environment) but were started by another
    launcher than the one whose nonce is ``nonce``: an earlier copy of the job a dead launcher left running."""
    return [pid for pid, (owner, job) in _marks(pids) if job == job_id and owner != nonce]


def watch(fd: int, grace_s: float = GRACE_S, nonce: Optional[str] = None) -> int:
    """Read ``+PGID``/``-PGID`` lines until end-of-file, then stop every group still listed, and with a
    ``nonce`` every process that carries it."""
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
    live = [g for g in groups if group_alive(g)]
    if live:
        print(f"balsam watchdog: the launcher is gone; stopping {len(live)} job process group(s): {sorted(live)}", flush=True)
        kill_groups(live, grace_s)
    if nonce:
        killed: Set[int] = set()
        for pause in RESCAN_PAUSES_S:
            time.sleep(pause)
            left = [pid for pid in marked(nonce) if pid not in killed]
            for pid in left:
                kill_process(pid)
            killed.update(left)
        if killed:
            print(f"balsam watchdog: killed {len(killed)} process(es) the launcher's jobs left: {sorted(killed)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(watch(int(sys.argv[1]), nonce=sys.argv[2] if len(sys.argv) > 2 else None))
