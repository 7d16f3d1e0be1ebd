"""MPI mode: one process on the head node places every job on the allocation and starts it.

Multi-rank and off-node jobs go through the platform's MPI launch line; single-rank jobs on this node start
directly (the fast path for floods), Python ``run()`` jobs in warm workers. Acquisition asks for what fits:
``max_nodes_per_job`` is the number of idle nodes, ``max_aggregate_nodes`` the free node fractions plus what is
held ahead (so a flood never waits on the DB), ``max_num_jobs`` the room left in that backlog. Held ahead is one
allocation's worth, or what the launcher started in the last :data:`HOLD_AHEAD_S` if more (measured as it
runs): a flood of short jobs is then acquired a few times a second, in hundreds, instead of a job or two per
pass of the loop (each acquire is a write transaction: with one allocation's worth ahead, a 2-core node running
no-op jobs two at a time spent a third of its launcher's CPU acquiring), while a launcher of long jobs still
holds no more than one allocation's worth that other launchers could run. Jobs are placed first fit in
acquisition order; a job that does not fit yet waits in the backlog while smaller ones behind it start.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from typing import Any, Deque, Dict, List, Set, Tuple

from balsam.db.doorbell import Doorbell
from balsam.launcher.base import LauncherBase, LauncherConfig
from balsam.launcher.executor import Executor, Finished
from balsam.launcher.resources import Placement, Request, ResourceManager, Unplaceable
from balsam.launcher.tasks import Task
from balsam.launcher.transport import Transport

logger = logging.getLogger("balsam.launcher")

IDLE_WAIT_S = 1.0
HOLD_AHEAD_S = 0.25
"""The backlog holds at least what the launcher started in this long (node fractions), besides one allocation's worth."""
RATE_WINDOW_S = 0.25
"""How often that start rate is measured again."""
MIN_RATE_WINDOW_S = 0.02


class MPIMode(LauncherBase):
    """The head-node launcher."""

    mode = "mpi"

    def __init__(self, cfg: LauncherConfig, transport: Transport, executor: Executor, rm: ResourceManager) -> None:
        super().__init__(cfg, transport)
        self.executor = executor
        self.rm = rm
        self.backlog: Deque[Tuple[Task, Request]] = deque()
        self.backlog_footprint = 0.0
        self.placements: Dict[int, Placement] = {}
        self.python_jobs: Set[int] = set()
        self.max_backlog = max(256, self.ls.serial_prefetch_per_node * rm.num_nodes)
        self.ahead = float(rm.num_nodes)
        """Node fractions held ahead in the backlog: one allocation's worth, more in a flood (see HOLD_AHEAD_S)."""
        self._window_start = time.monotonic()
        self._window_footprint = 0.0
        self.executor.before_spawns = self.reporter.flush
        self.executor.start_by = self.start_by
        self._flush_each = not executor.defers_spawns
        """Journal each RUNNING as it is announced (the executor spawns at once), not once per batch of starts."""

    def wake(self) -> None:
        self.executor.wakeup()

    def listen(self, doorbell: Doorbell) -> None:
        self.executor.add_wake_fd(doorbell.fileno())

    def busy(self) -> bool:
        return bool(self.placements or self.backlog or self.executor.num_running)

    # ------------------------------------------------------------------ one pass
    def cycle(self) -> None:
        finished = self.executor.poll(self._timeout())
        if finished:
            self.free(finished)
            if self.executor.defers_spawns:
                # Reported first, so that the journal takes their ends and the next jobs' RUNNING in one write
                # (the spawns wait for it, then go to the spawn threads without waiting for anything else).
                self.handle(finished)
                if not self.life.stopping:
                    self.start_backlog()
            else:
                if not self.life.stopping:
                    self.start_backlog()  # refill the freed CPUs first: reporting the ended jobs can wait microseconds
                self.handle(finished)
        for job_id in self.take_rejected():
            self.executor.kill(job_id, "its RUNNING update was refused (killed, or the lease lapsed)")
        self.check_kills()
        if not self.life.stopping:
            self.fill()
            self.start_backlog()

    def _timeout(self) -> float:
        room = self.rm.free_footprint > 0 and len(self.backlog) < self.max_backlog
        wait = self.poll_s if room else IDLE_WAIT_S
        return max(0.0, min(wait, self.life.remaining_s()))

    def free(self, finished: List[Finished]) -> None:
        """Give the resources of ended jobs back."""
        for f in finished:
            placement = self.placements.pop(f.job_id, None)
            if placement is not None:
                self.rm.release(placement)

    def handle(self, finished: List[Finished]) -> None:
        """Free what ended jobs held (if not yet) and report how they ended."""
        self.free(finished)
        for f in finished:
            python = f.job_id in self.python_jobs
            self.python_jobs.discard(f.job_id)
            self.reporter.finished(f, python=python, stopping=self.life.stop_event.is_set())

    def check_kills(self) -> None:
        """Stop running jobs a user killed, and drop killed ones from the backlog before they start."""
        killed = self.killed_among(lambda: [*self.placements, *(t.id for t, _ in self.backlog)])
        if not killed:
            return
        gone = set(killed)
        for job_id in killed:
            if job_id in self.placements:
                logger.info("job %s was killed at the site: stopping it", job_id)
                self.executor.kill(job_id, "killed by the user")
        kept = [(t, r) for t, r in self.backlog if t.id not in gone]
        if len(kept) != len(self.backlog):
            self.backlog = deque(kept)
            self.backlog_footprint = sum(r.footprint for _, r in kept)

    # ------------------------------------------------------------------ acquisition and starting
    def fill(self) -> None:
        """Acquire jobs when the backlog is down to half of what it may hold (by count and by footprint)."""
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= MIN_RATE_WINDOW_S:
            # Whole nodes' worth: a budget that is a fraction no job's footprint fits makes the acquire scan
            # every candidate in vain. It grows as soon as the rate shows (a flood's start), and shrinks at
            # the end of a window (the jobs got longer).
            # Only jobs that ended and were replaced within the window show a rate: the first allocation's worth
            # starts at once, and over a few milliseconds that would look like a flood.
            wanted = float(self.rm.num_nodes)
            if self._window_footprint > self.rm.num_nodes:
                wanted = max(wanted, math.ceil(self._window_footprint / elapsed * HOLD_AHEAD_S))
            if wanted > self.ahead or elapsed >= RATE_WINDOW_S:
                self.ahead = wanted
            if elapsed >= RATE_WINDOW_S:
                self._window_start, self._window_footprint = now, 0.0
        target = self.rm.free_footprint + self.ahead
        if self.backlog and (len(self.backlog) > self.max_backlog // 2 or self.backlog_footprint > target / 2):
            return
        budget = target - self.backlog_footprint
        room_jobs = self.max_backlog - len(self.backlog)
        if budget <= 1e-9 or room_jobs <= 0:
            return
        idle = not self.busy()
        if not self.should_acquire(idle):
            return
        # Only jobs this launcher's nodes can hold: a job needing more GPUs or nodes stays for another launcher.
        jobs = self.acquire(room_jobs, idle=idle, max_nodes_per_job=max(1, self.rm.idle_nodes), max_aggregate_nodes=budget,
                            max_gpus_per_node=self.rm.max_gpus)
        if not jobs:
            return
        added = []
        for _job, task in self.tasks_for(jobs):
            try:
                exclusive = task.num_ranks > 1 and not self.ls.mpirun_allows_node_packing
                req = self.rm.request(task.num_nodes, task.ranks_per_node, task.threads_per_rank, task.threads_per_core,
                                      task.gpus_per_rank, task.node_packing_count, exclusive=exclusive)
            except Unplaceable as exc:
                self.fail(task.id, str(exc))
                continue
            self.backlog.append((task, req))
            self.backlog_footprint += req.footprint
            added.append(task)
        self.executor.prepare(added)

    def start_backlog(self) -> None:
        """Start backlog jobs that fit now, in order (skipping shapes that already failed to fit this pass), while
        the lease holds (:meth:`may_start`) and the workdirs' disk has room (looked at once a second, as for acquires:
        jobs already held ahead wait for space like new ones)."""
        if not self.backlog or not self.rm.has_room or not self.may_start() or self._data_disk_full():
            return
        failed: Set[Request] = set()
        skipped: List[Tuple[Task, Request]] = []
        remaining_s = self.life.remaining_s()
        mpi_room = self.ls.max_concurrent_mpiruns - self.executor.mpi_running
        backlog = self.backlog
        while backlog and self.rm.has_room:
            task, req = backlog.popleft()
            if req in failed or (task.wall_time_min and task.wall_time_min * 60.0 > remaining_s) or (task.num_ranks > 1 and mpi_room <= 0):
                skipped.append((task, req))
                continue
            placement = self.rm.place(req)
            if placement is None:
                failed.add(req)
                skipped.append((task, req))
                continue
            self.backlog_footprint -= req.footprint
            self._window_footprint += req.footprint
            if self.executor.needs_mpi(task, placement):
                mpi_room -= 1
            self.placements[task.id] = placement
            if task.kind == "python":
                self.python_jobs.add(task.id)
            # RUNNING is journaled just before the spawn: a launcher killed while its child starts (glibc's
            # posix_spawn waits for the child's exec) still leaves the run on record, so the job is re-run as a
            # re-run, never twice in silence. A start that fails is reported by the next poll, after RUNNING.
            self.executor.start(task, placement, announce=functools.partial(self.reporter.running, task.id, flush=self._flush_each))
        if skipped:
            backlog.extendleft(reversed(skipped))
        if not backlog:
            self.backlog_footprint = 0.0
        self.executor.launch()  # the RUNNING of every job started here in one journal write, then their spawns

    # ------------------------------------------------------------------ stopping
    def drop_all(self, reason: str) -> None:
        for job_id in list(self.placements):
            self.executor.kill(job_id, reason)
        self.backlog.clear()
        self.backlog_footprint = 0.0

    def shutdown_jobs(self) -> None:
        reason = self.life.stop_reason or "the launcher stopped"
        self.backlog.clear()
        if self.executor.num_running:
            logger.info("stopping %d running jobs (%s)", self.executor.num_running, reason)
            self.executor.kill_all(f"the launcher stopped: {reason}", timed_out=True)
        deadline = time.monotonic() + self.cfg.kill_grace_s + 10.0
        while self.executor.num_running and time.monotonic() < deadline:
            self.handle(self.executor.poll(0.1))
        self.handle(self.executor.poll(0.0))
        for job_id in list(self.placements):  # still not gone: report them anyway
            self.reporter.finished(Finished(job_id, -9, timed_out=True, message=f"the launcher stopped: {reason}"))
            self.placements.pop(job_id, None)
        self.executor.close()


def build(cfg: LauncherConfig, transport: Transport, **executor_args: Any) -> MPIMode:
    """An MPI-mode launcher for ``cfg``'s nodes."""
    from balsam.launcher.nodes import make_executor, make_resource_manager

    rm = make_resource_manager(cfg)
    executor = make_executor(cfg, **executor_args)
    logger.info("mpi mode on %s", rm.describe())
    return MPIMode(cfg, transport, executor, rm)
