"""PBS Professional / OpenPBS (Polaris, Aurora, Sunspot, Crux): ``qsub``, ``qstat -f -F json``, ``qdel``,
``pbsnodes -a -F json``.

Formats follow PBS Pro 2022 as deployed at ALCF (fixtures in tests/fixtures/pbs, with their sources).
Times in ``qstat -f`` are ctime strings in the server's local zone (``Thu Nov  9 13:05:50 2023``).

Backfill: ``pbsnodes`` tells which nodes are free now, not for how long, and PBS publishes no forecast to
users. A window is therefore the free nodes that are not held by a reservation, per enabled queue, capped
by that queue's ``resources_max.nodect`` and as long as its ``resources_max.walltime``: an upper bound the
scheduler may still refuse to backfill into.
"""

from __future__ import annotations

import json
from datetime import datetime, tzinfo
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
    output_path_for,
    scheduler_job_name,
    translate_state,
)
from balsam.platforms.schedulers.timefmt import (
    UNLIMITED_MIN,
    format_hms,
    minutes_between,
    parse_ctime,
    parse_hms_minutes,
)

STATE_TABLE: Dict[str, SchedulerState] = {
    "Q": SchedulerState.QUEUED,
    "W": SchedulerState.QUEUED,  # waiting for its execution time
    "T": SchedulerState.QUEUED,  # in transit between servers
    "H": SchedulerState.HELD,
    "S": SchedulerState.HELD,  # suspended
    "U": SchedulerState.HELD,  # suspended: workstation busy
    "R": SchedulerState.RUNNING,
    "E": SchedulerState.RUNNING,  # exiting after having run
    "B": SchedulerState.RUNNING,  # array job: a subjob has begun
    "F": SchedulerState.FINISHED,  # finished (history); FAILED when Exit_status != 0, CANCELLED if it never ran
    "X": SchedulerState.FINISHED,  # subjob finished
    "M": SchedulerState.UNKNOWN,  # moved to another server
}


def render_submit(
    script_path: PathLike,
    *,
    project: str,
    queue: str,
    num_nodes: int,
    wall_time_min: int,
    job_name: str = "",
    optional_params: Optional[Mapping[str, str]] = None,
    select_suffix: str = "",
) -> List[str]:
    """The ``qsub`` argv (pure). Optional params become ``-l key=value`` (e.g. filesystems, place);
    ``select_suffix`` is appended to ``select=N`` (e.g. ``:system=polaris``)."""
    argv = ["qsub", "-N", scheduler_job_name(job_name, script_path)[:236]]
    if project:
        argv += ["-A", project]
    if queue:
        argv += ["-q", queue]
    argv += ["-l", f"select={int(num_nodes)}{select_suffix}", "-l", f"walltime={format_hms(int(wall_time_min))}"]
    for key, value in sorted((optional_params or {}).items()):
        argv += ["-l", f"{check_param_key(key, 'pbs')}={value}"]
    argv += ["-o", str(output_path_for(script_path)), "-j", "oe", str(script_path)]
    return argv


def parse_job_id(text: str) -> int:
    """``1234.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov`` (or ``1234[].server``) -> 1234."""
    head = text.strip().split(".", 1)[0].split("[", 1)[0]
    if not head.isdigit():
        raise SchedulerError(f"not a PBS job id: {text.strip()!r}")
    return int(head)


def parse_submit(stdout: str) -> int:
    """``qsub`` prints the full job id (pure)."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines:
        raise SchedulerError("qsub printed no job id", stdout=stdout)
    return parse_job_id(lines[-1])


def render_status(scheduler_ids: Optional[Iterable[int]] = None) -> List[str]:
    """One ``qstat -f -F json``: every job (filtered by owner here), or the given ids with history (pure)."""
    if scheduler_ids is None:
        return ["qstat", "-f", "-F", "json"]
    return ["qstat", "-x", "-f", "-F", "json", *[str(int(i)) for i in sorted(scheduler_ids)]]


def render_find() -> List[str]:
    """``qstat -x -f -F json``: every job the server knows, ended ones too where it keeps job history (pure)."""
    return ["qstat", "-x", "-f", "-F", "json"]


def parse_find(stdout: str, job_name: str, since: float, tz: Optional[tzinfo] = None) -> List[int]:
    """The ids of the jobs of ``qstat -x -f -F json`` named as :func:`render_submit` names ``job_name``, queued at or
    after ``since`` (epoch seconds; qstat's times have whole seconds) (pure)."""
    name = job_name[:236]
    ids = []
    for key, job in (load_json(stdout, "qstat -x").get("Jobs") or {}).items():
        head = str(key).split(".", 1)[0]
        queued = parse_ctime(str(job.get("qtime", "")), tz)
        if head.isdigit() and str(job.get("Job_Name", "")) == name and (queued is None or queued.timestamp() >= int(since)):
            ids.append(int(head))
    return ids


def load_json(stdout: str, command: str) -> Dict[str, Any]:
    """PBS JSON, leniently: raw control characters inside strings (seen in Variable_List) are accepted."""
    try:
        data = json.loads(stdout, strict=False)
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"{command} printed malformed JSON ({exc.msg} at line {exc.lineno})", stdout=stdout) from None
    if not isinstance(data, dict):
        raise SchedulerError(f"{command} printed JSON that is not an object", stdout=stdout)
    return data


def _nodes(resources: Mapping[str, Any]) -> int:
    if "nodect" in resources:
        return int(resources["nodect"])
    select = str(resources.get("select", ""))
    total = 0
    for chunk in select.split("+"):
        head = chunk.split(":", 1)[0]
        total += int(head) if head.isdigit() else (1 if chunk else 0)
    return total


def job_status(jid: int, job: Mapping[str, Any], now: datetime, tz: Optional[tzinfo] = None) -> SchedulerJobStatus:
    """One job of ``qstat -f -F json`` (pure)."""
    raw = str(job.get("job_state", ""))
    state = translate_state(STATE_TABLE, raw, "pbs")
    exit_status = job.get("Exit_status")
    if state is SchedulerState.FINISHED and exit_status is not None and int(exit_status) != 0:
        state = SchedulerState.FAILED
    elif state is SchedulerState.FINISHED and exit_status is None and not job.get("stime"):
        # Deleted before it ran ("Not Running: ... terminated"): no exit code, no start; not a success.
        state = SchedulerState.CANCELLED
    resources = job.get("Resource_List", {}) or {}
    wall = parse_hms_minutes(str(resources.get("walltime", ""))) or 0.0
    qtime = parse_ctime(str(job.get("qtime", "")), tz)
    stime = parse_ctime(str(job.get("stime", "")), tz)
    end = parse_ctime(str(job.get("obittime", "")), tz) if raw in ("F", "X") else None
    if raw in ("F", "X") and end is None:
        end = parse_ctime(str(job.get("mtime", "")), tz)
    used = parse_hms_minutes(str((job.get("resources_used") or {}).get("walltime", "")))
    remaining: Optional[float] = None
    if state is SchedulerState.RUNNING:
        elapsed = used if used is not None else minutes_between(stime, now)
        remaining = max(0.0, wall - (elapsed or 0.0))
    elif end is not None:
        remaining = 0.0
    queued_until = stime if stime is not None else (now if state in (SchedulerState.QUEUED, SchedulerState.HELD) else None)
    return SchedulerJobStatus(
        scheduler_id=jid,
        state=state,
        queue=str(job.get("queue", "")),
        num_nodes=_nodes(resources),
        wall_time_min=int(wall),
        project=str(job.get("Account_Name", job.get("project", ""))),
        time_remaining_min=remaining,
        queued_time_min=minutes_between(qtime, queued_until),
        start_time=stime if state is not SchedulerState.QUEUED else None,
        end_time=end,
        job_name=str(job.get("Job_Name", "")),
        raw_state=raw,
        exit_code=int(exit_status) if exit_status is not None else None,
        reason=str(job.get("comment", "")),
    )


def parse_status(
    stdout: str, now: datetime, tz: Optional[tzinfo] = None, user: Optional[str] = None
) -> Dict[int, SchedulerJobStatus]:
    """Parse ``qstat -f -F json`` (pure); keep ``user``'s jobs when a user is given (Job_Owner is user@host)."""
    if not stdout.strip():
        return {}
    data = load_json(stdout, "qstat -f -F json")
    out: Dict[int, SchedulerJobStatus] = {}
    for full_id, job in (data.get("Jobs") or {}).items():
        if user is not None and str(job.get("Job_Owner", "")).split("@", 1)[0] != user:
            continue
        try:
            jid = parse_job_id(full_id)
        except SchedulerError:
            continue
        out[jid] = job_status(jid, job, now, tz)
    return out


def render_delete(scheduler_id: int) -> List[str]:
    """``qdel <id>`` (pure)."""
    return ["qdel", str(int(scheduler_id))]


def render_nodes() -> List[str]:
    """``pbsnodes -a -F json`` (pure)."""
    return ["pbsnodes", "-a", "-F", "json"]


def render_queues() -> List[str]:
    """``qstat -Q -f -F json`` (pure)."""
    return ["qstat", "-Q", "-f", "-F", "json"]


def count_free_nodes(pbsnodes_stdout: str) -> int:
    """Nodes that are free, run no job and belong to no reservation (pure)."""
    data = load_json(pbsnodes_stdout, "pbsnodes -a -F json")
    free = 0
    for node in (data.get("nodes") or {}).values():
        states = set(str(node.get("state", "")).split(","))
        if states == {"free"} and not node.get("jobs") and not node.get("resv"):
            free += 1
    return free


def parse_backfill(pbsnodes_stdout: str, queues_stdout: str) -> Dict[str, List[BackfillWindow]]:
    """Windows per enabled, started queue that users may submit to (pure; see the module docstring)."""
    free = count_free_nodes(pbsnodes_stdout)
    if free == 0:
        return {}
    queues = load_json(queues_stdout, "qstat -Q -f -F json").get("Queue") or {}
    out: Dict[str, List[BackfillWindow]] = {}
    for name, q in sorted(queues.items()):
        if str(q.get("enabled", "")).lower() != "true" or str(q.get("started", "")).lower() != "true":
            continue
        if str(q.get("from_route_only", "")).lower() == "true":
            continue
        rmax = q.get("resources_max") or {}
        rmin = q.get("resources_min") or {}
        nodes = min(free, int(rmax.get("nodect", free)))
        if nodes < int(rmin.get("nodect", 1)):
            continue
        wall = parse_hms_minutes(str(rmax.get("walltime", "")))
        out[name] = [BackfillWindow(nodes, int(wall) if wall is not None else UNLIMITED_MIN)]
    return out


def render_job_times(scheduler_id: int) -> List[str]:
    """``qstat -x -f -F json <id>``: the job's history record (pure)."""
    return ["qstat", "-x", "-f", "-F", "json", str(int(scheduler_id))]


def parse_job_times(stdout: str, tz: Optional[tzinfo] = None) -> JobTimes:
    """stime and obittime (or mtime) of the one job in the output (pure)."""
    if not stdout.strip():
        return (None, None)
    jobs = load_json(stdout, "qstat -x -f -F json").get("Jobs") or {}
    for job in jobs.values():
        end = parse_ctime(str(job.get("obittime", "")), tz)
        if end is None and job.get("job_state") in ("F", "X"):
            end = parse_ctime(str(job.get("mtime", "")), tz)
        return parse_ctime(str(job.get("stime", "")), tz), end
    return (None, None)


def _unknown_job(text: str) -> bool:
    return "Unknown Job Id" in text or "Job has finished" in text


def status_complaints(stderr: str) -> List[str]:
    """The lines of a failed ``qstat`` that are not about unknown ids (pure).

    qstat exits non-zero both when some ids are unknown (it still lists the others) and when it cannot reach
    its server (it then prints a JSON header with no ``Jobs``); only the first is a usable answer.
    """
    return [ln.strip() for ln in stderr.splitlines() if ln.strip() and not _unknown_job(ln)]


class PBSScheduler(Scheduler):
    """PBS Professional / OpenPBS through its command-line tools."""

    name = "pbs"
    title = "PBS Professional"
    can_report_backfill = True
    options_help = {"select_suffix": "appended to select=N, e.g. :system=polaris (a command-line -l select replaces the script's)"}

    parse_submit_output = staticmethod(parse_submit)
    """``qsub``; the numeric part of the job id it prints."""

    def render_submit(self, script_path: PathLike, **request: Any) -> List[str]:
        """The submit command :meth:`submit` runs (pure; ``balsam queue submit --dry-run`` shows it)."""
        request.pop("cwd")
        return render_submit(script_path, select_suffix=self.options.get("select_suffix", ""), **request)

    def find_submitted(self, job_name: str, script_path: PathLike, since: float) -> Optional[int]:
        """Listed by ``qstat`` while the job waits or runs, else found in the server's job history (``qstat -x``): an
        agent killed mid-``qsub`` and restarted after the job had ended submitted it a second time. Where the server
        keeps no history, or qstat -x fails, the plain listing's answer (none) stands."""
        found = super().find_submitted(job_name, script_path, since)
        if found is not None:
            return found
        try:
            result = self._run(render_find(), ok_codes=range(256))
            ids = parse_find(result.stdout, job_name, since, self.tz) if result.returncode == 0 else []
        except SchedulerError:
            return None
        return max(ids) if ids else None

    def lookup_hint(self, job_name: str) -> str:
        """``qselect`` by name, ended jobs included (``-x``)."""
        return f"qselect -x -u $USER -N {job_name[:236]}"

    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """One ``qstat -f -F json`` (with ``-x`` and the ids when ids are given).

        qstat exits non-zero when some of the ids are unknown yet still prints the others, so its JSON is
        parsed then; any other complaint (``cannot connect to server``) is an error, never an empty listing.
        """
        wanted = StatusFilter.of(scheduler_ids)
        if wanted.none:
            return {}
        argv = render_status(wanted.ids)
        result = self._run(argv, ok_codes=range(256))
        if result.returncode != 0:
            if status_complaints(result.stderr) or not (wanted.ids is not None and _unknown_job(result.stderr)):
                raise command_failed(result)  # the server is unreachable: no answer, not an empty one
        owner = user or current_user()
        return wanted.apply(parse_status(result.stdout, self._now(), self.tz, None if wanted.ids is not None else owner))

    def delete(self, scheduler_id: int) -> None:
        """``qdel``; a job PBS no longer knows is not an error."""
        result = self._run(render_delete(scheduler_id), ok_codes=range(256))
        if result.returncode != 0 and not _unknown_job(result.stdout + result.stderr):
            raise command_failed(result)

    def get_backfill_windows(self) -> Dict[str, List[BackfillWindow]]:
        """Free nodes and queue limits: two commands (see the module docstring)."""
        nodes = self._run(render_nodes()).stdout
        queues = self._run(render_queues()).stdout
        return parse_backfill(nodes, queues)

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """From the job history (needs ``job_history_enable`` on the server); (None, None) without it."""
        result = self._run(render_job_times(scheduler_id), ok_codes=range(256))
        if result.returncode != 0:
            if _unknown_job(result.stderr + result.stdout):
                return (None, None)
            raise command_failed(result)
        return parse_job_times(result.stdout, self.tz)

    def job_history(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> Optional[SchedulerJobStatus]:
        """The job's record in ``qstat -x`` (None if the history no longer has it)."""
        result = self._run(render_job_times(scheduler_id), ok_codes=range(256))
        if result.returncode != 0 and (status_complaints(result.stderr) or not _unknown_job(result.stderr + result.stdout)):
            raise command_failed(result)
        return parse_status(result.stdout, self._now(), self.tz).get(int(scheduler_id))
