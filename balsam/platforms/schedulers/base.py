"""What every batch-scheduler adapter offers, and the one state enum all their states map to.

An adapter splits each operation in three: *render* the argv (a pure function), *run* it through the
injected :class:`~balsam.platforms.runner.CommandRunner` (with a timeout and an explicit environment), and
*parse* the output (a pure function). Only the middle step touches the system, so parsers are tested on
captured output and argv on exact expectations.

The scheduler service calls, per sync cycle, one :meth:`Scheduler.get_statuses` (ONE scheduler command,
whatever the number of BatchJobs), then :meth:`~Scheduler.submit` / :meth:`~Scheduler.delete` for the
BatchJobs that need it, and :meth:`~Scheduler.job_times` for BatchJobs that vanished from the listing.

Contract of :meth:`Scheduler.get_statuses`: it lists the jobs the scheduler still knows, or raises
:class:`~balsam.exceptions.SchedulerError` when it cannot tell (server down, command failed): a failed poll is
never an empty listing. Finished jobs may or may not appear (Slurm keeps them for ``MinJobAge``, PBS with job
history, LSF for ``CLEAN_PERIOD``); a BatchJob missing from several successful listings is looked up in the
scheduler's history (:meth:`Scheduler.job_history`) before the service calls it finished.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from enum import Enum
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from balsam.exceptions import ConfigError, SchedulerError, SubmissionUnconfirmed
from balsam.platforms.runner import CommandResult, CommandRunner, SubprocessRunner

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")


class SchedulerState(str, Enum):
    """The state of a batch job as Balsam sees it, whatever scheduler reported it."""

    QUEUED = "queued"
    """Waiting for resources (includes dependencies, transit, starting up)."""
    HELD = "held"
    """Will not start until released (user/admin/system hold, suspended)."""
    RUNNING = "running"
    """Has resources; the script runs (includes exiting and completing)."""
    FINISHED = "finished"
    """Ended with exit code 0."""
    FAILED = "failed"
    """Ended with an error: non-zero exit, timeout, node failure, out of memory, or an error state."""
    CANCELLED = "cancelled"
    """Deleted by a user or an administrator before or while it ran."""
    UNKNOWN = "unknown"
    """The scheduler printed a state Balsam does not know (logged as a warning)."""


ACTIVE_STATES: FrozenSet[SchedulerState] = frozenset({SchedulerState.QUEUED, SchedulerState.HELD, SchedulerState.RUNNING})
DONE_STATES: FrozenSet[SchedulerState] = frozenset({SchedulerState.FINISHED, SchedulerState.FAILED, SchedulerState.CANCELLED})


def translate_state(table: Mapping[str, SchedulerState], raw: str, scheduler: str) -> SchedulerState:
    """Look ``raw`` up in a scheduler's table; an unknown state is UNKNOWN, with a warning."""
    state = table.get(raw)
    if state is None:
        logger.warning("%s reported job state %r, which Balsam does not know; treating it as unknown", scheduler, raw)
        return SchedulerState.UNKNOWN
    return state


@dataclass
class SchedulerJobStatus:
    """One batch job as the scheduler reports it. Times are UTC-aware; durations are in minutes."""

    scheduler_id: int
    state: SchedulerState
    queue: str = ""
    num_nodes: int = 0
    wall_time_min: int = 0
    project: str = ""
    time_remaining_min: Optional[float] = None
    queued_time_min: Optional[float] = None
    start_time: Optional[datetime] = None
    end_time: Optional[datetime] = None
    job_name: str = ""
    raw_state: str = ""
    exit_code: Optional[int] = None
    reason: str = ""


@dataclass(frozen=True)
class BackfillWindow:
    """Idle nodes a job of at most ``wall_time_min`` could start on now (``UNLIMITED_MIN`` if unlimited)."""

    num_nodes: int
    wall_time_min: int


JobTimes = Tuple[Optional[datetime], Optional[datetime]]

_OPTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def check_param_key(key: str, scheduler: str) -> str:
    """An optional batch-job parameter name must look like a flag name (no spaces, no leading dash)."""
    if not _OPTION_KEY.match(key):
        raise SchedulerError(f"{scheduler}: invalid optional parameter name {key!r} (use letters, digits, '_' and '-')")
    return key


def current_user() -> str:
    """The login name of this process's user, from the password database (not the environment)."""
    return pwd.getpwuid(os.getuid()).pw_name


def as_bool(value: str, name: str) -> bool:
    """Parse an option string (``true``/``false``/``yes``/``no``/``1``/``0``)."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"option {name}: expected true or false, got {value!r}")


def as_int(value: str, name: str, minimum: int = 0) -> int:
    """Parse an integer option."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"option {name}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"option {name}: must be at least {minimum}, got {number}")
    return number


class Scheduler(ABC):
    """Base of every scheduler adapter. Building one does no work: no command runs until a method is called.

    ``runner`` runs the commands (default: a :class:`SubprocessRunner` inheriting this process's
    environment); ``timeout_s`` bounds each command; ``env`` is laid over the runner's environment for every
    command; ``options`` are the adapter's own settings (``scheduler.options`` in settings.yml), each named in
    the class's ``options_help``; ``tz`` is the zone the scheduler prints times in (None: local).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    options_help: ClassVar[Dict[str, str]] = {}
    can_discover_projects: ClassVar[bool] = False
    can_report_backfill: ClassVar[bool] = False
    submit_outlives_caller: ClassVar[bool] = True
    """Whether a submit command can still land after the process that ran it was killed (``sbatch``, ``qsub``
    run as children, which a SIGKILL of the agent does not stop); False where the submit is done in-process."""

    def __init__(
        self,
        runner: Optional[CommandRunner] = None,
        *,
        timeout_s: float = 60.0,
        env: Optional[Mapping[str, str]] = None,
        options: Optional[Mapping[str, str]] = None,
        tz: Optional[tzinfo] = None,
    ) -> None:
        self.runner: CommandRunner = runner if runner is not None else SubprocessRunner(timeout_s=timeout_s)
        self.timeout_s = timeout_s
        self.env = dict(env or {})
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.options_help))
        if unknown:
            known = ", ".join(sorted(self.options_help)) or "none"
            raise ConfigError(f"scheduler {self.name}: unknown option {unknown[0]!r} (known options: {known})")
        self.tz = tz

    # -- running commands -------------------------------------------------------------------------------

    def _run(
        self,
        argv: Sequence[str],
        *,
        cwd: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
        ok_codes: Iterable[int] = (0,),
        input_text: Optional[str] = None,
    ) -> CommandResult:
        """Run one scheduler command; translate every failure into :class:`SchedulerError` here, once."""
        merged = {**self.env, **(env or {})}
        try:
            result = self.runner.run(argv, env=merged or None, cwd=cwd, timeout_s=self.timeout_s, input_text=input_text)
        except FileNotFoundError as exc:
            raise SchedulerError(
                f"{argv[0]}: command not found (is {self.title or self.name} installed and on PATH?)", argv
            ) from exc
        except PermissionError as exc:
            raise SchedulerError(f"{argv[0]}: permission denied", argv) from exc
        except subprocess.TimeoutExpired as exc:
            raise SchedulerError(f"{argv[0]} did not finish within {self.timeout_s:g} s", argv) from exc
        except OSError as exc:
            raise SchedulerError(f"{argv[0]}: cannot run: {exc.strerror or exc}", argv) from exc
        if result.returncode not in tuple(ok_codes):
            raise command_failed(result)
        return result

    def _run_and_parse(
        self,
        argv: Sequence[str],
        parse: Callable[[str], T],
        *,
        cwd: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> T:
        """Run a command and parse its standard output; a parse failure carries the command and its output."""
        result = self._run(argv, cwd=cwd, env=env)
        try:
            return parse(result.stdout)
        except SchedulerError as exc:
            raise SchedulerError(str(exc), argv, result.returncode, result.stdout, result.stderr) from None

    def _now(self) -> datetime:
        return datetime.now(timezone.utc)

    # -- the interface ------------------------------------------------------------------------------------

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
        """Submit a rendered batch script; return the scheduler's job id. Output goes to ``<script>.output``.

        Runs :meth:`submit_argv`'s command and reads the id with :meth:`parse_submit_output`."""
        argv = self.submit_argv(script_path, project=project, queue=queue, num_nodes=num_nodes, wall_time_min=wall_time_min,
                                job_name=job_name, optional_params=optional_params, cwd=cwd)
        try:
            result = self._run(argv, cwd=cwd, env=env, ok_codes=range(-256, 256))
        except SchedulerError as exc:
            if isinstance(exc.__cause__, subprocess.TimeoutExpired):  # killed there: it may have sent the job already
                raise SubmissionUnconfirmed(f"{exc} and was stopped; {self.title or self.name} may have taken the job",
                                            argv) from exc
            raise
        doubt = submit_doubt(result)
        if doubt:
            failed = command_failed(result)
            raise SubmissionUnconfirmed(f"{failed} ({doubt}; {self.title or self.name} may have taken the job)",
                                        argv, result.returncode, result.stdout, result.stderr)
        if result.returncode != 0:
            raise command_failed(result)
        try:
            return self.parse_submit_output(result.stdout)
        except SchedulerError as exc:
            raise SchedulerError(str(exc), argv, result.returncode, result.stdout, result.stderr) from None

    def parse_submit_output(self, stdout: str) -> int:
        """The job id in what the submit command printed."""
        raise SchedulerError(f"{self.name}: this scheduler does not say how to read its submit output")

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
        """The command :meth:`submit` would run (pure), for ``balsam queue submit --dry-run``: the adapter's
        :meth:`render_submit` with its own options."""
        return self.render_submit(script_path, project=project, queue=queue, num_nodes=num_nodes,
                                  wall_time_min=wall_time_min, job_name=job_name, optional_params=optional_params,
                                  cwd=cwd)

    def render_submit(self, script_path: PathLike, **request: Any) -> List[str]:
        """The adapter's submit command for a request (the keyword arguments of :meth:`submit_argv`)."""
        raise SchedulerError(f"{self.name}: this scheduler cannot show its submit command")

    @abstractmethod
    def get_statuses(
        self, scheduler_ids: Optional[Iterable[int]] = None, user: Optional[str] = None
    ) -> Dict[int, SchedulerJobStatus]:
        """The jobs the scheduler knows, by id, with ONE command; ``scheduler_ids`` filters (None: all of
        ``user``'s jobs, by default this process's user)."""

    @abstractmethod
    def delete(self, scheduler_id: int) -> None:
        """Cancel a queued or running job."""

    def get_backfill_windows(self) -> Dict[str, List[BackfillWindow]]:
        """Windows of idle nodes per queue; {} where the scheduler does not publish them."""
        return {}

    def job_times(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> JobTimes:
        """When a finished job started and ended (UTC), as far as the scheduler still knows; (None, None)
        if it does not."""
        return (None, None)

    def job_history(self, scheduler_id: int, script_path: Optional[PathLike] = None) -> Optional[SchedulerJobStatus]:
        """What the scheduler's history (``qstat -x``, ``sacct``, ``bjobs -a``, ``qacct``, the cobaltlog) says of
        a job missing from the listing: its final status, or None where the history has no record.

        This default reads :meth:`job_times`: an end time means the job ended (its exit is unknown)."""
        start, end = self.job_times(scheduler_id, script_path)
        if end is None:
            return None
        return SchedulerJobStatus(scheduler_id=int(scheduler_id), state=SchedulerState.FINISHED, start_time=start,
                                  end_time=end, raw_state="history")

    def discover_projects(self, user: Optional[str] = None) -> List[str]:
        """Projects (accounts) the user may charge, where the scheduler can say; [] otherwise."""
        return []

    def find_submitted(self, job_name: str, script_path: PathLike, since: float) -> Optional[int]:
        """The id of a job submitted as ``job_name`` (at or after ``since``, epoch seconds, where the scheduler
        can tell) that the scheduler still knows, the newest if several; None if there is none.

        The scheduler service asks this after a restart for a BatchJob whose submission was under way when the
        agent stopped (killed between the submit command and recording its id), so a submission the scheduler
        took is recorded instead of being made twice. Raises :class:`SchedulerError` when the scheduler cannot
        tell. This default reads the user's jobs (:meth:`get_statuses`) by name."""
        found = [s.scheduler_id for s in self.get_statuses().values() if s.job_name == job_name]
        return max(found) if found else None

    def lookup_hint(self, job_name: str) -> str:
        """How a user looks for a job named ``job_name`` at this scheduler (a command to run), for the message of a
        BatchJob whose submission Balsam could not confirm (pure)."""
        return f"the {self.title or self.name} queue"


_LOST_ANSWER = re.compile(r"timed out|timeout|zero bytes were transmitted|connection reset|connection closed|broken pipe|"
                          r"end of file|unexpected eof", re.IGNORECASE)
"""What a submit command says when its connection failed after the request may have been sent: Slurm's 'Socket timed
out on send/recv operation' and 'Zero Bytes were transmitted or received', PBS's 'End of File', a reset connection.
Not 'Connection refused' or 'cannot connect': a request that never left is a clear failure."""
_KILLED_BY_SHELL = {128 + 9: "Killed", 128 + 15: "Terminated"}


def submit_doubt(result: CommandResult) -> str:
    """Why a finished submit command leaves it unknown whether the scheduler took the job, or "" if its answer is
    clear (an id, or a refusal in words) (pure): it died by a signal, or its connection failed after sending."""
    said = (result.stderr.strip() or result.stdout.strip())
    if result.returncode < 0:
        return f"it was killed by signal {-result.returncode}"
    if result.returncode in _KILLED_BY_SHELL and said in ("", _KILLED_BY_SHELL[result.returncode]):
        return f"it was killed (exit {result.returncode})"
    if result.returncode != 0 and _LOST_ANSWER.search(said):
        return "its connection failed after it may have sent the request"
    return ""


def command_failed(result: CommandResult, what: str = "") -> SchedulerError:
    """A :class:`SchedulerError` for a command that exited non-zero, naming its first line of complaint."""
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    detail = text[-1] if text else "no output"
    prefix = what or result.argv[0]
    return SchedulerError(
        f"{prefix} failed (exit {result.returncode}): {detail}", result.argv, result.returncode, result.stdout, result.stderr
    )


def output_path_for(script_path: PathLike) -> Path:
    """Where a batch script's output goes: ``qlaunch00001.sh`` -> ``qlaunch00001.output``."""
    return Path(script_path).with_suffix(".output")


def scheduler_job_name(job_name: str, script_path: PathLike) -> str:
    """The job name to submit under: the given one, else the script's stem."""
    return job_name or Path(script_path).stem


@dataclass
class StatusFilter:
    """Which ids a status poll asked about (None: every job of the user)."""

    ids: Optional[FrozenSet[int]] = None

    @classmethod
    def of(cls, scheduler_ids: Optional[Iterable[int]]) -> "StatusFilter":
        """The filter for a poll's ``scheduler_ids`` argument."""
        return cls(None if scheduler_ids is None else frozenset(int(i) for i in scheduler_ids))

    @property
    def none(self) -> bool:
        """The poll asked about an empty set of ids: nothing to run."""
        return self.ids is not None and not self.ids

    def keep(self, scheduler_id: int) -> bool:
        """Whether the poll asked about this id."""
        return self.ids is None or scheduler_id in self.ids

    def apply(self, statuses: Dict[int, SchedulerJobStatus]) -> Dict[int, SchedulerJobStatus]:
        """The statuses the poll asked about."""
        if self.ids is None:
            return statuses
        return {k: v for k, v in statuses.items() if k in self.ids}
