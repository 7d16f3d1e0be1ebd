"""Processes a test leaves behind: agents, launchers, workers and servers it started that still run after it ends.

A test's processes are told by what they inherit from it: its BALSAM_HOME (the autouse ``balsam_home`` fixture sets
one per test), its tmp_path in their command line (``--site <tmp_path>/...``), or a working directory under it.
Only processes that appeared while the test ran are looked at, so a session's or module's own servers are not
counted. Linux only (/proc); elsewhere nothing is found.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Set

PROC = Path("/proc")
GRACE_S = 15.0
"""How long a process found after its test may take to finish stopping (a stopped agent's workers end within seconds)."""
SHARED = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
"""Helpers that the test process itself keeps for its whole life (started by the first test that needed them)."""


def pids() -> Set[int]:
    """The pids that exist now."""
    try:
        return {int(p.name) for p in PROC.iterdir() if p.name.isdigit()}
    except OSError:
        return set()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    stat = _read(PROC / str(pid) / "stat")
    return bool(stat) and stat.rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")


def owned(before: Set[int], home: Path, tmp_path: Path) -> Dict[int, str]:
    """{pid: command line} of the running processes not in ``before`` that belong to the test (see the module)."""
    me = os.getpid()
    home_var = b"BALSAM_HOME=" + os.fsencode(home)
    tmp = os.fsencode(tmp_path)
    out: Dict[int, str] = {}
    for pid in pids() - before:
        if pid == me or not _running(pid):
            continue
        proc = PROC / str(pid)
        cmdline = _read(proc / "cmdline")
        if not cmdline or any(s.encode() in cmdline for s in SHARED):
            continue
        try:
            cwd = os.fsencode(os.readlink(proc / "cwd"))
        except OSError:
            cwd = b""
        environ = b"\0" + _read(proc / "environ") + b"\0"
        args = b"\0" + cmdline + b"\0"
        if (b"\0" + home_var + b"\0" in environ or tmp + b"/" in args or b"\0" + tmp + b"\0" in args
                or cwd == tmp or cwd.startswith(tmp + b"/")):
            out[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return out


def left_behind(before: Set[int], home: Path, tmp_path: Path) -> Dict[int, str]:
    """The test's processes still running after :data:`GRACE_S` (they are then killed, so they stop piling up)."""
    deadline = time.monotonic() + GRACE_S
    found = owned(before, home, tmp_path)
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = {p: c for p, c in found.items() if _running(p)}
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found


def describe(found: Dict[int, str]) -> List[str]:
    """One line per process: pid and command line (shortened)."""
    return [f"  pid {pid}: {cmd[:300]}" for pid, cmd in sorted(found.items())]
