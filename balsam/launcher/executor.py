"""The executor: starts placed tasks as processes, notices when they end, kills them on request.

How a task runs depends on where it was placed and what it is:

=====================================  ==========================================================================
single rank, on this host              shell: the command itself through ``posix_spawn`` when it needs no shell,
                                       else ``bash -c``; Python ``run()``: a warm worker (:mod:`.pyworker`)
several ranks, or another node         the platform's MPI launch line (``launcher.mpi_launcher``) around the
                                       command, or around ``python -m balsam.launcher.pyrun SPEC`` for Python
an app with a ``shell_preamble()``     bash sources it first (before the MPI launcher, if any)
=====================================  ==========================================================================

Every job gets ``BALSAM_JOB_ID``, the app's ``environment_variables``, ``OMP_NUM_THREADS`` (threads per rank)
and, when it holds GPUs, the GPU visibility variable (``launcher.gpu_env``). ``launch_params["cpu_bind"]``
asks for CPU binding: the MPI launcher binds ranks to the job's own CPUs; a direct process is pinned to them.
Output goes to ``<workdir>/job.out``.

One thread owns an executor. :meth:`Executor.poll` sleeps in a selector on pidfds (Linux), worker sockets and
a wake-up pipe, so an exit is noticed at once without polling; children are reaped with ``waitpid(-1)``, so
nothing else in this process may start child processes of its own. Where the C library's ``posix_spawn`` is
used, job processes are spawned on helper threads (:class:`.spawn.SpawnThreads`): :meth:`Executor.start`
prepares the job, :meth:`Executor.launch` (or the next poll) hands the spawn over, and the owning thread takes
in each pid when it next wakes (a job that ended before that is reaped all the same, then matched to its pid).
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import selectors
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, cast

from balsam.launcher import orphans
from balsam.launcher import spawn as sp
from balsam.launcher.pyrun import MODULE as PYRUN_MODULE
from balsam.launcher.pyworker import PyWorker, PyWorkerPool
from balsam.launcher.resources import Placement
from balsam.launcher.tasks import Task
from balsam.launcher.watchdog import Watchdog, stop_copies, stop_previous, write_record
from balsam.platforms.mpi import LaunchSpec, MPILauncher
from balsam.platforms.nodes import gpu_visibility_env

logger = logging.getLogger(__name__)

OUTPUT_NAME = "job.out"
_WAKE = object()
_HAS_PIDFD = hasattr(os, "pidfd_open")
NO_PIDFD_POLL_S = 0.01
RECORD_AFTER_S = 0.5
ORPHAN_SCAN_PERIOD_S = 0.1
"""At most this often, the look for what ended jobs left behind (a flood's jobs end hundreds of times a second)."""
SPAWN_THREADS = max(2, min(8, (os.cpu_count() or 1) // 4))
"""Spawns that may wait for their child's ``exec`` at once, off the thread that starts jobs (:class:`.spawn.SpawnThreads`):
2 on a small node (measured on 2 cores: one thread left jobs waiting for the other's spawn, 0.6-0.7x the
throughput), a thread per 4 CPUs on a larger one, at most 8. They start as needed."""
MAX_ORPHAN_RESCANS = 20
"""Looks again for a child caught between two programs (its environment unreadable for that instant)."""


class Finished:
    """A task that ended: how, and what the status update needs."""

    __slots__ = ("job_id", "rc", "tail", "ret", "exc", "killed", "timed_out", "message", "end")

    def __init__(
        self,
        job_id: int,
        rc: int,
        *,
        tail: str = "",
        ret: Optional[bytes] = None,
        exc: Optional[bytes] = None,
        killed: bool = False,
        timed_out: bool = False,
        message: str = "",
    ) -> None:
        self.job_id = job_id
        self.rc = rc
        self.tail = tail
        self.ret = ret
        self.exc = exc
        self.killed = killed
        """Ended at a user's request (or its lease was lost): no status update is due."""
        self.timed_out = timed_out
        """Ended by the launcher (wall time, shutdown): RUN_TIMEOUT."""
        self.message = message
        self.end = time.time()

    def __repr__(self) -> str:
        return f"Finished(job_id={self.job_id}, rc={self.rc}, killed={self.killed}, timed_out={self.timed_out})"


class _Run:
    __slots__ = ("task", "pid", "worker", "output", "result_path", "spec_path", "pidfd", "mpi", "kill_at", "kill_reason",
                 "timed_out", "is_python", "announce", "cpus")

    def __init__(self, task: Task, output: str) -> None:
        self.task = task
        self.output = output
        self.pid = 0
        self.worker: Optional[PyWorker] = None
        self.result_path: Optional[str] = None
        self.spec_path: Optional[str] = None
        self.pidfd: Optional[int] = None
        self.mpi = False
        self.kill_at: Optional[float] = None
        self.kill_reason = ""
        self.timed_out = False
        self.is_python = task.kind == "python"
        self.announce: Optional[Callable[[float], None]] = None
        self.cpus: Sequence[int] = ()
        """CPUs to pin the process to, once spawned."""

    def announce_start(self) -> None:
        """Tell the caller the job starts now (once): called just before the spawn, or when starting failed."""
        announce, self.announce = self.announce, None
        if announce is not None:
            announce(time.time())


class Executor:
    """Runs placed tasks on behalf of one launcher (mpi mode) or one node worker (serial mode)."""

    def __init__(
        self,
        *,
        mpi: MPILauncher,
        local_hosts: Set[str],
        all_local: bool,
        gpu_env: str,
        env: Mapping[str, str],
        home: str,
        log_dir: str,
        error_tail_num_lines: int,
        python_exe: Optional[str],
        pylib: Optional[Path],
        max_workers: int,
        kill_grace_s: float = 3.0,
        kill_orphans: bool = True,
        error_tail_max_bytes: int = 4096,
        guarded: bool = True,
    ) -> None:
        self.mpi = mpi
        self.local_hosts = local_hosts
        self.all_local = all_local
        self.gpu_env = gpu_env
        self.env = dict(env)
        self.home = home
        self.error_tail_num_lines = error_tail_num_lines
        self.error_tail_max_bytes = error_tail_max_bytes
        self.python_exe = python_exe
        self.pylib = pylib
        self.kill_grace_s = kill_grace_s
        self.kill_orphans = kill_orphans
        """When a job's process ends, kill what is left of its process group (background children), and what it
        left in sessions of its own (:mod:`.orphans`)."""
        self.nonce = orphans.new_nonce()
        self.env[orphans.NONCE_ENV] = self.nonce
        self._env_block = sp.env_block(self.env)
        """The environment every job starts from, encoded once (a job adds its own variables)."""
        self._subreaper: Optional[bool] = None
        self._scan_orphans = False
        self._next_scan = 0.0
        self._rescans = 0
        self._served: Set[int] = set()
        """Warm workers that finished a job since the last orphan scan (their children are checked)."""
        self.watchdog = Watchdog(os.path.join(log_dir, "watchdog.out"), home, self.env, self.nonce if kill_orphans else None,
                                 enabled=guarded)
        self.pool = PyWorkerPool(env=self.env, home=home, log_path=os.path.join(log_dir, "pyworkers.out"),
                                 max_idle=max_workers, pylib=pylib)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self.runs: Dict[int, _Run] = {}
        self._by_pid: Dict[int, _Run] = {}
        self._done: List[Finished] = []
        self._killing: Set[int] = set()
        self.mpi_running = 0
        self._pyenv: Dict[str, Dict[str, str]] = {}
        self._registered: Set[int] = set()
        self.workdirs = sp.WorkdirMaker()
        self._no_pidfd = 0
        """Running processes without a pidfd (none on Linux >= 5.3): poll for them."""
        self._unrecorded: Deque[Tuple[float, _Run]] = collections.deque()
        """Runs whose pid record is not written yet: written once they outlive RECORD_AFTER_S (a job that ends
        sooner never needs one, and most flood jobs do, so the record costs them nothing)."""
        self._pid_records = guarded
        """False only in a benchmark of what the guards cost (``LauncherConfig.guarded``)."""
        self._spawner = sp.SpawnThreads(SPAWN_THREADS, self._spawned) if sp.concurrent() else None
        """Where processes are spawned (None: by the calling thread, which then waits for each child's exec)."""
        self._spawning = 0
        """Spawns handed to :attr:`_spawner` whose pid has not been taken in yet (:meth:`_take_spawned`)."""
        self._spawn_results: List[Tuple[_Run, int, Optional[BaseException]]] = []
        self._spawn_lock = threading.Lock()
        self._early: Dict[int, int] = {}
        """Exit codes of children reaped while spawns were in flight, by pid: a job that ended before its pid
        was taken in (or an adopted orphan, if no spawn claims it)."""
        self._queued: List[Tuple[_Run, List[str], Dict[str, object]]] = []
        """Spawns :meth:`launch` hands over (after ``before_spawns``)."""
        self.before_spawns: Optional[Callable[[], object]] = None
        """Called once before a batch of spawns is handed over, e.g. to journal at once the RUNNING of every job
        in it: the caller's ``announce`` then need not write anything itself (see :attr:`defers_spawns`)."""
        self.start_by: Optional[Callable[[], Optional[float]]] = None
        """The last moment (``time.monotonic()``) a job may still be started, asked right before spawns are made (a
        launcher's lease: see :meth:`balsam.db.jobsource.Heartbeat.start_by`); a job whose turn comes later (the
        process was stopped between deciding to start it and the spawn) is not started but ends as timed out."""

    @property
    def defers_spawns(self) -> bool:
        """True when :meth:`start` leaves the spawn to :meth:`launch` (called by :meth:`poll` at the latest), so
        ``before_spawns`` runs between a job's ``announce`` and its spawn; False when :meth:`start` spawns."""
        return self._spawner is not None

    def _guard(self) -> None:
        """Before the first job starts: the watchdog, and (with kill_orphans) adopting what jobs leave behind."""
        self.watchdog.start()
        if self.kill_orphans and self._subreaper is None:
            self._subreaper = orphans.become_subreaper()
            if not self._subreaper:
                logger.info("cannot adopt orphaned processes here: only a job's process group is cleaned up")

    def prepare(self, tasks: List[Task]) -> None:
        """Create these tasks' workdirs in the background (they will start soon)."""
        self.workdirs.prepare([t.workdir for t in tasks])

    # ------------------------------------------------------------------ starting
    def is_local(self, placement: Placement) -> bool:
        """True if the job's node is this host (it can start without an MPI launcher)."""
        return self.all_local or (len(placement.hostnames) == 1 and placement.hostnames[0] in self.local_hosts)

    def needs_mpi(self, task: Task, placement: Placement) -> bool:
        return task.num_ranks > 1 or not self.is_local(placement)

    def job_env(self, task: Task, placement: Placement) -> Dict[str, str]:
        """The variables this job adds to the launcher's environment."""
        env = dict(task.env)
        env["OMP_NUM_THREADS"] = str(task.threads_per_rank)
        if placement.gpu_ids:
            env.update(gpu_visibility_env(self.gpu_env, placement.gpu_ids))
        return env

    def start(self, task: Task, placement: Placement, announce: Optional[Callable[[float], None]] = None) -> float:
        """Start a task on its placement; returns the start time. A task that cannot start ends at once (its
        Finished comes from the next :meth:`poll`, with the reason in job.out and the error tail).

        ``announce(start_time)`` is called exactly once: right before the process is spawned (so a caller that
        journals it there leaves the run on record even if it is killed while the child starts), or when the
        start failed before that."""
        now = time.time()
        output = f"{task.workdir}/{OUTPUT_NAME}"
        run = _Run(task, output)
        run.announce = announce
        self.runs[task.id] = run
        try:
            self.workdirs.ensure(task.workdir)
            job_env = self.job_env(task, placement)
            local_single = task.num_ranks == 1 and self.is_local(placement)
            if run.is_python and local_single and not task.preamble:
                self._start_warm(run, placement, job_env)
                return now
            self._start_process(run, placement, job_env, local_single)
        except Exception as exc:
            run.announce_start()
            self._fail_start(run, exc)
        return now

    def _start_warm(self, run: _Run, placement: Placement, job_env: Dict[str, str]) -> None:
        task = run.task
        python = task.python_exe or self.python_exe or sys_executable()
        cpus = list(placement.cpu_ids) if task.cpu_bind and task.cpu_bind != "none" else None
        assert task.app is not None
        app = (task.app[0], task.app[1], task.app[2], task.app[3])
        run.announce_start()
        sp.check_start_by(self._start_by())
        for attempt in (1, 2):
            worker = self.pool.get(python, tuple(placement.gpu_ids))
            if worker.pid not in self._registered:
                self._sel.register(worker.sock, selectors.EVENT_READ, worker)
                self._registered.add(worker.pid)
                self._guard()
                self.watchdog.add(worker.pid)
            run.worker = worker
            run.pid = worker.pid
            try:
                self.pool.submit(worker, task.id, app, task.job, task.params, job_env, cpus, run.output)
                return
            except OSError:
                if attempt == 2:
                    raise
                logger.warning("warm Python worker %s is gone; starting another", worker.pid)  # it died while idle
                self._unregister_worker(worker)
                self.pool.kill(worker)
                self.pool.forget(worker.pid)

    def _python_path_env(self, python: str) -> Dict[str, str]:
        env = self._pyenv.get(python)
        if env is None:
            full = sp.python_env(self.env, python, self.pylib)
            env = self._pyenv[python] = {"PYTHONPATH": full["PYTHONPATH"]} if "PYTHONPATH" in full else {}
        return env

    def _start_process(self, run: _Run, placement: Placement, job_env: Dict[str, str], local_single: bool) -> None:
        task = run.task
        preamble_file = None
        if task.preamble:
            preamble_file = f"{task.workdir}/.balsam-preamble.sh"
            with open(preamble_file, "w") as f:
                f.write(task.preamble + "\n")
        if run.is_python:
            python = task.python_exe or self.python_exe or sys_executable()
            run.spec_path = f"{task.workdir}/.balsam-run-{task.id}.pkl"
            run.result_path = f"{task.workdir}/.balsam-result-{task.id}.pkl"
            try:
                os.unlink(run.result_path)
            except FileNotFoundError:
                pass
            with open(run.spec_path, "wb") as f:
                pickle.dump({"app": task.app, "job": task.job, "params": task.params, "result": run.result_path}, f, protocol=4)
            job_env.update(self._python_path_env(python))
            command = sp.python_module_argv(PYRUN_MODULE, python) + [run.spec_path]
        else:
            command = []
        extra = job_env  # on top of the launcher's environment, prepared once (self._env_block)
        if not run.is_python:
            simple = None if (preamble_file and local_single) else sp.simple_argv(task.command, sp.path_of(self._env_block, extra))
            command = simple if simple is not None else sp.shell_argv(task.command)
        if local_single:
            argv = command
            if preamble_file:
                argv = sp.shell_argv(task.command, preamble_file) if not run.is_python else _wrap_preamble(preamble_file, command)
        else:
            spec = LaunchSpec(
                command=command, num_ranks=task.num_ranks, ranks_per_node=task.ranks_per_node,
                threads_per_rank=task.threads_per_rank, threads_per_core=task.threads_per_core,
                cpu_bind=_bind_for(task, placement), gpus_per_rank=task.gpus_per_rank, hosts=list(placement.hostnames),
                env=job_env, launch_params=task.launch_params,
            )
            launch = self.mpi.render(spec)
            extra.update(launch.env)
            argv = launch.argv if not preamble_file else _wrap_preamble(preamble_file, launch.argv)
            run.mpi = True
        self._guard()
        if self._pid_records and task.rerun:
            # A copy a dead launcher left running must end before this one starts (only a job that ran before
            # can have one): by its pid record (written after RECORD_AFTER_S, also on other hosts' shared
            # workdirs) and, on this host, by the job id in its environment (a copy too young for a record).
            stop_previous(task.workdir, spare=self._by_pid)
            stop_copies(task.id, self.nonce)
        run.announce_start()
        if run.mpi:
            self.mpi_running += 1
        if local_single and task.cpu_bind and task.cpu_bind != "none" and placement.cpu_ids:
            run.cpus = placement.cpu_ids
        if self._spawner is not None:
            self._spawning += 1
            self._queued.append((run, argv, {"cwd": task.workdir, "env": self._env_block, "extra": extra, "output": run.output}))
            return
        try:
            sp.check_start_by(self._start_by())
            pid = sp.spawn(argv, cwd=task.workdir, env=self._env_block, extra=extra, output=run.output)
        except BaseException:
            if run.mpi:
                self.mpi_running -= 1
            raise
        self._started(run, pid)

    def launch(self) -> None:
        """Hand the spawns :meth:`start` queued to the spawn threads, after ``before_spawns``."""
        if not self._queued or self._spawner is None:
            return
        if self.before_spawns is not None:
            self.before_spawns()
        start_by = self._start_by()
        queued, self._queued = self._queued, []
        for run, argv, kwargs in queued:
            if run.kill_at is not None:  # killed before its spawn was handed over: it never starts
                self._spawning -= 1
                if run.mpi:
                    self.mpi_running -= 1
                self._finish(run, -signal.SIGTERM)
                continue
            self._spawner.submit(run, argv, start_by=start_by, **kwargs)

    def _spawned(self, key: object, pid: int, exc: Optional[BaseException]) -> None:
        """On a spawn thread, right after the spawn: what must not wait for the loop (the watchdog, the CPU
        binding, and the pidfd that wakes the loop when the job ends). The loop takes in the rest when it next
        wakes (:meth:`_take_spawned`); it is woken for this only when nothing else would wake it in time."""
        run = cast(_Run, key)
        pidfd = self._watch(run, pid) if exc is None else None
        with self._spawn_lock:
            pidfd = run.pidfd = self._register(run, pidfd)
            self._spawn_results.append((run, pid, exc))
        if pidfd is None or run.kill_at is not None:
            self.wakeup()

    def _take_spawned(self) -> None:
        """Take in the spawns the helper threads finished: each job's pid, or why it could not start."""
        if not self._spawning:
            return
        # Always through the lock: a pidfd registered by a spawn thread may wake the select before that thread
        # has appended its result (in the same locked section); reading the list without the lock, the loop
        # would find it empty and spin on the ready pidfd until that thread got the GIL back (up to 5 ms).
        with self._spawn_lock:
            results, self._spawn_results = self._spawn_results, []
        for run, pid, exc in results:
            self._spawning -= 1
            if exc is not None:
                if run.mpi:
                    self.mpi_running -= 1
                self._fail_start(run, exc)
                continue
            run.pid = pid
            rc = self._early.pop(pid, None)
            if rc is not None:  # it ended already (reaped by :meth:`_reap` before its pid was known)
                self._close_pidfd(run)
                if self.kill_orphans:
                    _kill_leftovers(pid)
                self.watchdog.discard(pid)
                self._ended(run, rc)
                continue
            self._by_pid[pid] = run
            if self._pid_records:
                self._unrecorded.append((time.monotonic() + RECORD_AFTER_S, run))
            if run.pidfd is None:
                self._no_pidfd += 1
            if run.kill_at is not None:  # killed while it was being spawned
                sp.kill_group(pid, signal.SIGTERM)
        if not self._spawning and self._early:  # no spawn claims them: adopted orphans
            self._early.clear()
            self._scan_orphans = self._subreaper is True

    def _started(self, run: _Run, pid: int) -> None:
        """Bookkeeping of a job process that was just spawned."""
        run.pid = pid
        run.pidfd = self._register(run, self._watch(run, pid))
        if self._pid_records:
            self._unrecorded.append((time.monotonic() + RECORD_AFTER_S, run))
        self._by_pid[pid] = run
        if run.pidfd is None:
            self._no_pidfd += 1

    def _watch(self, run: _Run, pid: int) -> Optional[int]:
        """What a just-spawned job process needs at once, on whichever thread spawned it: the watchdog, its CPU
        binding, and a pidfd that becomes readable when it ends (None without pidfds, or when it ended and was
        reaped already: the loop then finds it among its early exits)."""
        self.watchdog.add(pid)
        if run.cpus:
            try:
                os.sched_setaffinity(pid, run.cpus)
            except (OSError, AttributeError):
                pass
        if not _HAS_PIDFD:
            return None
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None

    def _register(self, run: _Run, pidfd: Optional[int]) -> Optional[int]:
        """``pidfd`` registered with the loop's selector for ``run`` (closed, and None, if it cannot be)."""
        if pidfd is None:
            return None
        try:
            self._sel.register(pidfd, selectors.EVENT_READ, run)
        except (OSError, ValueError, KeyError):
            os.close(pidfd)
            return None
        return pidfd

    def _start_by(self) -> Optional[float]:
        """:attr:`start_by`'s answer now (None: no limit)."""
        return self.start_by() if self.start_by is not None else None

    def _fail_start(self, run: _Run, exc: BaseException) -> None:
        if isinstance(exc, sp.LeaseLapsed):  # it never ran: timed out (retried as a timeout), not failed
            logger.warning("job %s %s", run.task.id, exc)
            self.runs.pop(run.task.id, None)
            self._done.append(Finished(run.task.id, -9, timed_out=True, message=str(exc)))
            return
        message = f"balsam: cannot start job {run.task.id}: {type(exc).__name__}: {exc}"
        logger.warning("%s", message)
        try:
            with open(run.output, "a") as f:
                f.write(message + "\n")
        except OSError:
            pass
        self.runs.pop(run.task.id, None)
        rc = 127 if isinstance(exc, FileNotFoundError) else 126
        self._done.append(Finished(run.task.id, rc, tail=message))

    # ------------------------------------------------------------------ waiting
    def add_wake_fd(self, fd: int) -> None:
        """Make :meth:`poll` return when ``fd`` (non-blocking, e.g. a doorbell) becomes readable; it is drained."""
        self._sel.register(fd, selectors.EVENT_READ, _WAKE)

    def wakeup(self) -> None:
        """Make a :meth:`poll` in another thread return now."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def poll(self, timeout: float) -> List[Finished]:
        """Wait up to ``timeout`` seconds for tasks to end (or a wake-up); return those that ended."""
        self.launch()
        if self._done:
            timeout = 0.0
        elif self._no_pidfd:
            timeout = min(timeout, NO_PIDFD_POLL_S)
        if self._scan_orphans:
            timeout = min(timeout, max(0.0, self._next_scan - time.monotonic()))
        if self._killing:
            pending = [r.kill_at if r.pid else time.monotonic() + NO_PIDFD_POLL_S for r in (self.runs.get(j) for j in self._killing) if r is not None and r.kill_at is not None]
            if pending:
                timeout = max(0.0, min(timeout, min(pending) - time.monotonic()))
        ready = self._sel.select(max(0.0, timeout))
        self._take_spawned()
        for key, _ in ready:
            obj = key.data
            if obj is _WAKE:
                try:
                    while os.read(key.fd, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            elif isinstance(obj, PyWorker):
                self._read_worker(obj)
        self._reap()
        if self._scan_orphans and time.monotonic() >= self._next_scan:
            self._kill_orphans()
        if self._unrecorded:
            self._write_records()
        if self._killing:
            self._enforce_kills()
        self.watchdog.flush()
        out, self._done = self._done, []
        return out

    def _kill_orphans(self) -> None:
        """Kill what ended jobs left in sessions of their own (adopted by this process: see :mod:`.orphans`)."""
        self._scan_orphans = False
        self._next_scan = time.monotonic() + ORPHAN_SCAN_PERIOD_S
        known = set(self._by_pid)
        known.update(self.pool.workers)
        if self.watchdog.pid is not None:
            known.add(self.watchdog.pid)
        _killed, again = orphans.kill_adopted(self.nonce, self.runs, known, self._served)
        self._rescans = self._rescans + 1 if again else 0
        if again and self._rescans <= MAX_ORPHAN_RESCANS:
            self._scan_orphans = True  # in 0.1 s, the workers that served jobs included
        else:
            self._served.clear()

    def _write_records(self) -> None:
        now = time.monotonic()
        queue = self._unrecorded
        while queue and queue[0][0] <= now:
            _, run = queue.popleft()
            if self.runs.get(run.task.id) is run and run.pid in self._by_pid:
                write_record(run.task.workdir, run.pid)

    def _read_worker(self, worker: PyWorker) -> None:
        msgs, closed = self.pool.read(worker)
        for msg in msgs:
            if msg[0] != "done":
                continue
            _, job_id, rc, ret, exc = msg
            run = self.runs.get(job_id)
            if run is None or run.worker is not worker:
                continue
            self._finish(run, int(rc), ret=ret, exc=exc)
            if self._subreaper:
                self._served.add(worker.pid)
            if run.kill_at is None:
                self.pool.release(worker)
        if closed:
            self._unregister_worker(worker)

    def _unregister_worker(self, worker: PyWorker) -> None:
        if worker.pid in self._registered:
            self._registered.discard(worker.pid)
            self.watchdog.discard(worker.pid)
            try:
                self._sel.unregister(worker.sock)
            except (KeyError, ValueError):
                pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            rc = os.waitstatus_to_exitcode(status)
            run = self._by_pid.pop(pid, None)
            if run is not None:
                if run.pidfd is None:
                    self._no_pidfd -= 1
                else:
                    self._close_pidfd(run)
                if self.kill_orphans:
                    _kill_leftovers(pid)
                self.watchdog.discard(pid)
                self._ended(run, rc)
                continue
            worker = self.pool.workers.get(pid)
            if worker is None and self._spawning:
                self._early[pid] = rc  # perhaps a job whose spawn is not taken in yet (:meth:`_take_spawned`)
                continue
            if worker is None:
                logger.debug("reaped a process that is not a job: pid %s, status %s", pid, rc)
                self._scan_orphans = self._subreaper is True  # an adopted orphan: its own children are ours now
                continue
            if worker.job_id is not None and worker.pid in self._registered:
                self._read_worker(worker)  # its "done" may still sit in the socket
            self._unregister_worker(worker)
            self.pool.forget(pid)
            job_id = worker.job_id
            if job_id is not None and job_id in self.runs and self.runs[job_id].worker is worker:
                run = self.runs[job_id]
                self._finish(run, rc if rc != 0 else 1, message=f"the Python worker running this job exited ({rc})")

    def _close_pidfd(self, run: _Run) -> None:
        if run.pidfd is not None:
            try:
                self._sel.unregister(run.pidfd)
            except (KeyError, ValueError):
                pass
            os.close(run.pidfd)
            run.pidfd = None

    def _ended(self, run: _Run, rc: int) -> None:
        if run.mpi:
            self.mpi_running -= 1
        self._finish_process(run, rc)

    def _finish_process(self, run: _Run, rc: int) -> None:
        ret = exc = None
        if run.result_path is not None:
            try:
                with open(run.result_path, "rb") as f:
                    r_rc, ret, exc = pickle.load(f)
                if rc == 0:
                    rc = int(r_rc)
            except (OSError, pickle.UnpicklingError, EOFError, ValueError):
                if rc == 0:
                    rc = 1
            for path in (run.result_path, run.spec_path):
                try:
                    if path:
                        os.unlink(path)
                except OSError:
                    pass
            if rc != 0:
                ret = None
        self._finish(run, rc, ret=ret, exc=exc)

    def _finish(self, run: _Run, rc: int, *, ret: Optional[bytes] = None, exc: Optional[bytes] = None, message: str = "") -> None:
        job_id = run.task.id
        self.runs.pop(job_id, None)
        self._killing.discard(job_id)
        self._scan_orphans = self._subreaper is True
        if run.kill_at is not None:
            self._done.append(Finished(job_id, rc, killed=not run.timed_out, timed_out=run.timed_out, message=run.kill_reason))
            return
        tail = ""
        if rc != 0:
            tail = sp.tail_lines(run.output, self.error_tail_num_lines, self.error_tail_max_bytes)
            if message:
                tail = f"{tail}\n{message}" if tail else message
        self._done.append(Finished(job_id, rc, tail=tail, ret=ret if rc == 0 else None, exc=exc, message=message))

    # ------------------------------------------------------------------ killing
    def kill(self, job_id: int, reason: str, *, timed_out: bool = False) -> bool:
        """Stop a running task: SIGTERM to its process group now, SIGKILL after the grace period. Its Finished
        says ``killed`` (no status update due) or ``timed_out`` (RUN_TIMEOUT). False if it is not running."""
        run = self.runs.get(job_id)
        if run is None:
            return False
        if run.kill_at is None:
            run.kill_reason = reason
            run.timed_out = timed_out
            run.kill_at = time.monotonic() + self.kill_grace_s
            self._killing.add(job_id)
            if run.pid:  # else it is being spawned: signalled once its pid is known (:meth:`_take_spawned`)
                sp.kill_group(run.pid, signal.SIGTERM)
        return True

    def kill_all(self, reason: str, *, timed_out: bool = True) -> None:
        """Stop every running task (shutdown, wall time)."""
        for job_id in list(self.runs):
            self.kill(job_id, reason, timed_out=timed_out)

    def _enforce_kills(self) -> None:
        now = time.monotonic()
        for job_id in list(self._killing):
            run = self.runs.get(job_id)
            if run is None:
                self._killing.discard(job_id)
            elif run.kill_at is not None and now >= run.kill_at and run.pid:
                sp.kill_group(run.pid, signal.SIGKILL)
                run.kill_at = now + 3600.0  # killed for good; wait for the exit

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the warm workers and release the selector (call once nothing runs)."""
        self.workdirs.close()
        if self._spawner is not None:
            self._spawner.close()
        for worker in list(self.pool.workers.values()):
            self.pool.kill(worker)
        self.pool.shutdown()
        deadline = time.monotonic() + 2.0
        while self.pool.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
                continue
            self.pool.forget(pid)
        self._sel.close()
        self.watchdog.close()
        if self._scan_orphans:
            self._kill_orphans()
        if self._subreaper:
            # A launcher run inside a longer-lived process (the API, a test) must not go on adopting orphans
            # nobody reaps: stop, and reap what was adopted and has ended.
            orphans.become_subreaper(False)
            self._subreaper = None
            self._reap()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def num_running(self) -> int:
        return len(self.runs)


def _kill_leftovers(pgid: int) -> None:
    """SIGKILL what remains of an ended job's process group (its leader was just reaped, so the group id
    cannot have been reused while members remain)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def sys_executable() -> str:
    import sys

    return sys.executable


def _wrap_preamble(preamble_file: str, argv: List[str]) -> List[str]:
    return [sp.SHELL, "-c", 'source "$0" && exec "$@"', preamble_file, *argv]


def _bind_for(task: Task, placement: Placement) -> Optional[str]:
    """The MPI launcher's binding: the job's own CPUs, split per rank, when it holds part of one node."""
    bind = task.cpu_bind
    if bind not in ("core", "depth", "hwthread") or len(placement.nodes) != 1 or not placement.cpu_ids:
        return bind
    ranks = task.num_ranks
    cpus = list(placement.cpu_ids)
    per = len(cpus) // ranks
    if per < 1:
        return bind
    groups = [cpus[i * per : (i + 1) * per] for i in range(ranks)]
    return "list:" + ":".join(",".join(str(c) for c in g) for g in groups)
