"""Detached background processes that keep a record file: start and end times, exit code, identity.

The local scheduler (a BatchJob is a background ``bash script``) and the cp/rsync transfer adapters (a
transfer task is a background shell script) both start work that must outlive the process that started it,
and both must later answer "is it still running, and how did it end?" even after a restart. They share this
module: the work runs under a tiny bash wrapper that appends ``start`` and ``end`` lines to a record file,
and the starter appends the PID and the process's creation time, so a recycled PID is never mistaken for
the original process.

Record lines (append-only, ``key values...``)::

    pid 12345 1732440000.12          written by the starter: PID and psutil create_time
    submitted 1732440000.10          written by the starter
    meta queue local                 written by the starter: free-form facts (queue, project, ...)
    start 12345 1732440000.15        written by the wrapper as it begins
    end 0 1732440100.02              written by the wrapper (or by terminate) with the exit code
    cancelled 1732440050.00          written by terminate
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import psutil

# The wrapper runs its command as a child, forwards TERM/INT/HUP to it, and records how it ended. The child
# sees its job id (the wrapper's PID) as BALSAM_LOCAL_JOB_ID. It uses
# $EPOCHREALTIME (bash 5) when present and falls back to `date +%s` (macOS ships bash 3.2).
WRAPPER_SCRIPT = r"""rec=$1; shift
now() { printf '%s' "${EPOCHREALTIME:-$(date +%s)}"; }
printf 'start %s %s\n' "$$" "$(now)" >> "$rec"
export BALSAM_LOCAL_JOB_ID=$$
"$@" </dev/null &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
printf 'end %s %s\n' "$rc" "$(now)" >> "$rec"
exit "$rc"
"""

WRAPPER_NAME = "balsam-detached"


def wrapper_argv(command: Sequence[str], record_path: Union[str, "os.PathLike[str]"]) -> List[str]:
    """The argv that runs ``command`` under the recording wrapper (pure)."""
    return ["bash", "-c", WRAPPER_SCRIPT, WRAPPER_NAME, str(record_path), *[str(c) for c in command]]


@dataclass
class ProcessRecord:
    """What a record file says about one detached process."""

    pid: Optional[int] = None
    create_time: Optional[float] = None
    started_pid: Optional[int] = None
    """The PID the wrapper wrote as it began (it is the process the starter started): the only note of it when the
    starter died before writing its ``pid`` line."""
    submitted: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None
    returncode: Optional[int] = None
    cancelled: Optional[float] = None
    meta: Dict[str, str] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """True once an ``end`` line was written."""
        return self.end is not None


def _float(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def parse_record(text: str) -> ProcessRecord:
    """Parse a record file's text (pure). Unknown or malformed lines are ignored."""
    rec = ProcessRecord()
    for line in text.splitlines():
        parts = line.split(None, 2)
        if not parts:
            continue
        key, args = parts[0], parts[1:]
        if key == "pid" and args:
            rec.pid = int(args[0]) if args[0].isdigit() else rec.pid
            if len(args) > 1:
                rec.create_time = _float(args[1])
        elif key == "submitted" and args:
            rec.submitted = _float(args[0])
        elif key == "start" and len(args) > 1:
            rec.started_pid = int(args[0]) if args[0].isdigit() else rec.started_pid
            rec.start = _float(args[1])
        elif key == "end" and len(args) > 1 and rec.end is None:
            try:
                rec.returncode = int(args[0])
            except ValueError:
                rec.returncode = None
            rec.end = _float(args[1])
        elif key == "cancelled" and args:
            rec.cancelled = _float(args[0])
        elif key == "meta" and args:
            rec.meta[args[0]] = args[1] if len(args) > 1 else ""
    return rec


def append_record(path: Path, *lines: str) -> None:
    """Append lines to a record file (one write; each line is far below PIPE_BUF, so appends never mix)."""
    data = "".join(line.rstrip("\n") + "\n" for line in lines)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def read_record(path: Path) -> Optional[ProcessRecord]:
    """Read and parse a record file; None if it does not exist."""
    try:
        return parse_record(path.read_text())
    except FileNotFoundError:
        return None


def create_time_of(pid: int) -> Optional[float]:
    """The creation time psutil reports for ``pid``, or None if there is no such process."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def wrapper_of(record_path: Path) -> Optional[int]:
    """The PID of a running wrapper that writes to ``record_path`` (its argv names the record), if any: a process
    started just before its starter died, too early to have written its ``start`` line."""
    wanted = str(record_path)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if WRAPPER_NAME in cmdline and wanted in cmdline:
            return int(proc.pid)
    return None


def is_alive(pid: Optional[int], create_time: Optional[float]) -> bool:
    """True if ``pid`` runs and is the same process (same creation time) and not a zombie."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 0.5:
            return False  # the PID was recycled by an unrelated process
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _running(proc: psutil.Process) -> bool:
    """True while ``proc`` (the same process, not a recycled PID) runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _family(roots: Sequence[psutil.Process], pgid: Optional[int]) -> Dict[int, psutil.Process]:
    """The running processes among ``roots``, their descendants and the members of process group ``pgid`` (one pass
    over the process table; zombies left out: an orphan that init never reaps is dead all the same)."""
    table: Dict[int, psutil.Process] = {}
    children: Dict[int, List[int]] = {}
    group: List[int] = []
    for proc in psutil.process_iter(["ppid"]):
        table[proc.pid] = proc
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
        if pgid is not None:
            try:
                if os.getpgid(proc.pid) == pgid:
                    group.append(proc.pid)
            except OSError:
                pass
    found: Dict[int, psutil.Process] = {}
    todo = [p for p in roots if _running(p)]
    found.update((p.pid, p) for p in todo)
    while todo:
        for child in children.get(todo.pop().pid, []):
            if child not in found:
                found[child] = table[child]
                todo.append(table[child])
    found.update((p, table[p]) for p in group)
    return {p: proc for p, proc in found.items() if _running(proc)}


def _send(procs: Sequence[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def terminate_tree(pid: int, create_time: Optional[float], grace_s: float = 10.0) -> List[int]:
    """Send TERM to a process, its whole tree and, when it leads one, its process group; KILL whatever is left after
    ``grace_s``. Returns the PIDs that were signalled. A process that is gone, or whose PID now belongs to another
    process, is left alone.

    The tree and the group (a detached process leads its own session, and what it starts stays in it unless it
    leaves) are looked at until nothing of them runs, not only as they were at first: a process forked while they
    were signalled gets TERM too, and KILL with the rest. Bash blocks TERM while it forks, so a wrapper or script
    told to stop as it starts its next command dies having started it, and that command never saw the TERM (a
    cancelled transfer task's copy ran on, blocked on its source, with nothing left to stop it).
    """
    if not is_alive(pid, create_time):
        return []
    try:
        root = psutil.Process(pid)
        pgid = pid if os.getpgid(pid) == pid else None
    except (psutil.Error, OSError):
        return []
    signalled: Dict[int, psutil.Process] = {}
    deadline = time.monotonic() + grace_s
    while True:
        running = _family([root, *signalled.values()], pgid)
        fresh = [p for p in running.values() if p.pid not in signalled or not signalled[p.pid].is_running()]
        signalled.update((p.pid, p) for p in fresh)
        _send(fresh, signal.SIGTERM)
        if not running or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    # KILL cannot be blocked, so one KILL to the group reaches what it forks meanwhile; look again all the same
    deadline = time.monotonic() + 5.0
    while running and time.monotonic() < deadline:
        signalled.update(running)
        _send(list(running.values()), signal.SIGKILL)
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)
        running = _family(list(signalled.values()), pgid)
    return sorted(signalled)


def now() -> float:
    """Seconds since the epoch (one place to read the clock)."""
    return time.time()
