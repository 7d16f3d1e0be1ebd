"""Cobalt (ALCF Theta, ThetaGPU, Cooley; all retired): ``qsub``, ``qstat --header``, ``qdel``, ``nodelist``.

Formats follow the ALCF user guide for Theta (qstat with a custom header, nodelist with its Backfill column);
see tests/fixtures/cobalt/README.md. Cobalt writes ``<prefix>.output``, ``<prefix>.error`` and
``<prefix>.cobaltlog`` for ``-O <prefix>``; the script's path without its suffix is the prefix, so the output
lands in ``<script>.output`` like every other adapter's.

Optional params become one ``--attrs k=v:k=v`` (filesystems, mcdram, numa, location, ...).

Balsam's job name is not given to Cobalt (qsub gets no ``--jobname``, so qstat's ``JobName`` is Cobalt's default,
``N/A``, or a name taken from the output path): a Balsam job is known by its script, which qstat's ``Command`` column
shows as the absolute path qsub was given (``<site>/qsubmit/qlaunch<BatchJob id>.sh``), and
:meth:`CobaltScheduler.find_submitted` looks for that path.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from balsam.exceptions import SchedulerError
from balsam.platforms.schedulers.base import (
    BackfillWindow,
    JobTimes,
    PathLike,
    Scheduler,
    SchedulerJobStatus,
    SchedulerState,
    StatusFilter,
    check_param_key,
    command_failed,
    current_user,
    translate_state,
)
from balsam.platforms.schedulers.timefmt import NOT_SET, parse_ctime, parse_hms_minutes

STATE_TABLE: Dict[str, SchedulerState] = {
    "queued": SchedulerState.QUEUED,
    "starting": SchedulerState.QUEUED,  # resources chosen, nodes booting into the requested mode
    "running": SchedulerState.RUNNING,
    "exiting": SchedulerState.RUNNING,
    "user_hold": SchedulerState.HELD,
    "admin_hold": SchedulerState.HELD,
    "dep_hold": SchedulerState.HELD,
    "maxrun_hold": SchedulerState.HELD,
    "dep_fail": SchedulerState.FAILED,
    "killing": SchedulerState.CANCELLED,
    "done": SchedulerState.FINISHED,
}

STATUS_FIELDS = ("JobID", "User", "State", "Queue", "Nodes", "WallTime", "QueuedTime", "RunTime", "TimeRemaining", "Project",
                 "JobName", "Command")
"""The qstat columns Balsam asks for; ``Command`` (the script's path, which may hold spaces) comes last."""


def render_submit(
    script_path: PathLike,
    *,
    project: str,
    queue: str,
    num_nodes: int,
    wall_time_min: int,
    optional_params: Optional[Mapping[str, str]] = None,
) -> List[str]:
    """The ``qsub`` argv (pure)."""
    argv = ["qsub", "-O", str(Path(script_path).with_suffix(""))]
    if project:
        argv += ["-A", project]
    if queue:
        argv += ["-q", queue]
    argv += ["-n", str(int(num_nodes)), "-t", str(int(wall_time_min))]
    attrs = [f"{check_param_key(k, 'cobalt')}={v}" for k, v in sorted((optional_params or {}).items())]
    if attrs:
        argv += ["--attrs", ":".join(attrs)]
    argv.append(str(script_path))
    return argv


def parse_submit(stdout: str) -> int:
    """``qsub`` prints the job id on the last line (notices may come first) (pure)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines or not lines[-1].isdigit():
        raise SchedulerError(f"qsub printed no job id: {stdout.strip()!r}", stdout=stdout)
    return int(lines[-1])


def render_status(user: str) -> List[str]:
    """One ``qstat`` for a user, with the columns Balsam reads (pure)."""
    return ["qstat", "-u", user, f"--header={':'.join(STATUS_FIELDS)}"]


def parse_table(stdout: str) -> List[Dict[str, str]]:
    """A Cobalt table (header, a ``====`` rule, rows) to dicts (pure).

    Cobalt pads every column to its widest value, left-aligned, two spaces apart (the header too), so a row whose
    values hold spaces (a script path) is cut at the header's column starts; any other row is split on whitespace."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    header: List[str] = []
    starts: List[int] = []
    rows: List[Dict[str, str]] = []
    for line in lines:
        if set(line.strip()) == {"="}:
            continue
        cols = line.split()
        if not header:
            header = cols
            starts = [m.start() for m in re.finditer(r"\S+", line)]
            continue
        if len(cols) == len(header):
            rows.append(dict(zip(header, cols)))
        elif len(cols) > len(header) and len(line) > starts[-1]:
            ends = [*starts[1:], len(line)]
            rows.append({name: line[a:b].strip() for name, a, b in zip(header, starts, ends)})
    return rows


def parse_status(stdout: str, now: datetime) -> Dict[int, SchedulerJobStatus]:
    """Parse ``qstat --header=...`` output (pure)."""
    out: Dict[int, SchedulerJobStatus] = {}
    for row in parse_table(stdout):
        jid = row.get("JobID", "")
        if not jid.isdigit():
            continue
        raw = row.get("State", "")
        state = translate_state(STATE_TABLE, raw, "cobalt")
        wall = parse_hms_minutes(row.get("WallTime", "")) or 0.0
        nodes = row.get("Nodes", "0")
        out[int(jid)] = SchedulerJobStatus(
            scheduler_id=int(jid),
            state=state,
            queue=row.get("Queue", ""),
            num_nodes=int(nodes) if nodes.isdigit() else 0,
            wall_time_min=int(wall),
            project=row.get("Project", "") if row.get("Project", "") not in NOT_SET else "",
            time_remaining_min=parse_hms_minutes(row.get("TimeRemaining", "")) if state is SchedulerState.RUNNING else None,
            queued_time_min=parse_hms_minutes(row.get("QueuedTime", "")),
            job_name=row.get("JobName", "") if row.get("JobName", "") not in NOT_SET else "",
            raw_state=raw,
        )
    return out


def parse_find(stdout: str, job_name: str, script_path: PathLike) -> List[int]:
    """The ids of the jobs in a ``qstat --header=...:JobName:Command`` listing that run ``script_path`` (Cobalt shows the
    absolute path qsub was given) or are named ``job_name`` (pure)."""
    script = os.path.normpath(os.path.abspath(script_path))
    ids = []
    for row in parse_table(stdout):
        command = row.get("Command", "")
        ran = bool(command) and os.path.normpath(command) == script
        if row.get("JobID", "").isdigit() and (ran or (job_name and row.get("JobName") == job_name)):
            ids.append(int(row["JobID"]))
    return ids


def render_delete(scheduler_id: int) -> List[str]:
    """``qdel <id>`` (pure)."""
    return ["qdel", str(int(scheduler_id))]


def parse_backfill(stdout: str) -> Dict[str, List[BackfillWindow]]:
    """``nodelist``: idle nodes with a Backfill time, per queue, as cumulative windows (pure).

    A node idle for ``t`` minutes can run any job of ``t`` minutes or less, so the window of length ``t``
    counts every idle node whose backfill time is at least ``t``.
    """
    per_queue: Dict[str, List[float]] = {}
    for row in parse_table(stdout):
        if row.get("Status") != "idle":
            continue
        minutes = parse_hms_minutes(row.get("Backfill", ""))
        if minutes is None:
            continue
        for queue in row.get("Queues", "").split(":"):
            if queue:
                per_queue.setdefault(queue, []).append(minutes)
    out: Dict[str, List[BackfillWindow]] = {}
    for queue, times in sorted(per_queue.items()):
        windows = [BackfillWindow(sum(1 for t in times if t >= length), int(length)) for length in sorted(set(times), reverse=True)]
        out[queue] = windows
    return out


_LOG_STAMP = re.compile(r"^(\w{3} \w{3}\s+\d{1,2} \d{2}:\d{2}:\d{2} \d{4}) \+0000 \(UTC\)")


def parse_cobaltlog(text: str) -> JobTimes:
    """Start and end from a ``.cobaltlog`` (pure): its lines begin ``<ctime> +0000 (UTC)``; the job starts at
    the line that mentions ``COBALT_STARTTIME`` (or "starting") and has ended at the last stamped line once a
    line says it exited, ended or completed (Theta writes ``Info: task completed normally with an exit code``)."""
    stamped = []
    for line in text.splitlines():
        m = _LOG_STAMP.match(line.strip())
        if m:
            stamped.append((parse_ctime(m.group(1), timezone.utc), line))
    start = next((t for t, line in stamped if "COBALT_STARTTIME" in line or "starting" in line.lower()), None)
    ended = any(re.search(r"\b(exited|ended|completed|terminated|exit code)\b", line, re.IGNORECASE) for _, line in stamped)
    if start is None and not ended:
        return (None, None)
    return start, (stamped[-1][0] if ended or start is not None else None)


class CobaltScheduler(Scheduler):
    """Cobalt through its command-line tools."""

    name = "cobalt"
    title = "Cobalt"
    can_report_backfill = True

    parse_submit_output = staticmethod(parse_submit)
    """``qsub``; the job id it prints. (``job_name`` is not given to Cobalt: see :meth:`find_submitted`.)"""

    def render_submit(self, script_path: PathLike, **request: Any) -> List[str]:
        """The submit command :meth:`submit` runs (pure; ``balsam queue submit --dry-run`` shows it)."""
        request.pop("job_name")  # Cobalt knows the job by its script (find_submitted)
        request.pop("cwd")
        return render_submit(script_path, **request)

    def lookup_hint(self, job_name: str) -> str:
        """The user's jobs with their scripts (Cobalt knows a Balsam job by its script, not by ``job_name``)."""
        script = f"qlaunch{job_name[len('balsam-'):]}.sh" if job_name.startswith("balsam-") else "its script"
        return f"qstat -u $USER --header=JobID:State:Command, the job whose Command is the site's qsubmit/{script}"

    def find_submitted(self, job_name: str, script_path: PathLike, since: float) -> Optional[int]:
        """The newest of the user's jobs (one ``qstat -u``) that runs ``script_path``: Cobalt shows no job name Balsam
        gave, so the default lookup by name never found an interrupted submission, which was submitted a second time. Cobalt lists no submit time to compare with ``since``; the script's path names one
        BatchJob of one site. Raises :class:`SchedulerError` when qstat fails."""
        result = self._run(render_status(current_user()))
        ids = parse_find(result.stdout, job_name, script_path)
        return max(ids) if ids else None

    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """One ``qstat -u``, filtered by id on this side."""
        wanted = StatusFilter.of(scheduler_ids)
        if wanted.none:
            return {}
        result = self._run(render_status(user or current_user()))
        return wanted.apply(parse_status(result.stdout, self._now()))

    def delete(self, scheduler_id: int) -> None:
        """``qdel``."""
        result = self._run(render_delete(scheduler_id), ok_codes=range(256))
        if result.returncode != 0 and "not found" not in (result.stdout + result.stderr).lower():
            raise command_failed(result)

    def get_backfill_windows(self) -> Dict[str, List[BackfillWindow]]:
        """From ``nodelist``."""
        return parse_backfill(self._run(["nodelist"]).stdout)

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """From ``<script>.cobaltlog`` next to the script; (None, None) if it is missing."""
        if script_path is None:
            return (None, None)
        try:
            text = Path(script_path).with_suffix(".cobaltlog").read_text(errors="replace")
        except OSError:
            return (None, None)
        return parse_cobaltlog(text)
