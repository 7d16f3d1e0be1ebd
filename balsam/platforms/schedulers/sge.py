"""(Son of / Univa) Grid Engine: ``qsub -terse``, ``qstat -xml -r``, ``qdel``, ``qacct -j``.

Grid Engine counts slots, not nodes. A Balsam BatchJob of N nodes asks for ``N * slots_per_node`` slots of the
parallel environment named by the ``pe`` option (no PE: a one-node, one-slot job). The Balsam project is
submitted as the accounting string (``-A``), which Grid Engine accepts free-form; Grid Engine's own
share-tree projects (``-P``) must be pre-defined by an administrator and are not used. A finished job leaves
``qstat`` at once; its times come from ``qacct`` (the accounting file is flushed every ``flush_time``).
Grid Engine publishes no backfill windows.

Options (``scheduler.options``):
  pe              parallel environment for multi-slot jobs (e.g. ``mpi``); empty: none
  slots_per_node  slots requested per Balsam node (default 1)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, tzinfo
from typing import Any, Dict, Iterable, List, Mapping, Optional

from balsam.exceptions import SchedulerError
from balsam.platforms.schedulers.base import (
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
from balsam.platforms.schedulers.timefmt import format_hms, minutes_between, parse_ctime, parse_iso

_R, _Q, _H, _F, _C = (SchedulerState.RUNNING, SchedulerState.QUEUED, SchedulerState.HELD, SchedulerState.FAILED, SchedulerState.CANCELLED)

# Grid Engine job state codes as qstat prints them (letters: q queued, w waiting, h hold, r running,
# t transferring, R restarted, s/S/T suspended, E error, d deletion).
STATE_TABLE: Dict[str, SchedulerState] = {
    "qw": _Q, "hqw": _H, "hRwq": _H, "Rq": _Q,
    "r": _R, "t": _R, "Rr": _R, "Rt": _R,
    "s": _H, "ts": _H, "S": _H, "tS": _H, "T": _H, "tT": _H,
    "Rs": _H, "Rts": _H, "RS": _H, "RtS": _H, "RT": _H, "RtT": _H,
    "Eqw": _F, "Ehqw": _F, "EhRqw": _F,
    "dr": _C, "dt": _C, "dRr": _C, "dRt": _C, "ds": _C, "dS": _C, "dT": _C,
    "dRs": _C, "dRS": _C, "dRT": _C, "dqw": _C, "dhqw": _C,
}  # fmt: skip

_NAME_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def job_name_for_sge(name: str) -> str:
    """Grid Engine refuses ``/ : @ \\ * ?`` and names starting with a digit; make any name acceptable."""
    cleaned = _NAME_BAD.sub("_", name) or "balsam"
    return cleaned if not cleaned[0].isdigit() else f"b{cleaned}"


def render_submit(
    script_path: PathLike,
    *,
    project: str,
    queue: str,
    num_nodes: int,
    wall_time_min: int,
    job_name: str = "",
    optional_params: Optional[Mapping[str, str]] = None,
    pe: str = "",
    slots_per_node: int = 1,
    cwd: Optional[PathLike] = None,
) -> List[str]:
    """The ``qsub -terse`` argv (pure). Optional params become ``-l key=value`` resource requests."""
    argv = [
        "qsub", "-terse", "-S", "/bin/bash", "-N", job_name_for_sge(scheduler_job_name(job_name, script_path)),
        "-o", str(output_path_for(script_path)), "-j", "y",
    ]  # fmt: skip
    if cwd is not None:
        argv += ["-wd", str(cwd)]
    if project:
        argv += ["-A", project]
    if queue:
        argv += ["-q", queue]
    argv += ["-l", f"h_rt={format_hms(int(wall_time_min))}"]
    if pe:
        argv += ["-pe", pe, str(int(num_nodes) * slots_per_node)]
    elif num_nodes != 1:
        raise SchedulerError(f"sge: {num_nodes} nodes need a parallel environment (set scheduler.options.pe)")
    for key, value in sorted((optional_params or {}).items()):
        argv += ["-l", f"{check_param_key(key, 'sge')}={value}"]
    argv.append(str(script_path))
    return argv


def parse_submit(stdout: str) -> int:
    """``qsub -terse`` prints ``<id>`` (or ``<id>.1-3:1`` for arrays) (pure)."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    head = text.split(".", 1)[0]
    if not head.isdigit():
        raise SchedulerError(f"qsub printed no job id: {stdout.strip()!r}", stdout=stdout)
    return int(head)


def render_status(user: Optional[str] = None) -> List[str]:
    """One ``qstat -xml -r`` for a user's jobs (pure); ``-r`` adds the requested h_rt and PE."""
    return ["qstat", "-xml", "-r", "-u", user or "$user"]


def _text(el: ET.Element, tag: str) -> str:
    child = el.find(tag)
    return (child.text or "").strip() if child is not None else ""


def parse_status(
    stdout: str, now: datetime, tz: Optional[tzinfo] = None, slots_per_node: int = 1
) -> Dict[int, SchedulerJobStatus]:
    """Parse ``qstat -xml -r`` (pure). Array tasks of one job collapse into one entry."""
    try:
        root = ET.fromstring(stdout)
    except ET.ParseError as exc:
        raise SchedulerError(f"qstat -xml printed malformed XML: {exc}", stdout=stdout) from None
    out: Dict[int, SchedulerJobStatus] = {}
    for job in root.iter("job_list"):
        jid_text = _text(job, "JB_job_number")
        if not jid_text.isdigit():
            continue
        jid = int(jid_text)
        raw = _text(job, "state")
        state = translate_state(STATE_TABLE, raw, "sge")
        queue_instance = _text(job, "queue_name")
        slots = int(_text(job, "slots") or 0)
        h_rt = next((int(float(r.text or 0)) for r in job.findall("hard_request") if r.get("name") in ("h_rt", "s_rt")), 0)
        start = parse_iso(_text(job, "JAT_start_time"), tz)
        submit = parse_iso(_text(job, "JB_submission_time"), tz)
        running = state in (SchedulerState.RUNNING, SchedulerState.CANCELLED) and start is not None
        remaining = max(0.0, h_rt / 60.0 - (minutes_between(start, now) or 0.0)) if running and h_rt else None
        hard_queue = next((q.text or "" for q in job.findall("hard_req_queue")), "")
        out[jid] = SchedulerJobStatus(
            scheduler_id=jid,
            state=state,
            queue=queue_instance.split("@", 1)[0] if queue_instance else hard_queue,
            num_nodes=max(1, slots // max(1, slots_per_node)),
            wall_time_min=h_rt // 60,
            project=_text(job, "JB_project"),
            time_remaining_min=remaining,
            queued_time_min=minutes_between(submit, now) if submit is not None else None,
            start_time=start,
            job_name=_text(job, "JB_name"),
            raw_state=raw,
        )
    return out


def render_delete(scheduler_id: int) -> List[str]:
    """``qdel <id>`` (pure)."""
    return ["qdel", str(int(scheduler_id))]


def render_qacct(scheduler_id: int) -> List[str]:
    """``qacct -j <id>`` (pure)."""
    return ["qacct", "-j", str(int(scheduler_id))]


def parse_qacct(stdout: str, tz: Optional[tzinfo] = None) -> Dict[str, str]:
    """``key value`` lines of the last record in ``qacct -j`` output (pure; a re-run job has several)."""
    record: Dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("====="):
            record = {}
            continue
        parts = line.split(None, 1)
        if parts:
            record[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return record


def render_find(job_name: str) -> List[str]:
    """``qacct -j <name>``: the accounting records of the user's jobs of that name (pure)."""
    return ["qacct", "-j", job_name_for_sge(job_name)]


def parse_find(stdout: str, job_name: str, since: float, tz: Optional[tzinfo] = None) -> List[int]:
    """The job numbers of the ``qacct -j`` records named ``job_name`` submitted at or after ``since`` (epoch seconds;
    qacct's times have whole seconds) (pure)."""
    name = job_name_for_sge(job_name)
    ids = []
    for record in stdout.split("=====")[1:]:
        fields = parse_qacct("=====\n" + record, tz)
        submitted = parse_ctime(fields.get("qsub_time", ""), tz)
        if fields.get("jobname") == name and fields.get("jobnumber", "").isdigit() and submitted is not None \
                and submitted.timestamp() >= int(since):
            ids.append(int(fields["jobnumber"]))
    return ids


def parse_qacct_times(stdout: str, tz: Optional[tzinfo] = None) -> JobTimes:
    """start_time and end_time from ``qacct -j`` (pure)."""
    record = parse_qacct(stdout, tz)
    return parse_ctime(record.get("start_time", ""), tz), parse_ctime(record.get("end_time", ""), tz)


def parse_qacct_status(stdout: str, scheduler_id: int, tz: Optional[tzinfo] = None) -> Optional[SchedulerJobStatus]:
    """The final status in a ``qacct -j`` record (pure): ``failed`` non-zero (the job never ran properly,
    e.g. deleted while pending) is CANCELLED or FAILED, else ``exit_status`` decides; None without a record."""
    record = parse_qacct(stdout, tz)
    if not record:
        return None
    exit_text = record.get("exit_status", "").split()[0] if record.get("exit_status", "").strip() else ""
    exit_code = int(exit_text) if exit_text.lstrip("-").isdigit() else None
    failed = record.get("failed", "0").split()[0] if record.get("failed", "").strip() else "0"
    start, end = parse_ctime(record.get("start_time", ""), tz), parse_ctime(record.get("end_time", ""), tz)
    if failed != "0":
        state = SchedulerState.CANCELLED if start is None else SchedulerState.FAILED
    else:
        state = SchedulerState.FINISHED if exit_code == 0 else SchedulerState.FAILED
    return SchedulerJobStatus(scheduler_id=int(scheduler_id), state=state, start_time=start, end_time=end,
                              raw_state="qacct", exit_code=exit_code, reason=record.get("failed", "") if failed != "0" else "")


class SGEScheduler(Scheduler):
    """(Son of) Grid Engine through its command-line tools."""

    name = "sge"
    title = "Grid Engine"
    options_help = {
        "pe": "parallel environment for jobs of more than one slot (e.g. mpi); empty for none",
        "slots_per_node": "slots requested per Balsam node (default 1)",
    }

    @property
    def slots_per_node(self) -> int:
        """Slots per Balsam node (option ``slots_per_node``, default 1)."""
        return as_int(self.options.get("slots_per_node", "1"), "slots_per_node", minimum=1)

    parse_submit_output = staticmethod(parse_submit)
    """``qsub -terse``; the job id it prints."""

    def render_submit(self, script_path: PathLike, **request: Any) -> List[str]:
        """The submit command :meth:`submit` runs (pure; ``balsam queue submit --dry-run`` shows it)."""
        return render_submit(script_path, pe=self.options.get("pe", ""), slots_per_node=self.slots_per_node, **request)

    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """One ``qstat -xml -r``, filtered by id on this side."""
        wanted = StatusFilter.of(scheduler_ids)
        if wanted.none:
            return {}
        result = self._run(render_status(user))
        return wanted.apply(parse_status(result.stdout, self._now(), self.tz, self.slots_per_node))

    def delete(self, scheduler_id: int) -> None:
        """``qdel``; a job Grid Engine no longer knows is not an error (it is gone either way)."""
        result = self._run(render_delete(scheduler_id), ok_codes=range(256))
        if result.returncode != 0 and "does not exist" not in result.stdout + result.stderr:
            raise command_failed(result)

    def find_submitted(self, job_name: str, script_path: PathLike, since: float) -> Optional[int]:
        """Listed by ``qstat`` while the job waits or runs, else found in accounting (``qacct``): Grid Engine forgets an
        ended job at once, so an agent killed mid-``qsub`` and restarted after the job had ended submitted it a
        second time. Where qacct cannot answer, qstat's answer (none) stands."""
        found = super().find_submitted(job_name, script_path, since)
        if found is not None:
            return found
        try:
            result = self._run(render_find(job_name), ok_codes=range(256))
        except SchedulerError:
            return None
        ids = parse_find(result.stdout, job_name, since, self.tz) if result.returncode == 0 else []
        return max(ids) if ids else None

    def lookup_hint(self, job_name: str) -> str:
        """``qstat -j`` by name, and ``qacct -j`` for one that has ended."""
        name = job_name_for_sge(job_name)
        return f"qstat -j {name}, or qacct -j {name} once it ended"

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """From ``qacct -j``; (None, None) until the accounting record is written."""
        result = self._run(render_qacct(scheduler_id), ok_codes=range(256))
        if result.returncode != 0:
            if "not found" in result.stdout + result.stderr:
                return (None, None)
            raise command_failed(result)
        return parse_qacct_times(result.stdout, self.tz)

    def job_history(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> Optional[SchedulerJobStatus]:
        """The job's accounting record (``qacct -j``); None until it is written."""
        result = self._run(render_qacct(scheduler_id), ok_codes=range(256))
        if result.returncode != 0:
            if "not found" in result.stdout + result.stderr:
                return None
            raise command_failed(result)
        return parse_qacct_status(result.stdout, scheduler_id, self.tz)
