"""What both launcher modes share: configuration, the lease and the status updates, wall time, stopping.

The life of a launcher:

1. open a lease (JobSource) and start the StatusUpdater (through the transport the rule picks);
2. loop: acquire what fits, start it, notice what ended, report; notice jobs a user killed; renew the lease;
3. stop on wall time (``-t`` minus a margin), on ``idle_ttl_s`` with nothing to run, or on SIGTERM/SIGINT;
4. shut down: running jobs are killed and become RUN_TIMEOUT, the updater is flushed, and only then the lease
   is released (releasing first would time out jobs whose RUN_DONE was still queued).

Jobs are acquired with ``max_wall_time_min`` set to the minutes left, so a job whose declared wall time does
not fit is never started. A lease found expired (the agent timed it out) stops the jobs it held: they are
already RUN_TIMEOUT at the site, and a fresh lease is opened.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from balsam.db import launch_flags
from balsam.db.doorbell import Doorbell
from balsam.db.journal import JournalWriter
from balsam.db.sessions import capacity_label
from balsam.db.states import DONE_STATES, JobState
from balsam.db.updater import Rejected, StatusUpdater
from balsam.exceptions import AppError, BalsamError, SessionExpired, ValidationError
from balsam.launcher.executor import Finished
from balsam.launcher.resources import Unplaceable
from balsam.launcher.tasks import AppCache, Task, build_task
from balsam.launcher.transport import JobSourceLike, Transport
from balsam.platforms.nodes import ComputeNode
from balsam.settings import SiteSettings
from balsam.site import SiteLayout
from balsam.site.agent_state import disk_state

logger = logging.getLogger("balsam.launcher")
S = JobState

KILL_CHECK_PERIOD_S = 0.25
DOORBELL_POLL_S = 0.25
"""With a doorbell (rung when jobs become runnable), the poll for new jobs is only a fallback."""
REMOTE_KILL_CHECK_PERIOD_S = 1.0
ACQUIRE_FALLBACK_PERIOD_S = 1.0
MAX_ACQUIRE = 2048
MIN_ACQUIRE_WAIT_S = 0.05
DB_WAIT_S = 60.0
"""At the end, how long a launcher waits for the DB to take its last status updates before it relies on its
journal alone (replayed when its lease ends), if the journal holds them all."""
KEEP_RETRY_S = 2.0
KEEP_LOG_PERIOD_S = 60.0
DISK_CHECK_PERIOD_S = 1.0
"""How often the launcher looks at the free space of the site's data disk while it acquires jobs."""


@dataclass
class LauncherConfig:
    """Everything a launcher (or one partition of it) runs with, resolved once."""

    root: Path
    settings: SiteSettings
    job_mode: str
    wall_time_min: float
    host: str
    nodes: List[ComputeNode]
    filter_tags: Dict[str, str] = field(default_factory=dict)
    batch_job_id: Optional[int] = None
    idle_ttl_s: float = 10.0
    label: str = "launcher"
    log_dir: Optional[Path] = None
    guarded: bool = True
    """The journal, the job watchdog and pid records; False only in a benchmark of their cost (never a setting:
    see :data:`balsam.launcher.watchdog.BENCH_UNGUARDED_ENV`)."""

    @property
    def layout(self) -> SiteLayout:
        return SiteLayout(self.root)

    @property
    def data_dir(self) -> str:
        return str(self.layout.data)

    @property
    def margin_s(self) -> float:
        """How long before the wall time the launcher stops: 5% of it, between 0.5 s and 2 min."""
        return min(120.0, max(0.5, 0.05 * self.wall_time_min * 60.0))

    @property
    def kill_grace_s(self) -> float:
        """SIGTERM to SIGKILL, within the margin."""
        return min(3.0, self.margin_s / 2)


class Lifecycle:
    """Wall time, signals and the stop request."""

    def __init__(self, cfg: LauncherConfig) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + cfg.wall_time_min * 60.0 - cfg.margin_s
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def remaining_min(self) -> float:
        return max(0.0, self.remaining_s() / 60.0)

    def stop(self, reason: str) -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    @property
    def stopping(self) -> bool:
        if not self.stop_event.is_set() and self.remaining_s() <= 0:
            self.stop("wall time reached")
        return self.stop_event.is_set()

    def install_signals(self, on_signal: Optional[Any] = None) -> None:
        """SIGTERM and SIGINT stop the launcher cleanly (only possible from the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            logger.info("not in the main thread: SIGTERM/SIGINT handlers not installed")
            return

        def handler(signum: int, _frame: Any) -> None:
            self.signum = signum
            self.stop(f"received {signal.Signals(signum).name}")
            if on_signal is not None:
                on_signal()

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, handler)

    def restore_signals(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class Reporter:
    """Turns what happened to jobs into state changes: each is appended to the lease's journal first (it
    survives the launcher's death; :mod:`balsam.db.journal`), then queued on the StatusUpdater.

    A job of an app without a postprocess hook (:meth:`finish_here`) that ends with rc 0 gets RUN_DONE and then
    POSTPROCESSED in the same status batch: the state machine's cascade takes it on to JOB_FINISHED (releasing
    its children) or to its stage-out, with every event, without waiting for the site agent's processing."""

    def __init__(self, updater: StatusUpdater, state_dir: Optional[Path] = None, data_dir: Optional[Path] = None) -> None:
        self.updater = updater
        self.state_dir = state_dir
        self.data_dir = data_dir
        """The jobs' workdirs' folder: a job that fails while its disk is full is reported as such."""
        self.journal: Optional[JournalWriter] = None
        self.session_id: Optional[int] = None
        self.done = 0
        self.errors = 0
        self.timeouts = 0
        self._finish_here: Set[int] = set()

    def finish_here(self, job_id: int) -> None:
        """Job ``job_id``'s app has no postprocess hook: a clean run goes on to POSTPROCESSED from here."""
        self._finish_here.add(job_id)

    def forget_all(self) -> None:
        """The lease was lost: its jobs are no longer this launcher's to move on."""
        self._finish_here.clear()

    def use_session(self, session_id: Optional[int]) -> None:
        """Report under a (new) lease, journaling into its file."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self.session_id = session_id
        if session_id is not None and self.state_dir is not None:
            self.journal = JournalWriter(self.state_dir, session_id)

    def put(self, job_id: int, state: str, timestamp: Optional[float] = None, data: Optional[Dict[str, Any]] = None,
            fields: Optional[Dict[str, Any]] = None, session_id: Optional[int] = None) -> None:
        """Journal, then queue, one change."""
        ts = time.time() if timestamp is None else timestamp
        if self.journal is not None:
            self.journal.append(job_id, state, ts, data, fields)
        self.updater.put(job_id, state, timestamp=ts, data=data, fields=fields, session_id=session_id)

    def put_together(self, changes: List[Tuple[int, str, float, Optional[Dict[str, Any]], Optional[Dict[str, Any]], Optional[int]]]) -> None:
        """Journal, then queue, changes that must reach the store in one batch (StatusUpdater.put_together)."""
        if self.journal is not None:
            for job_id, state, ts, data, fields, _sid in changes:
                self.journal.append(job_id, state, ts, data, fields)
        self.updater.put_together(changes)

    def flush(self) -> bool:
        """Append this loop iteration's changes to the journal (before the loop waits again); lines a failed
        write left (a full disk) are tried again. True when the journal holds everything reported."""
        return self.journal.flush() if self.journal is not None else False

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def running(self, job_id: int, timestamp: float, flush: bool = True) -> None:
        """A job starts (or started). Journaled at once unless ``flush`` is False: a caller reporting several
        jobs that already run flushes once after the last."""
        self.put(job_id, S.RUNNING, timestamp, session_id=self.session_id)
        if flush:
            self.flush()  # at once: the job already runs, and a run must never go unrecorded

    def failed(self, job_id: int, message: str) -> None:
        """A job that cannot run at all (its app does not load, a parameter is missing, it can never fit)."""
        self.errors += 1
        self.put(job_id, S.FAILED, data={"message": message})

    def finished(self, f: Finished, python: bool = False, stopping: bool = False) -> None:
        """Report a job that ended. While the launcher stops, a job that died of a signal is taken as stopped
        by it (on a batch system the same SIGTERM reaches the jobs and the launcher at once): RUN_TIMEOUT."""
        finish_here = f.job_id in self._finish_here
        self._finish_here.discard(f.job_id)
        if f.killed:
            return
        if stopping and f.rc < 0 and not f.timed_out:
            f.timed_out = True
            f.message = f.message or f"ended by signal {-f.rc} while the launcher stopped"
        if f.timed_out:
            self.timeouts += 1
            self.put(f.job_id, S.RUN_TIMEOUT, f.end, data={"message": f.message or "stopped by the launcher"})
            return
        fields: Dict[str, Any] = {"return_code": f.rc}
        if python or f.ret is not None or f.exc is not None:
            fields["serialized_return_value"] = f.ret if f.rc == 0 else None
            fields["serialized_exception"] = f.exc if f.rc != 0 else None
        if f.rc == 0:
            self.done += 1
            if finish_here:
                self.put_together([
                    (f.job_id, S.RUN_DONE, f.end, {"returncode": 0}, fields, self.session_id),
                    (f.job_id, S.POSTPROCESSED, f.end, {"message": "no postprocess hook: moved on by the launcher"}, None, self.session_id),
                ])
            else:
                self.put(f.job_id, S.RUN_DONE, f.end, data={"returncode": 0}, fields=fields, session_id=self.session_id)
        else:
            self.errors += 1
            disk = disk_state(self.data_dir) if self.data_dir is not None else {}
            error = f.tail
            if disk.get("full"):  # say why where job.out could not even hold the job's own complaint
                error = (f"the disk holding the workdirs was full ({disk.get('free_bytes', 0) // 1024} KiB free): the job "
                         f"may have failed for lack of space; 'balsam job reset {f.job_id}' runs it again" + (f"\n{error}" if error else ""))
            elif f.rc < 0:  # a signal (the OOM killer, kill -9): not retried, as in Balsam 0.7; say so, and how to retry
                why = " (the OOM killer, or kill -9 from outside)" if -f.rc == signal.SIGKILL else ""
                error = (f"{error}\n" if error else "") + (
                    f"ended by {_signal_name(-f.rc)}{why}: 'balsam job reset {f.job_id}' runs it again")
            self.put(f.job_id, S.RUN_ERROR, f.end, data={"returncode": f.rc, "error": error}, fields=fields, session_id=self.session_id)


def _signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 99`` for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class LongPoll:
    """One acquire that waits at the site agent for jobs (``wait_s``), on a thread of its own; ``done()`` is called
    (from that thread) once :attr:`jobs` or :attr:`error` holds the answer."""

    def __init__(self, source: JobSourceLike, args: Tuple[Any, ...], kwargs: Dict[str, Any], done: Callable[[], None]) -> None:
        self.source = source
        self.jobs: Optional[List[Dict[str, Any]]] = None
        self.error: Optional[BaseException] = None
        self.finished = threading.Event()

        def run() -> None:
            try:
                self.jobs = source.acquire(*args, **kwargs)
            except BaseException as exc:  # handed to the loop, which decides (a lost lease, a retry)
                self.error = exc
            finally:
                self.finished.set()
                done()

        threading.Thread(target=run, name="balsam-acquire-wait", daemon=True).start()


class LauncherBase:
    """The loop both modes share; :meth:`cycle` and :meth:`shutdown_jobs` are the mode's."""

    mode = ""

    def __init__(self, cfg: LauncherConfig, transport: Transport) -> None:
        self.cfg = cfg
        self.ls = cfg.settings.launcher
        self.transport = transport
        self.life = Lifecycle(cfg)
        self.apps = AppCache(transport.app_rows, transport.site_id)
        self.source: JobSourceLike = self._new_source()
        ss = cfg.settings.session
        self.lease_max_age_s = max(ss.expiry_s / 2, ss.expiry_s - 2 * ss.heartbeat_period_s)
        """Jobs start only under a lease the site confirmed this recently (:meth:`may_start`)."""
        self._rejected_running: List[int] = []
        self._rejected_lock = threading.Lock()
        self.updater = StatusUpdater(transport.sink(), period_s=self.ls.status_flush_period_s, on_rejected=self._on_rejected)
        self.reporter = Reporter(self.updater, cfg.layout.state if cfg.guarded else None, cfg.layout.data)
        self.idle_since = time.monotonic()
        self._dv_acquire: Optional[int] = None
        self._dv_kills: Optional[int] = None
        self._last_acquire = 0.0
        self._last_acquire_got = True
        self._last_kill_check = 0.0
        self.acquired_total = 0
        self.exit_code = 0
        self.doorbell: Optional[Doorbell] = None
        self._waiting: Optional[LongPoll] = None
        """A remote launcher's acquire waiting at the agent for jobs (on a thread of its own), or None."""
        self._disk_checked = -DISK_CHECK_PERIOD_S
        self._disk_full = False

    # ------------------------------------------------------------------ lease and updates
    def _new_source(self) -> JobSourceLike:
        ss = self.cfg.settings.session
        nodes = self.cfg.nodes
        label = capacity_label(f"{self.cfg.label} ({self.mode})", len(nodes), max((len(n.cpu_ids) for n in nodes), default=0),
                               max((len(n.gpu_ids) for n in nodes), default=0))
        return self.transport.job_source(batch_job_id=self.cfg.batch_job_id, label=label,
                                         heartbeat_period_s=ss.heartbeat_period_s, expiry_s=ss.expiry_s)

    def may_start(self) -> bool:
        """Whether jobs held under the lease may start now: the site confirmed the lease within
        :attr:`lease_max_age_s`. A launcher that did not run for a while (stopped with SIGSTOP or Ctrl-Z, a frozen
        VM) may have lost its lease meanwhile, and another launcher may already run the jobs it held: they wait until
        the heartbeat confirms the lease, or finds it gone (the loop then drops them and opens a new lease)."""
        return self.source.fresh(self.lease_max_age_s)

    def start_by(self) -> float:
        """The last moment (``time.monotonic()``) a job held under the lease may still start: :meth:`may_start` is
        asked before a batch of starts, this right before each spawn (a stop can fall in between)."""
        return self.source.start_by(self.lease_max_age_s)

    def _on_rejected(self, rejected: Rejected) -> None:
        # Called from the updater's thread. A refused RUNNING means the job is no longer ours (killed, or the
        # lease lapsed): its process must stop.
        ids = [ch.job_id for ch, _ in rejected if ch.state == S.RUNNING]
        if ids:
            with self._rejected_lock:
                self._rejected_running.extend(ids)
            self.wake()

    def take_rejected(self) -> List[int]:
        with self._rejected_lock:
            out, self._rejected_running = self._rejected_running, []
        return out

    def wake(self) -> None:
        """Interrupt the loop's wait (from another thread)."""

    def listen(self, doorbell: "Doorbell") -> None:
        """Wake the loop when ``doorbell`` rings (the mode implements it)."""

    @property
    def poll_s(self) -> float:
        """How long the loop may wait for new jobs before looking: short without a doorbell."""
        if self.doorbell is None:
            return self.ls.poll_period_s
        return max(self.ls.poll_period_s, DOORBELL_POLL_S)

    # ------------------------------------------------------------------ acquisition
    def should_acquire(self, idle: bool) -> bool:
        """Whether asking the DB for jobs may find something new (cheap: no write unless it might)."""
        if self._waiting is not None:
            return self._waiting.finished.is_set()  # its answer is in
        now = time.monotonic()
        if self._last_acquire_got:
            return True
        if now - self._last_acquire >= ACQUIRE_FALLBACK_PERIOD_S:
            return True
        dv = self.transport.data_version()
        if dv is None:
            return now - self._last_acquire >= self.ls.poll_period_s
        return dv != self._dv_acquire

    def acquire(self, max_num_jobs: int, *, idle: bool, **constraints: Any) -> List[Dict[str, Any]]:
        """Acquire up to ``max_num_jobs`` jobs that fit the remaining wall time and the filter tags.

        Through the agent's API (a remote launcher), once an acquire came back empty the next one waits at the
        agent until jobs become runnable, busy or idle: on a thread (:class:`LongPoll`) that wakes the loop
        when it has an answer, which a later call returns. So a busy launcher with free slots asks the agent
        once per ``acquire_wait_s`` (one request, no write while nothing changes), not once per poll period
        (a write transaction each), and its loop goes on starting and reporting jobs meanwhile."""
        waiting = self._waiting
        if waiting is not None:
            if not waiting.finished.is_set():
                return []
            self._waiting = None
            if waiting.source is self.source and not self.life.stopping:  # else the lease it acquired under is gone
                return self._took(waiting.jobs, waiting.error)
        if max_num_jobs <= 0 or self.life.stopping or self._data_disk_full():
            return []
        self._dv_acquire = self.transport.data_version()
        self._last_acquire = time.monotonic()
        remaining = self.life.remaining_min()
        if self.cfg.settings.launcher.sort_by is not None:
            constraints["sort_by"] = self.cfg.settings.launcher.sort_by
        args = (min(max_num_jobs, MAX_ACQUIRE),)
        constraints.update(filter_tags=self.cfg.filter_tags or None, max_wall_time_min=math.floor(remaining))
        if self.transport.acquire_wait_s and not self._last_acquire_got:
            # Cut short where waiting would delay the stop: the wall time, and (idle) the idle time to live.
            wait_s = min(self.transport.acquire_wait_s, remaining * 60.0 / 2)
            if idle:
                wait_s = min(wait_s, self.cfg.idle_ttl_s - (time.monotonic() - self.idle_since))
            if wait_s >= MIN_ACQUIRE_WAIT_S:
                self._waiting = LongPoll(self.source, args, dict(constraints, wait_s=wait_s), self.wake)
                return []
        try:
            jobs = self.source.acquire(*args, **constraints)
        except BalsamError as exc:
            return self._took(None, exc)
        return self._took(jobs, None)

    def _data_disk_full(self) -> bool:
        """Whether the disk of the site's data folder (the jobs' workdirs) is full, looked at once a second. A job
        started there could not write its output and would fail for it: while it is full the launcher takes no
        new jobs, says so once, and waits for space (that is not idleness: it does not end for its idle TTL);
        it takes jobs again as soon as space is freed."""
        now = time.monotonic()
        if now - self._disk_checked < DISK_CHECK_PERIOD_S:
            if self._disk_full:
                self.idle_since = now
            return self._disk_full
        self._disk_checked = now
        disk = disk_state(Path(self.cfg.data_dir))
        full = bool(disk.get("full"))
        if full != self._disk_full:
            if full:
                logger.error("the disk holding %s is full (%d KiB free): starting no new jobs until space is freed",
                             self.cfg.data_dir, disk.get("free_bytes", 0) // 1024)
            else:
                logger.warning("space was freed on the disk holding %s: starting jobs again", self.cfg.data_dir)
            self._disk_full = full
        if full:
            self.idle_since = now
        return full

    def _took(self, jobs: Optional[List[Dict[str, Any]]], error: Optional[BaseException]) -> List[Dict[str, Any]]:
        """What an acquire returned (or raised)."""
        if isinstance(error, SessionExpired):
            self.lease_lost()
            return []
        if error is not None:
            if not isinstance(error, BalsamError):
                raise error  # not the site's answer: a fault of the launcher's own
            logger.warning("acquire failed, will retry: %s", error)
            self._last_acquire_got = False
            return []
        jobs = jobs or []
        self._last_acquire_got = bool(jobs)
        if jobs:
            self.acquired_total += len(jobs)
            logger.debug("acquired %d jobs", len(jobs))
        return jobs

    def tasks_for(self, jobs: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], Task]]:
        """Tasks for acquired jobs; jobs that cannot run are reported FAILED here."""
        versions = {int(j["app_id"]): int(j["app_version"]) for j in jobs if j.get("app_version") is not None}
        apps = self.apps.get_many(sorted({int(j["app_id"]) for j in jobs}), versions)
        out: List[Tuple[Dict[str, Any], Task]] = []
        data_dir = self.cfg.data_dir
        for job in jobs:
            app = apps.get(int(job["app_id"]))
            try:
                if app is None:
                    raise AppError(f"app {job['app_id']} does not exist at this site")
                task = build_task(job, app, data_dir)
                if task.launch_params:
                    self._refuse_flags(task.launch_params)
                out.append((job, task))
                if app.finishes_in_launcher:
                    self.reporter.finish_here(int(job["id"]))
            except (ValidationError, AppError, Unplaceable) as exc:
                self.fail(int(job["id"]), str(exc))
            except Exception as exc:  # a user's shell_preamble() or a template error
                self.fail(int(job["id"]), f"{type(exc).__name__}: {exc}")
        return out

    def _refuse_flags(self, launch_params: Dict[str, str]) -> None:
        """Defence in depth: a job's launch_params were checked when it was made, and are again here against this
        launcher's MPI (its own flags and those settings.yml allows), before anything starts."""
        ls = self.cfg.settings.launcher
        launch_flags.refuse(launch_params, launch_flags.allowed_for(ls.mpi_launcher, ls.allowed_launch_params),
                            launcher=ls.mpi_launcher)

    def fail(self, job_id: int, message: str) -> None:
        logger.warning("job %s cannot run: %s", job_id, message)
        self.reporter.failed(job_id, message)

    # ------------------------------------------------------------------ kills
    def killed_among(self, held: Callable[[], Sequence[int]]) -> List[int]:
        """Jobs among those ``held()`` lists that a user killed (or that otherwise left this launcher), checked
        cheaply: ``held`` is called only when a check is due (a pass of the loop that lists hundreds of held jobs
        to find that nothing changed would cost more than the jobs it starts)."""
        now = time.monotonic()
        if now - self._last_kill_check < KILL_CHECK_PERIOD_S:
            return []  # before asking the store anything: a flood passes through here once per job or two
        dv = self.transport.data_version()
        if dv is None:
            if now - self._last_kill_check < REMOTE_KILL_CHECK_PERIOD_S:
                return []
        elif dv == self._dv_kills:
            return []
        ids = held()
        if not ids:
            return []
        self._dv_kills = dv
        self._last_kill_check = now
        try:
            states = self.transport.job_states(ids)
        except BalsamError as exc:
            logger.warning("checking for killed jobs failed: %s", exc)
            return []
        return [j for j in ids if states.get(j) in DONE_STATES or j not in states]

    def lease_lost(self) -> None:
        """The lease expired at the site: stop everything it held and open a new one."""
        logger.error("the lease %s expired at the site: its jobs were released; stopping them and opening a new lease",
                     self.source.session_id)
        self.drop_all("the launcher's lease expired")
        self.reporter.forget_all()
        try:
            self.source.release()
        except BalsamError:
            pass
        self.source = self._new_source()
        self.source.start()
        self.reporter.use_session(self.source.session_id)

    def drop_all(self, reason: str) -> None:
        """Kill every job and forget the backlog, without status updates (the mode implements it)."""

    # ------------------------------------------------------------------ the loop
    def cycle(self) -> None:
        raise NotImplementedError

    def shutdown_jobs(self) -> None:
        """Stop running jobs (they become RUN_TIMEOUT) and wait for them to end."""
        raise NotImplementedError

    def busy(self) -> bool:
        """Anything running, queued or in flight."""
        raise NotImplementedError

    def summary(self) -> str:
        r = self.reporter
        return f"acquired {self.acquired_total}, done {r.done}, errors {r.errors}, timed out {r.timeouts}"

    def keep_results(self) -> None:
        """Before the lease goes: wait until the DB has every status update. A launcher that cannot write (a
        full disk) keeps them, in memory and in its journal, for as long as it takes; after ``DB_WAIT_S`` it
        may go once its journal holds them all (the journal is replayed when the lease ends, by the agent if
        the release fails too)."""
        started = time.monotonic()
        next_log = started + KEEP_RETRY_S
        self.reporter.flush()
        while not self.updater.flush(timeout=KEEP_RETRY_S):
            journaled = self.reporter.flush()
            now = time.monotonic()
            if journaled and now - started >= DB_WAIT_S:
                logger.error("%d status updates could not be written to the DB for %.0f s (%s); they are in the journal "
                             "%s, which is applied when the lease ends", self.updater.pending(), now - started,
                             self.updater.last_error, self.reporter.journal.path if self.reporter.journal else "")
                return
            if now >= next_log:
                next_log = now + KEEP_LOG_PERIOD_S
                logger.error("%d status updates cannot be written yet (%s)%s: the launcher keeps them until they can be",
                             self.updater.pending(), self.updater.last_error, "" if journaled else ", nor its journal")

    def run(self) -> int:
        """Run until a stop criterion; returns the exit code."""
        self.life.install_signals(self.wake)
        try:
            self.source.start()
            self.reporter.use_session(self.source.session_id)
            self.updater.start()
            self.doorbell = self.transport.doorbell()
            if self.doorbell is not None:
                self.listen(self.doorbell)
            logger.info("%s mode: lease %s, wall time %.2f min (stops %.1f s early), idle ttl %.1f s, filter tags %s",
                        self.mode, self.source.session_id, self.cfg.wall_time_min, self.cfg.margin_s, self.cfg.idle_ttl_s,
                        self.cfg.filter_tags or "none")
            self.apps.preload()
            self.idle_since = time.monotonic()
            while not self.life.stopping:
                self.cycle()
                self.reporter.flush()
                if self.source.expired.is_set():
                    self.lease_lost()
                if self.busy():
                    self.idle_since = time.monotonic()
                else:
                    # Nothing runs or waits: the last jobs' ends go to the site now, not at the end of the updater's
                    # period (their children, or whoever waits for them, would wait up to that long for nothing).
                    self.updater.kick()
                    if time.monotonic() - self.idle_since > self.cfg.idle_ttl_s:
                        self.life.stop(f"nothing to run for {self.cfg.idle_ttl_s:g} s")
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                self.life.stop("interrupted")
            else:
                logger.exception("launcher failed: %s", exc)
                self.life.stop(f"error: {exc}")
                self.exit_code = 1
        finally:
            logger.info("stopping: %s", self.life.stop_reason)
            try:
                self.shutdown_jobs()
            finally:
                self.keep_results()
                self.updater.close(timeout=KEEP_RETRY_S)
                self.reporter.close()
                if self.doorbell is not None:
                    self.doorbell.close()
                try:
                    self.source.release()
                except BalsamError as exc:
                    logger.error("releasing the lease failed: %s (it will expire; its journal is replayed then)", exc)
                self.life.restore_signals()
                logger.info("%s mode done: %s", self.mode, self.summary())
        if self.life.signum is not None and self.exit_code == 0:
            return 128 + self.life.signum
        return self.exit_code
