"""IBM Spectrum LSF (OLCF Summit, retired): ``bsub``, ``bjobs -o ... -json``, ``bkill``, ``bslots``.

Formats follow the IBM LSF 10.1 command reference (``bjobs -json`` holds ``{"COMMAND", "JOBS", "RECORDS"}``
with every value a string; times like ``Dec 28 19:56`` without a year); see tests/fixtures/lsf/README.md.

Options (``scheduler.options``):
  node_flag        ``nnodes`` (default: Summit's ``-nnodes N``, whole nodes under CSM) or ``n`` (``-n`` slots:
                   generic LSF, N * slots_per_node slots)
  slots_per_node   slots one node holds (default 42, Summit's usable cores); turns slot counts into nodes
  bslots_resource  resource requirement for ``bslots -R`` (Summit: ``select[CN]``, the compute nodes)
  backfill_queue   the queue bslots windows are reported under (default ``batch``)
"""

from __future__ import annotations

import json
import re
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
    as_int,
    check_param_key,
    command_failed,
    output_path_for,
    scheduler_job_name,
    translate_state,
)
from balsam.platforms.schedulers.timefmt import NOT_SET, minutes_between, parse_hms_minutes, parse_lsf_time, parse_words_minutes

STATE_TABLE: Dict[str, SchedulerState] = {
    "PEND": SchedulerState.QUEUED,
    "WAIT": SchedulerState.QUEUED,
    "PROV": SchedulerState.QUEUED,
    "RUN": SchedulerState.RUNNING,
    "PSUSP": SchedulerState.HELD,
    "USUSP": SchedulerState.HELD,
    "SSUSP": SchedulerState.HELD,
    "DONE": SchedulerState.FINISHED,
    "EXIT": SchedulerState.FAILED,
    "ZOMBI": SchedulerState.FAILED,
    "UNKWN": SchedulerState.UNKNOWN,
}

BJOBS_FIELDS = "jobid stat queue proj_name nreq_slot runtimelimit run_time submit_time start_time finish_time exit_code job_name"

# Parameters that are bsub flags of their own rather than -R resource strings.
FLAG_PARAMS = {"alloc_flags": "-alloc_flags", "reservation": "-U", "sla": "-sla", "app": "-app", "core_isolation": "-core_isolation"}


def render_submit(
    script_path: PathLike,
    *,
    project: str,
    queue: str,
    num_nodes: int,
    wall_time_min: int,
    job_name: str = "",
    optional_params: Optional[Mapping[str, str]] = None,
    node_flag: str = "nnodes",
    slots_per_node: int = 42,
) -> List[str]:
    """The ``bsub`` argv (pure). The script runs as ``/bin/bash <script>``, so it needs no execute bit and
    its ``#BSUB`` lines are comments: everything LSF must know is on this command line."""
    out = str(output_path_for(script_path))
    argv = ["bsub", "-J", scheduler_job_name(job_name, script_path), "-o", out, "-e", out]
    if project:
        argv += ["-P", project]
    if queue:
        argv += ["-q", queue]
    if node_flag == "nnodes":
        argv += ["-nnodes", str(int(num_nodes))]
    else:
        argv += ["-n", str(int(num_nodes) * slots_per_node)]
    argv += ["-W", str(int(wall_time_min))]
    for key, value in sorted((optional_params or {}).items()):
        flag = FLAG_PARAMS.get(key)
        if flag is not None:
            argv += [flag, str(value)]
        else:
            argv += [f"-{check_param_key(key, 'lsf')}", str(value)]
    argv += ["/bin/bash", str(script_path)]
    return argv


_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")


def parse_submit(stdout: str) -> int:
    """``Job <12345> is submitted to queue <batch>.`` -> 12345 (pure)."""
    m = _SUBMITTED.search(stdout)
    if not m:
        raise SchedulerError(f"bsub printed no job id: {stdout.strip()!r}", stdout=stdout)
    return int(m.group(1))


def render_status(user: Optional[str] = None) -> List[str]:
    """One ``bjobs -a`` in JSON, recently finished jobs included (pure); bjobs lists the caller's own jobs
    unless ``-u`` names another user."""
    who = ["-u", user] if user else []
    return ["bjobs", "-a", *who, "-o", BJOBS_FIELDS, "-json"]


def _records(stdout: str) -> List[Dict[str, Any]]:
    text = stdout.strip()
    if not text.startswith("{"):
        return []  # "No job found" / "No unfinished job found"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(f"bjobs -json printed malformed JSON ({exc.msg})", stdout=stdout) from None
    records = data.get("RECORDS", []) if isinstance(data, dict) else []
    return [r for r in records if isinstance(r, dict)]


def _run_time_minutes(text: str) -> Optional[float]:
    """``16038 second(s)``, or ``hh:mm:ss`` where the site sets ``LSB_HMS_TIME_FORMAT=Y`` (or ``-hms``)."""
    if ":" in text:
        return parse_hms_minutes(text)
    m = re.match(r"^\s*(\d+)\s*second", text)
    return int(m.group(1)) / 60.0 if m else None


def limit_minutes(text: str) -> float:
    """RUNTIMELIMIT: ``1440.0`` (minutes) or ``24:00:00`` in the hh:mm:ss form; 0 when unset (pure)."""
    text = text.strip()
    if ":" in text:
        return parse_hms_minutes(text) or 0.0
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return 0.0


def parse_status(
    stdout: str, now: datetime, tz: Optional[tzinfo] = None, slots_per_node: int = 42
) -> Dict[int, SchedulerJobStatus]:
    """Parse ``bjobs -o BJOBS_FIELDS -json`` (pure)."""
    out: Dict[int, SchedulerJobStatus] = {}
    for rec in _records(stdout):
        jid = str(rec.get("JOBID", ""))
        if not jid.isdigit():
            continue
        raw = str(rec.get("STAT", ""))
        state = translate_state(STATE_TABLE, raw, "lsf")
        limit = limit_minutes(str(rec.get("RUNTIMELIMIT", "")))
        slots = str(rec.get("NREQ_SLOT", "0")).strip()
        nodes = max(1, int(slots) // slots_per_node) if slots.isdigit() else 0
        submit = parse_lsf_time(str(rec.get("SUBMIT_TIME", "")), now, tz)
        start = parse_lsf_time(str(rec.get("START_TIME", "")), now, tz)
        finish = parse_lsf_time(str(rec.get("FINISH_TIME", "")), now, tz) if state not in (SchedulerState.RUNNING,) else None
        ran = _run_time_minutes(str(rec.get("RUN_TIME", "")))
        remaining: Optional[float] = None
        if state is SchedulerState.RUNNING and limit:
            remaining = max(0.0, limit - (ran if ran is not None else (minutes_between(start, now) or 0.0)))
        elif finish is not None:
            remaining = 0.0
        exit_text = str(rec.get("EXIT_CODE", "")).strip()
        project = str(rec.get("PROJ_NAME", ""))
        out[int(jid)] = SchedulerJobStatus(
            scheduler_id=int(jid),
            state=state,
            queue=str(rec.get("QUEUE", "")),
            num_nodes=nodes,
            wall_time_min=int(limit),
            project="" if project in NOT_SET or project == "default" else project,
            time_remaining_min=remaining,
            queued_time_min=minutes_between(submit, start or now) if submit is not None else None,
            start_time=start if state is not SchedulerState.QUEUED else None,
            end_time=finish,
            job_name=str(rec.get("JOB_NAME", "")),
            raw_state=raw,
            exit_code=int(exit_text) if exit_text.isdigit() else (0 if state is SchedulerState.FINISHED else None),
        )
    return out


def render_delete(scheduler_id: int) -> List[str]:
    """``bkill <id>`` (pure)."""
    return ["bkill", str(int(scheduler_id))]


def render_backfill(resource: str = "") -> List[str]:
    """``bslots`` (pure)."""
    return ["bslots", "-R", resource] if resource else ["bslots"]


def parse_backfill(stdout: str, queue: str = "batch", slots_per_node: int = 42) -> Dict[str, List[BackfillWindow]]:
    """``bslots`` rows (``SLOTS RUNTIME``) to node windows under ``queue`` (pure).

    ``No backfill window exists at this time`` (or any output without rows) gives {}.
    """
    windows: List[BackfillWindow] = []
    for line in stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        minutes = parse_words_minutes(parts[1])
        nodes = int(parts[0]) // slots_per_node
        if minutes is None or nodes < 1:
            continue
        windows.append(BackfillWindow(nodes, int(minutes)))
    return {queue: windows} if windows else {}


def render_job_times(scheduler_id: int) -> List[str]:
    """``bjobs -a -o "start_time finish_time" -json <id>`` (pure)."""
    return ["bjobs", "-a", "-o", "jobid start_time finish_time", "-json", str(int(scheduler_id))]


def parse_job_times(stdout: str, now: datetime, tz: Optional[tzinfo] = None) -> JobTimes:
    """START_TIME and FINISH_TIME of the one job in the output (pure)."""
    for rec in _records(stdout):
        return (
            parse_lsf_time(str(rec.get("START_TIME", "")), now, tz),
            parse_lsf_time(str(rec.get("FINISH_TIME", "")), now, tz),
        )
    return (None, None)


class LSFScheduler(Scheduler):
    """IBM Spectrum LSF through its command-line tools."""

    name = "lsf"
    title = "IBM Spectrum LSF"
    can_report_backfill = True
    options_help = {
        "node_flag": "nnodes (default; -nnodes N, as on Summit) or n (-n N*slots_per_node)",
        "slots_per_node": "slots per node, to turn slot counts into nodes (default 42)",
        "bslots_resource": "resource requirement for bslots -R (Summit: select[CN])",
        "backfill_queue": "queue name bslots windows are reported under (default batch)",
    }

    @property
    def slots_per_node(self) -> int:
        """Slots per node (option ``slots_per_node``, default 42)."""
        return as_int(self.options.get("slots_per_node", "42"), "slots_per_node", minimum=1)

    @property
    def node_flag(self) -> str:
        """How nodes are requested: ``nnodes`` or ``n`` (option ``node_flag``)."""
        flag = self.options.get("node_flag", "nnodes")
        if flag not in ("nnodes", "n"):
            raise ConfigError(f"scheduler lsf: option node_flag must be nnodes or n, got {flag!r}")
        return flag

    parse_submit_output = staticmethod(parse_submit)
    """``bsub``; the job id it prints."""

    def render_submit(self, script_path: PathLike, **request: Any) -> List[str]:
        """The submit command :meth:`submit` runs (pure; ``balsam queue submit --dry-run`` shows it)."""
        request.pop("cwd")
        return render_submit(script_path, node_flag=self.node_flag, slots_per_node=self.slots_per_node, **request)

    def lookup_hint(self, job_name: str) -> str:
        """``bjobs`` by name, ended jobs included (``-a``)."""
        return f"bjobs -a -J {job_name}"

    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """One ``bjobs -a -json``; "No job found" (non-zero exit) is an empty listing."""
        wanted = StatusFilter.of(scheduler_ids)
        if wanted.none:
            return {}
        result = self._run(render_status(user), ok_codes=range(256))
        if result.returncode != 0 and "job found" not in (result.stdout + result.stderr).lower():
            raise command_failed(result)
        return wanted.apply(parse_status(result.stdout, self._now(), self.tz, self.slots_per_node))

    def delete(self, scheduler_id: int) -> None:
        """``bkill``; a job that already finished is not an error."""
        result = self._run(render_delete(scheduler_id), ok_codes=range(256))
        text = (result.stdout + result.stderr).lower()
        if result.returncode != 0 and "already finished" not in text and "no matching job" not in text:
            raise command_failed(result)

    def get_backfill_windows(self) -> Dict[str, List[BackfillWindow]]:
        """From ``bslots``."""
        result = self._run(render_backfill(self.options.get("bslots_resource", "")), ok_codes=range(256))
        if result.returncode != 0 and "no backfill window" not in (result.stdout + result.stderr).lower():
            raise command_failed(result)
        return parse_backfill(result.stdout, self.options.get("backfill_queue", "batch"), self.slots_per_node)

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """From ``bjobs -a`` while LSF remembers the job (CLEAN_PERIOD)."""
        result = self._run(render_job_times(scheduler_id), ok_codes=range(256))
        if result.returncode != 0 and not result.stdout.strip().startswith("{"):
            return (None, None)
        return parse_job_times(result.stdout, self._now(), self.tz)

    def job_history(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> Optional[SchedulerJobStatus]:
        """``bjobs -a <id>`` while LSF remembers the job; None once it has forgotten it ("No job found")."""
        argv = render_status(None)
        result = self._run([*argv, str(int(scheduler_id))], ok_codes=range(256))
        if result.returncode != 0 and "job found" not in (result.stdout + result.stderr).lower() and "not found" not in (
                result.stdout + result.stderr).lower():
            raise command_failed(result)
        return parse_status(result.stdout, self._now(), self.tz, self.slots_per_node).get(int(scheduler_id))
