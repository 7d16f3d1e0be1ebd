"""The local "scheduler": a BatchJob is a background ``bash script`` on this host; its id is the PID.

Used by laptops, workstations and demos, and by tests as a real adapter. Each job runs under the recording
wrapper of :mod:`balsam.platforms.detached`, detached in its own session with its output in
``<script>.output``. A small record file (``<state_dir>/<pid>.job``, a link to ``<token>.rec``) keeps the start and end times and the
exit code, so statuses and times survive a restart of the site agent. ``delete`` terminates the whole
process tree (TERM, then KILL after ``kill_grace_s``). The local scheduler does not enforce the wall time:
the launcher inside the job stops itself at ``-t``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from balsam.exceptions import SchedulerError
from balsam.platforms import detached
from balsam.platforms.runner import CommandRunner
from balsam.platforms.schedulers.base import (
    JobTimes,
    PathLike,
    Scheduler,
    SchedulerJobStatus,
    SchedulerState,
    as_int,
    output_path_for,
    scheduler_job_name,
)
from balsam.platforms.schedulers.timefmt import from_epoch, minutes_between

logger = logging.getLogger(__name__)


def render_submit(script_path: PathLike, record_path: PathLike) -> List[str]:
    """The argv that runs ``bash <script>`` under the recording wrapper (pure)."""
    return detached.wrapper_argv(["bash", str(script_path)], record_path)


def status_from_record(pid: int, rec: detached.ProcessRecord, alive: bool, now: float) -> SchedulerJobStatus:
    """A job's status from its record and whether its process still runs (pure)."""
    meta = rec.meta
    started = rec.start if rec.start is not None else rec.submitted  # the wrapper may not have written yet
    start = from_epoch(started) if started is not None else None
    end = from_epoch(rec.end) if rec.end is not None else None
    wall = int(meta.get("wall_time_min", "0") or 0)
    if alive:
        state = SchedulerState.RUNNING
        elapsed = (now - started) / 60.0 if started is not None else 0.0
        remaining: Optional[float] = max(0.0, wall - elapsed) if wall else None
    else:
        remaining = 0.0
        if rec.cancelled is not None:
            state = SchedulerState.CANCELLED
        elif rec.returncode is None or rec.returncode != 0:
            # no end line: the wrapper itself was killed (SIGKILL, reboot); we cannot call that a success
            state = SchedulerState.FAILED
        else:
            state = SchedulerState.FINISHED
    return SchedulerJobStatus(
        scheduler_id=pid,
        state=state,
        queue=meta.get("queue", "local"),
        num_nodes=int(meta.get("num_nodes", "1") or 1),
        wall_time_min=wall,
        project=meta.get("project", "local"),
        time_remaining_min=remaining,
        queued_time_min=minutes_between(from_epoch(rec.submitted), start) if rec.submitted and start else 0.0,
        start_time=start,
        end_time=end,
        job_name=meta.get("job_name", ""),
        raw_state="running" if alive else ("ended" if rec.ended else "vanished"),
        exit_code=rec.returncode,
    )


class LocalScheduler(Scheduler):
    """Background processes on this host. ``state_dir`` holds one record per job (the composition root
    passes a folder in the site's state directory; the default is a per-user folder in the temp dir)."""

    name = "local"
    title = "local processes"
    options_help = {"kill_grace_s": "seconds between TERM and KILL when a job is deleted (default 10)"}
    submit_outlives_caller = False  # the job is spawned in-process: a killed agent's submit either happened or not

    def __init__(
        self,
        runner: Optional[CommandRunner] = None,
        *,
        state_dir: Optional[PathLike] = None,
        timeout_s: float = 60.0,
        env: Optional[Mapping[str, str]] = None,
        options: Optional[Mapping[str, str]] = None,
    ) -> None:
        super().__init__(runner, timeout_s=timeout_s, env=env, options=options)
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self.kill_grace_s = float(as_int(self.options.get("kill_grace_s", "10"), "kill_grace_s"))

    @property
    def state_dir(self) -> Path:
        """Where job records live (not created until the first submit)."""
        if self._state_dir is None:
            self._state_dir = Path(tempfile.gettempdir()) / f"balsam-local-jobs-{os.getuid()}"
        return self._state_dir

    def _record_path(self, pid: int) -> Path:
        return self.state_dir / f"{pid}.job"

    def submit_argv(
        self,
        script_path: PathLike,
        *,
        project: str,
        queue: str,
        num_nodes: int,
        wall_time_min: int,
        job_name: str = "",
        optional_params: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
    ) -> List[str]:
        """``bash <script>``: what :meth:`submit` runs, detached, inside a wrapper that records its start and end."""
        return ["bash", str(Path(script_path).resolve())]

    def submit(
        self,
        script_path: PathLike,
        *,
        project: str,
        queue: str,
        num_nodes: int,
        wall_time_min: int,
        job_name: str = "",
        optional_params: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> int:
        """Start ``bash <script>`` in the background; return its PID."""
        script = Path(script_path).resolve()
        if not script.is_file():
            raise SchedulerError(f"local: no batch script at {script}")
        if num_nodes != 1:
            raise SchedulerError(f"local: a local job runs on this one host; asked for {num_nodes} nodes")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The wrapper writes to a record named by a random token (its PID is not known before it starts);
        # <pid>.job is then made a symlink to it, replacing any stale link left by a recycled PID.
        record = self.state_dir / f"{uuid.uuid4().hex}.rec"
        submitted = detached.now()
        # Everything but the PID is written before the job starts: a submitter killed right after the spawn leaves a
        # record that names the script and the time, which find_submitted matches (a second submission otherwise).
        detached.append_record(
            record,
            f"submitted {submitted}",
            f"meta script {script}",
            f"meta queue {queue or 'local'}",
            f"meta project {project or 'local'}",
            f"meta num_nodes {num_nodes}",
            f"meta wall_time_min {int(wall_time_min)}",
            f"meta job_name {scheduler_job_name(job_name, script)}",
        )
        argv = render_submit(script, record)
        try:
            pid = self.runner.spawn(
                argv, output_path=output_path_for(script), env={**self.env, **(env or {})} or None, cwd=cwd or script.parent
            )
        except OSError as exc:
            record.unlink(missing_ok=True)
            raise SchedulerError(f"local: cannot start bash: {exc.strerror or exc}", argv) from exc
        # The job runs from here on: a note that cannot be written (a full disk) must not make it a failed submission.
        # It is found by its record until the note can be made (_record_file).
        self._try_note_pid(record, pid)
        return pid

    def _try_note_pid(self, record: Path, pid: int, *, write_pid: bool = True) -> None:
        """:meth:`_note_pid`, where a failure (a full disk) is logged: the job is then found by its record."""
        try:
            self._note_pid(record, pid, write_pid=write_pid)
        except OSError as exc:
            logger.warning("local: job %s runs, but its PID could not be noted in %s (%s); it is found by its record "
                           "until it can be", pid, self.state_dir, exc.strerror or exc)

    def _note_pid(self, record: Path, pid: int, *, write_pid: bool = True) -> None:
        """Write the job's PID (with its creation time, so a recycled PID is never taken for it) to its record and
        make ``<pid>.job`` point to the record, replacing any stale link left by a recycled PID."""
        if write_pid:
            create_time = detached.create_time_of(pid)
            detached.append_record(record, f"pid {pid} {create_time if create_time is not None else ''}".rstrip())
        tmp_link = self.state_dir / f".{pid}.{record.stem}.link"
        tmp_link.unlink(missing_ok=True)  # left by a submitter killed before it replaced the link
        os.symlink(record.name, tmp_link)
        os.replace(tmp_link, self._record_path(pid))

    def _record_file(self, pid: int) -> Optional[Path]:
        """The record of job ``pid``: the one ``<pid>.job`` links to, else (its note could not be written: a full disk)
        the record whose job runs or ran as ``pid``, whose note is then made where it can be; None if there is none."""
        link = self._record_path(pid)
        if link.exists():
            return link
        if not self.state_dir.is_dir():
            return None
        newest: Optional[Tuple[float, Path, bool]] = None
        for path in self.state_dir.glob("*.rec"):
            rec = detached.read_record(path)
            if rec is None or rec.meta.get("script") is None:
                continue
            started = rec.started_pid or (None if rec.ended else detached.wrapper_of(path)) if rec.pid is None else None
            if (rec.pid == pid or started == pid) and (newest is None or (rec.submitted or 0.0) > newest[0]):
                newest = (rec.submitted or 0.0, path, rec.pid is None)  # the newest: a PID may have been recycled
        if newest is None:
            return None
        self._try_note_pid(newest[1], pid, write_pid=newest[2])
        return newest[1]

    def _status(self, pid: int, now: float) -> Optional[SchedulerJobStatus]:
        path = self._record_file(pid)
        rec = detached.read_record(path) if path is not None else None
        if rec is None:
            return None
        # A job whose wrapper wrote its end has ended, whatever runs under its PID now (a PID noted after its end
        # has no creation time to tell a recycled one apart).
        return status_from_record(pid, rec, not rec.ended and detached.is_alive(rec.pid or pid, rec.create_time), now)

    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """Asked for ids: each one Balsam started (finished ones included). Otherwise: the jobs still running.

        No command runs: the records and the process table are read directly.
        """
        now = detached.now()
        out: Dict[int, SchedulerJobStatus] = {}
        if scheduler_ids is not None:
            for pid in scheduler_ids:
                status = self._status(int(pid), now)
                if status is not None:
                    out[int(pid)] = status
            return out
        if not self.state_dir.is_dir():
            return out
        for path in self.state_dir.glob("*.job"):
            if not path.stem.isdigit():
                continue
            status = self._status(int(path.stem), now)
            if status is not None and status.state is SchedulerState.RUNNING:
                out[status.scheduler_id] = status
        return out

    def delete(self, scheduler_id: int) -> None:
        """Terminate the job's whole process tree (TERM, then KILL after the grace period)."""
        path = self._record_file(int(scheduler_id))
        rec = detached.read_record(path) if path is not None else None
        if path is None or rec is None:
            raise SchedulerError(f"local: no job {scheduler_id} was started by Balsam here ({self.state_dir})")
        if not detached.is_alive(rec.pid or int(scheduler_id), rec.create_time):
            return
        detached.append_record(path, f"cancelled {detached.now()}")
        detached.terminate_tree(rec.pid or int(scheduler_id), rec.create_time, grace_s=self.kill_grace_s)
        reap = getattr(self.runner, "reap", None)
        if callable(reap):
            reap()
        after = detached.read_record(path)
        if after is not None and not after.ended:
            detached.append_record(path, f"end -9 {detached.now()}")

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """Start and end from the job's record."""
        path = self._record_file(int(scheduler_id))
        rec = detached.read_record(path) if path is not None else None
        if rec is None:
            return (None, None)
        return (
            from_epoch(rec.start) if rec.start is not None else None,
            from_epoch(rec.end) if rec.end is not None else None,
        )

    def find_submitted(self, job_name: str, script_path: PathLike, since: float) -> Optional[int]:
        """The newest job started from ``script_path`` at or after ``since``, running or ended, from the records.

        Every record is read, not only those a ``<pid>.job`` link names: a submitter killed between the start of the
        job and the note of its PID left a record without one. Its PID is then the one the job's wrapper wrote as
        it began, or, for a wrapper killed or not yet that far, the running wrapper that names the record; it is
        noted so the job's statuses read as any other's."""
        script = str(Path(script_path).resolve())
        newest: Optional[Tuple[float, int, Path, Optional[int]]] = None
        if not self.state_dir.is_dir():
            return None
        for path in self.state_dir.glob("*.rec"):
            rec = detached.read_record(path)
            if rec is None or rec.meta.get("script") != script or (rec.submitted or 0.0) < since:
                continue
            pid = rec.pid or rec.started_pid or detached.wrapper_of(path)
            if pid is not None and (newest is None or (rec.submitted or 0.0, pid) > newest[:2]):
                newest = (rec.submitted or 0.0, pid, path, rec.pid)
        if newest is None:
            return None
        _, pid, path, noted = newest
        try:
            linked = os.readlink(self._record_path(pid)) == path.name
        except OSError:
            linked = False
        if noted is None or not linked:
            self._try_note_pid(path, pid, write_pid=noted is None)
        return pid

    def discover_projects(self, user: Optional[str] = None) -> List[str]:
        """The local scheduler has one project: ``local``."""
        return ["local"]
