"""Slurm: ``sbatch``, ``squeue``, ``scancel``, ``sinfo``, ``sacct``/``scontrol``, ``sacctmgr``.

Output formats are those of Slurm 22.05 (checked against a real slurmctld in CI; see tests/fixtures/slurm).

Options (``scheduler.options``):
  queue_option   how a Balsam queue maps to Slurm: ``partition`` (``-p``, default), ``qos`` (``-q``; NERSC
                 machines use QOS as the queue), or ``none``.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any, Dict, Iterable, List, Mapping, Optional

from balsam.exceptions import ConfigError, SchedulerError
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
    NOT_SET,
    parse_iso,
    parse_slurm_duration_minutes,
)

STATE_TABLE: Dict[str, SchedulerState] = {
    "PENDING": SchedulerState.QUEUED,
    "CONFIGURING": SchedulerState.QUEUED,
    "REQUEUED": SchedulerState.QUEUED,
    "REQUEUE_FED": SchedulerState.QUEUED,
    "RESIZING": SchedulerState.RUNNING,
    "RUNNING": SchedulerState.RUNNING,
    "COMPLETING": SchedulerState.RUNNING,
    "SIGNALING": SchedulerState.RUNNING,
    "STAGE_OUT": SchedulerState.RUNNING,
    "REQUEUE_HOLD": SchedulerState.HELD,
    "RESV_DEL_HOLD": SchedulerState.HELD,
    "SPECIAL_EXIT": SchedulerState.HELD,
    "SUSPENDED": SchedulerState.HELD,
    "STOPPED": SchedulerState.HELD,
    "COMPLETED": SchedulerState.FINISHED,
    "FAILED": SchedulerState.FAILED,
    "TIMEOUT": SchedulerState.FAILED,
    "NODE_FAIL": SchedulerState.FAILED,
    "BOOT_FAIL": SchedulerState.FAILED,
    "OUT_OF_MEMORY": SchedulerState.FAILED,
    "DEADLINE": SchedulerState.FAILED,
    "PREEMPTED": SchedulerState.FAILED,
    "CANCELLED": SchedulerState.CANCELLED,
    "REVOKED": SchedulerState.CANCELLED,
}

# PENDING jobs held by a user or an admin are HELD, not QUEUED.
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})

# squeue columns: id, state, partition, account, nodes, time limit, time left, submit, start, end, reason, QOS,
# name. The name comes last so a '|' inside it cannot shift the other columns.
SQUEUE_FIELDS = "%A|%T|%P|%a|%D|%l|%L|%V|%S|%e|%r|%q|%j"
_NFIELDS = SQUEUE_FIELDS.count("|") + 1

QUEUE_OPTIONS = {"partition": "-p", "qos": "-q", "none": ""}


def render_submit(
    script_path: PathLike,
    *,
    project: str,
    queue: str,
    num_nodes: int,
    wall_time_min: int,
    job_name: str = "",
    optional_params: Optional[Mapping[str, str]] = None,
    queue_option: str = "partition",
) -> List[str]:
    """The ``sbatch`` argv (pure). Optional params become ``--key=value`` (``--key`` when the value is empty)."""
    argv = ["sbatch", "--parsable", "-o", str(output_path_for(script_path)), "-J", scheduler_job_name(job_name, script_path)]
    if project:
        argv += ["-A", project]
    flag = QUEUE_OPTIONS[queue_option]
    if queue and flag:
        argv += [flag, queue]
    argv += ["-N", str(int(num_nodes)), "-t", str(int(wall_time_min))]
    for key, value in sorted((optional_params or {}).items()):
        name = check_param_key(key, "slurm").replace("_", "-")
        argv.append(f"--{name}={value}" if str(value) != "" else f"--{name}")
    argv.append(str(script_path))
    return argv


def parse_submit(stdout: str) -> int:
    """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>`` (pure)."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    head = text.split(";", 1)[0]
    if not head.isdigit():
        raise SchedulerError(f"sbatch printed no job id: {stdout.strip()!r}", stdout=stdout)
    return int(head)


def render_status(user: Optional[str] = None) -> List[str]:
    """One ``squeue`` for all of a user's jobs, finished ones Slurm still remembers included (pure)."""
    who = ["-u", user] if user else ["--me"]
    return ["squeue", "-h", "-t", "all", *who, "-o", SQUEUE_FIELDS]


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def parse_status(
    stdout: str, now: datetime, tz: Optional[tzinfo] = None, queue_option: str = "partition"
) -> Dict[int, SchedulerJobStatus]:
    """Parse :data:`SQUEUE_FIELDS` lines (pure). The queue is the partition, or the QOS when Balsam queues
    are QOS names (``queue_option="qos"``)."""
    out: Dict[int, SchedulerJobStatus] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        cols = line.split("|", _NFIELDS - 1)
        if len(cols) != _NFIELDS or not cols[0].strip().isdigit():
            continue
        jid, raw, partition, account, nodes, limit, left, submit, start, end, reason, qos, name = (c.strip() for c in cols)
        state = translate_state(STATE_TABLE, raw, "slurm")
        if state is SchedulerState.QUEUED and reason in HELD_REASONS:
            state = SchedulerState.HELD
        submit_t = parse_iso(submit, tz)
        started = state not in (SchedulerState.QUEUED, SchedulerState.HELD)
        start_t = parse_iso(start, tz) if started else None  # a pending job's %S is only a forecast
        end_t = parse_iso(end, tz) if state not in (SchedulerState.QUEUED, SchedulerState.HELD, SchedulerState.RUNNING) else None
        wall = parse_slurm_duration_minutes(limit)
        remaining: Optional[float] = None
        if state is SchedulerState.RUNNING:
            remaining = parse_slurm_duration_minutes(left)
        elif end_t is not None:
            remaining = 0.0
        queued_until = start_t or (now if not started else None)
        queued = (queued_until - submit_t).total_seconds() / 60.0 if submit_t and queued_until else None
        out[int(jid)] = SchedulerJobStatus(
            scheduler_id=int(jid),
            state=state,
            queue=(qos if qos not in NOT_SET else "") if queue_option == "qos" else partition,
            num_nodes=_int(nodes),
            wall_time_min=int(wall) if wall is not None else 0,
            project="" if account in NOT_SET else account,
            time_remaining_min=remaining,
            queued_time_min=max(0.0, queued) if queued is not None else None,
            start_time=start_t,
            end_time=end_t,
            job_name=name,
            raw_state=raw,
            reason="" if reason in NOT_SET else reason,
        )
    return out


def render_delete(scheduler_id: int) -> List[str]:
    """``scancel <id>`` (pure)."""
    return ["scancel", str(int(scheduler_id))]


SINFO_FIELDS = "%R|%a|%l|%D|%T"


def render_backfill() -> List[str]:
    """``sinfo`` grouped by partition and node state (pure)."""
    return ["sinfo", "-h", "-o", SINFO_FIELDS]


def parse_backfill(stdout: str) -> Dict[str, List[BackfillWindow]]:
    """Idle nodes per available partition, with the partition's time limit as the window length (pure).

    Slurm publishes no backfill forecast to users, so a window is an upper bound: the backfill scheduler
    still decides whether a job of that length would delay a higher-priority one.
    """
    idle: Dict[str, int] = {}
    limits: Dict[str, float] = {}
    for line in stdout.splitlines():
        cols = [c.strip() for c in line.split("|")]
        if len(cols) != 5:
            continue
        partition, avail, limit, count, node_state = cols
        if avail != "up":
            continue
        minutes = parse_slurm_duration_minutes(limit)
        if minutes is None:
            continue
        limits[partition] = minutes
        if node_state == "idle":
            idle[partition] = idle.get(partition, 0) + _int(count)
    return {p: [BackfillWindow(n, int(limits[p]))] for p, n in sorted(idle.items()) if n > 0}


def render_sacct_times(scheduler_id: int) -> List[str]:
    """``sacct`` for one job's start and end (pure)."""
    return ["sacct", "-X", "-P", "-n", "-o", "JobID,Start,End", "-j", str(int(scheduler_id))]


def parse_sacct_times(stdout: str, scheduler_id: int, tz: Optional[tzinfo] = None) -> JobTimes:
    """Start and end from ``sacct -P`` (pure); (None, None) if the record is not there (yet)."""
    for line in stdout.splitlines():
        cols = line.strip().split("|")
        if len(cols) >= 3 and cols[0] == str(scheduler_id):
            return parse_iso(cols[1], tz), parse_iso(cols[2], tz)
    return (None, None)


def render_find(job_name: str, since: float, tz: Optional[tzinfo] = None) -> List[str]:
    """``sacct`` for the user's allocations named ``job_name`` that existed at or after ``since`` (epoch seconds), in
    any state (pure). sacct reads the time in the cluster's zone (``tz``; None: this host's)."""
    start = datetime.fromtimestamp(int(since), tz).strftime("%Y-%m-%dT%H:%M:%S")
    return ["sacct", "-X", "-P", "-n", "-o", "JobID,JobName", "--name", job_name, "-S", start]


def parse_find(stdout: str, job_name: str) -> List[int]:
    """The job ids of ``sacct -P -o JobID,JobName`` lines named ``job_name`` (pure)."""
    ids = []
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[1] == job_name and parts[0].isdigit():
            ids.append(int(parts[0]))
    return ids


def render_scontrol_times(scheduler_id: int) -> List[str]:
    """``scontrol -o show job`` (pure); works while slurmctld still remembers the job (MinJobAge)."""
    return ["scontrol", "-o", "show", "job", str(int(scheduler_id))]


def parse_scontrol_times(stdout: str, tz: Optional[tzinfo] = None) -> JobTimes:
    """StartTime and EndTime from ``scontrol -o show job`` (pure)."""
    fields = dict(tok.split("=", 1) for tok in stdout.split() if "=" in tok)
    state = fields.get("JobState", "")
    start = parse_iso(fields.get("StartTime", ""), tz)
    end = parse_iso(fields.get("EndTime", ""), tz)
    if state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"):
        end = None  # a forecast, not a fact
        if state != "RUNNING":
            start = None
    return start, end


def render_projects(user: str) -> List[str]:
    """``sacctmgr`` for the accounts a user has associations with (pure)."""
    return ["sacctmgr", "-n", "-P", "show", "associations", f"user={user}", "format=account"]


def parse_projects(stdout: str) -> List[str]:
    """Distinct account names, in order (pure)."""
    seen: List[str] = []
    for line in stdout.splitlines():
        name = line.strip().strip("|")
        if name and name not in seen:
            seen.append(name)
    return seen


class SlurmScheduler(Scheduler):
    """Slurm through its command-line tools."""

    name = "slurm"
    title = "Slurm"
    options_help = {"queue_option": "partition (default), qos or none: which sbatch flag a Balsam queue becomes"}
    can_discover_projects = True
    can_report_backfill = True

    @property
    def queue_option(self) -> str:
        """Which sbatch flag a Balsam queue becomes (option ``queue_option``)."""
        value = self.options.get("queue_option", "partition")
        if value not in QUEUE_OPTIONS:
            raise ConfigError(f"scheduler slurm: option queue_option must be one of {', '.join(QUEUE_OPTIONS)}, got {value!r}")
        return value

    parse_submit_output = staticmethod(parse_submit)
    """``sbatch --parsable``; the job id it prints."""

    def render_submit(self, script_path: PathLike, **request: Any) -> List[str]:
        """The submit command :meth:`submit` runs (pure; ``balsam queue submit --dry-run`` shows it)."""
        request.pop("cwd")
        return render_submit(script_path, queue_option=self.queue_option, **request)

    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """One ``squeue -t all``; filtered by id on this side (squeue errors on ids it has forgotten)."""
        wanted = StatusFilter.of(scheduler_ids)
        if wanted.none:
            return {}
        result = self._run(render_status(user))
        return wanted.apply(parse_status(result.stdout, self._now(), self.tz, self.queue_option))

    def delete(self, scheduler_id: int) -> None:
        """``scancel`` (which succeeds silently for ids Slurm does not know)."""
        self._run(render_delete(scheduler_id))

    def get_backfill_windows(self) -> Dict[str, List[BackfillWindow]]:
        """Idle nodes per partition (see :func:`parse_backfill`)."""
        return parse_backfill(self._run(render_backfill()).stdout)

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """From ``sacct`` when accounting is on, else from ``scontrol`` while slurmctld remembers the job."""
        result = self._run(render_sacct_times(scheduler_id), ok_codes=range(256))
        if result.returncode == 0:
            times = parse_sacct_times(result.stdout, scheduler_id, self.tz)
            if times != (None, None):
                return times
        result = self._run(render_scontrol_times(scheduler_id), ok_codes=range(256))
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return (None, None)
            raise command_failed(result)
        return parse_scontrol_times(result.stdout, self.tz)

    def find_submitted(self, job_name: str, script_path: PathLike, since: float) -> Optional[int]:
        """Listed by ``squeue`` while slurmctld remembers the job, else found in accounting (``sacct``): an agent
        killed mid-``sbatch`` and restarted after the job had ended and been forgotten (``MinJobAge``, 5 minutes by
        default) submitted it a second time. Without accounting, squeue's answer is all there is."""
        found = super().find_submitted(job_name, script_path, since)
        if found is not None:
            return found
        try:
            result = self._run(render_find(job_name, since, self.tz), ok_codes=range(256))
        except SchedulerError:  # no sacct, or it hung on a slurmdbd that is down: squeue's answer stands
            return None
        if result.returncode != 0:
            return None
        ids = parse_find(result.stdout, job_name)
        return max(ids) if ids else None

    def lookup_hint(self, job_name: str) -> str:
        """``squeue`` by name, and ``sacct`` for one that has ended."""
        return f"squeue -u $USER --name {job_name}, or sacct -X --name {job_name} once it ended"

    def discover_projects(self, user: Optional[str] = None) -> List[str]:
        """Accounts from ``sacctmgr`` (needs slurmdbd; raises SchedulerError where accounting is off)."""
        result = self._run(render_projects(user or current_user()))
        return parse_projects(result.stdout)
