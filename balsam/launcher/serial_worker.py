"""Serial mode's node worker: runs the tasks the master sends on one node, with its own resource manager.

The worker keeps up to ``prefetch`` tasks queued: when its queue and outstanding requests fall below half of
that, it asks the master for more (``want`` counts new tasks, so a request is never double-counted). Each
loop it starts whatever fits the node (first fit, packing by ``node_packing_count``), waits for processes to
end or messages to arrive, and reports started and finished jobs in one message.

On the launcher's own node with a single node, the worker runs in a thread of the launcher process; on other
nodes it is ``python -m balsam.launcher.serial_worker``, started by the platform's MPI launcher with one rank
per node (or one process per node with the ``local`` launcher), connecting back over TCP (see
:mod:`balsam.launcher.links`). SIGTERM to a worker process stops its jobs (RUN_TIMEOUT) and reports them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import queue
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from balsam.db.journal import JournalWriter
from balsam.db.states import JobState
from balsam.launcher.executor import Executor, Finished
from balsam.launcher.resources import Placement, Request, ResourceManager, Unplaceable
from balsam.launcher.tasks import Task
from balsam.site.agent_state import disk_state

logger = logging.getLogger("balsam.launcher.worker")

MODULE = "balsam.launcher.serial_worker"
DISK_CHECK_PERIOD_S = 1.0
"""How often a worker with tasks queued looks at the free space of the workdirs' disk."""
Message = Dict[str, Any]


def finished_to_wire(f: Finished) -> Message:
    return {"id": f.job_id, "rc": f.rc, "tail": f.tail, "ret": f.ret, "exc": f.exc, "killed": f.killed,
            "timed_out": f.timed_out, "message": f.message, "end": f.end}


def finished_from_wire(d: Message) -> Finished:
    f = Finished(int(d["id"]), int(d["rc"]), tail=d.get("tail") or "", ret=d.get("ret"), exc=d.get("exc"),
                 killed=bool(d.get("killed")), timed_out=bool(d.get("timed_out")), message=d.get("message") or "")
    f.end = float(d.get("end") or f.end)
    return f


class SerialWorker:
    """One node's worker loop (see the module docstring)."""

    def __init__(self, send: Callable[[Message], None], executor: Executor, rm: ResourceManager, *, prefetch: int,
                 allows_packing: bool = True, data_dir: Optional[Path] = None, state_dir: Optional[Path] = None,
                 index: int = 0) -> None:
        """``data_dir``: the jobs' workdirs' folder; while its disk is full, queued tasks wait (as the master's do).
        ``state_dir``: the site's state folder, where the worker journals each start under the lease (None: it
        does not, as in a benchmark of what the guards cost); ``index``: the worker's number (its journal's name)."""
        self.send = send
        self.data_dir = data_dir
        self._disk_checked = -DISK_CHECK_PERIOD_S
        self._disk_full = False
        self.executor = executor
        self.rm = rm
        self.prefetch = max(1, prefetch)
        self.allows_packing = allows_packing
        self.inbox: "queue.SimpleQueue[Message]" = queue.SimpleQueue()
        self.queue: Deque[Tuple[Task, Request]] = deque()
        self.placements: Dict[int, Placement] = {}
        self.requested = 0
        self.deadline: Optional[float] = None
        self.stopping: Optional[str] = None
        self.apps: Dict[str, Any] = {}
        """App code by key, as the master sent it (once per app version)."""
        self.state_dir = state_dir
        self.index = index
        self.session_id: Optional[int] = None
        self.journal: Optional[JournalWriter] = None
        self.start_by: Optional[float] = None
        """Until when (``time.monotonic()``) queued tasks may start: the master's lease, as it last told (None: no
        limit). A worker whose master stopped (SIGSTOP, a frozen VM) or lost its lease starts nothing more; the
        master sends jobs and lease renewals only while it runs."""
        self._announced: Dict[int, float] = {}
        executor.start_by = lambda: self.start_by
        executor.before_spawns = self._flush_journal

    def deliver(self, msg: Message) -> None:
        """A message from the master (any thread)."""
        self.inbox.put(msg)
        self.executor.wakeup()

    def stop(self, reason: str) -> None:
        self.deliver({"t": "exit", "reason": reason})

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        started: List[List[Any]] = []
        done: List[Message] = []
        failed: List[List[Any]] = []
        try:
            while True:
                self._read_inbox(done, failed)
                if self.stopping is not None:
                    break
                self._start(started)
                want = self._want()
                if started or done or failed or want:
                    self.send({"t": "status", "started": started, "done": done, "failed": failed, "want": want})
                    started, done, failed = [], [], []
                timeout = 1.0 if self.executor.num_running or not self.queue else 0.05
                for f in self.executor.poll(timeout):
                    self._release(f.job_id)
                    done.append(finished_to_wire(f))
            self._shutdown(done, started)
        finally:
            self.executor.close()
            self._close_journal()

    def _read_inbox(self, done: List[Message], failed: List[List[Any]]) -> None:
        while True:
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                return
            kind = msg.get("t")
            if kind == "jobs":
                tasks = msg["tasks"]
                self.requested = max(0, self.requested - len(tasks))
                new: List[Task] = []
                self.apps.update(msg.get("apps") or {})
                if msg.get("remaining_s") is not None:
                    self.deadline = time.monotonic() + float(msg["remaining_s"])
                if msg.get("lease"):
                    self._lease(msg["lease"])
                for wire in tasks:
                    task = wire if isinstance(wire, Task) else Task.from_wire(wire)
                    if isinstance(task.app, str):
                        task.app = self.apps.get(task.app)
                    try:
                        exclusive = task.num_ranks > 1 and not self.allows_packing
                        req = self.rm.request(1, task.ranks_per_node, task.threads_per_rank, task.threads_per_core,
                                              task.gpus_per_rank, task.node_packing_count, exclusive=exclusive)
                    except Unplaceable as exc:
                        failed.append([task.id, str(exc)])
                        continue
                    self.queue.append((task, req))
                    new.append(task)
                self.executor.prepare(new)
            elif kind == "kill":
                ids = set(msg["ids"])
                for job_id in ids:
                    if not self.executor.kill(job_id, "killed by the user"):
                        before = len(self.queue)
                        self.queue = deque(x for x in self.queue if x[0].id != job_id)
                        if len(self.queue) != before:
                            done.append(finished_to_wire(Finished(job_id, -9, killed=True, message="killed before it started")))
            elif kind == "lease":
                self._lease(msg["lease"])
            elif kind == "exit":
                self.stopping = str(msg.get("reason") or "the launcher stopped")

    # ------------------------------------------------------------------ the lease and its journal
    def _lease(self, lease: Message) -> None:
        self.start_by = time.monotonic() + float(lease["valid_s"])
        session_id = lease.get("session")
        if session_id != self.session_id:
            self._close_journal()
            self.session_id = session_id
            if session_id is not None and self.state_dir is not None:
                self.journal = JournalWriter(self.state_dir, int(session_id), f"w{int(self.index)}")

    def _announce(self, job_id: int, ts: float) -> None:
        """A job starts now: its RUNNING goes into the worker's journal before the spawn (:attr:`journal`): should
        the master stop or die before it records the start, the lease's end still finds the run on record."""
        self._announced[job_id] = ts
        if self.journal is not None:
            self.journal.append(job_id, JobState.RUNNING.value, ts)
            if not self.executor.defers_spawns:
                self.journal.flush()

    def _flush_journal(self) -> None:
        if self.journal is not None:
            self.journal.flush()

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()  # the lease's end removes it
            self.journal = None

    def _start(self, started: List[List[Any]]) -> None:
        if not self.queue or self._data_disk_full() or (self.start_by is not None and time.monotonic() > self.start_by):
            return
        failed_reqs: Set[Request] = set()
        keep: Deque[Tuple[Task, Request]] = deque()
        remaining = None if self.deadline is None else self.deadline - time.monotonic()
        while self.queue:
            task, req = self.queue.popleft()
            if req in failed_reqs or (remaining is not None and task.wall_time_min and task.wall_time_min * 60 > remaining):
                keep.append((task, req))
                continue
            placement = self.rm.place(req)
            if placement is None:
                failed_reqs.add(req)
                keep.append((task, req))
                continue
            self.placements[task.id] = placement
            ts = self.executor.start(task, placement, announce=functools.partial(self._announce, task.id))
            started.append([task.id, self._announced.pop(task.id, ts)])
        self.queue = keep

    def _data_disk_full(self) -> bool:
        """Whether the workdirs' disk is full, looked at once a second: queued tasks would fail for lack of space, so
        they wait for it (the master sends no more meanwhile)."""
        if self.data_dir is None:
            return False
        now = time.monotonic()
        if now - self._disk_checked >= DISK_CHECK_PERIOD_S:
            self._disk_checked = now
            full = bool(disk_state(self.data_dir).get("full"))
            if full != self._disk_full:
                if full:
                    logger.error("the disk holding %s is full: %d queued jobs wait for space", self.data_dir, len(self.queue))
                else:
                    logger.warning("space was freed on the disk holding %s: starting jobs again", self.data_dir)
            self._disk_full = full
        return self._disk_full

    def _want(self) -> int:
        have = len(self.queue) + self.requested
        if self.stopping is None and have < max(1, self.prefetch // 2):
            more = self.prefetch - len(self.queue) - self.requested
            if more > 0:
                self.requested += more
                return more
        return 0

    def _release(self, job_id: int) -> None:
        placement = self.placements.pop(job_id, None)
        if placement is not None:
            self.rm.release(placement)

    def _shutdown(self, done: List[Message], started: List[List[Any]]) -> None:
        reason = self.stopping or "the launcher stopped"
        self.queue.clear()
        self.executor.kill_all(f"the launcher stopped: {reason}", timed_out=True)
        deadline = time.monotonic() + self.executor.kill_grace_s + 10.0
        while self.executor.num_running and time.monotonic() < deadline:
            for f in self.executor.poll(0.1):
                self._release(f.job_id)
                done.append(finished_to_wire(f))
        for f in self.executor.poll(0.0):
            done.append(finished_to_wire(f))
        self.send({"t": "status", "started": started, "done": done, "failed": [], "want": 0})
        self.send({"t": "bye"})


# --------------------------------------------------------------------------------------------- process entry
def _rank() -> int:
    from balsam.launcher.pyrun import current_rank

    return current_rank()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m balsam.launcher.serial_worker --site ROOT --master HOST:PORT --secret-file F [--node-index I]``."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="Balsam serial-mode node worker (started by the launcher)")
    parser.add_argument("--site", required=True)
    parser.add_argument("--master", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--node-index", type=int, default=None)
    args = parser.parse_args(argv)

    from balsam.launcher import links
    from balsam.launcher.base import LauncherConfig
    from balsam.launcher.nodes import make_executor
    from balsam.launcher.spawn import set_home
    from balsam.launcher.watchdog import BENCH_UNGUARDED_ENV
    from balsam.platforms.nodes import ComputeNode
    from balsam.settings import load_settings
    from balsam.site import SiteLayout, this_host

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s worker %(process)d: %(message)s")
    root = Path(args.site).resolve()
    settings = load_settings(SiteLayout(root).settings_path)
    secret = Path(args.secret_file).read_bytes()
    host = this_host()
    hello = {"host": host, "short": socket.gethostname().split(".", 1)[0], "rank": _rank(), "index": args.node_index, "pid": os.getpid()}
    sock, sender, welcome = links.connect(args.master, secret, hello)
    spec = welcome["node"]
    node = ComputeNode(str(spec["hostname"]), tuple(spec["cpu_ids"]), tuple(spec["gpu_ids"]))
    if "mpi" in spec:  # what the master found at its start (launcher.mpi_launcher: auto, the GPUs' variable)
        mpi, exe, opts = spec["mpi"]
        settings = dataclasses.replace(settings, launcher=dataclasses.replace(
            settings.launcher, mpi_launcher=str(mpi), mpi_executable=exe, mpi_options=dict(opts), gpu_env=spec.get("gpu_env")))
    set_home(root)
    cfg = LauncherConfig(root=root, settings=settings, job_mode="serial", wall_time_min=float(welcome.get("wall_time_min", 1e6)),
                         host=node.hostname, nodes=[node], guarded=os.environ.get(BENCH_UNGUARDED_ENV) != "1")
    executor = make_executor(cfg, [node])
    executor.all_local = True
    rm = ResourceManager([(node.hostname, node.cpu_ids, node.gpu_ids)])
    worker = SerialWorker(lambda m: sender.send(links.encode(m)), executor, rm,
                          prefetch=settings.launcher.serial_prefetch_per_node,
                          allows_packing=settings.launcher.mpirun_allows_node_packing, data_dir=Path(cfg.data_dir),
                          state_dir=cfg.layout.state if cfg.guarded else None, index=int(welcome["index"]))

    def on_term(signum: int, _frame: Any) -> None:
        worker.stop(f"the node worker received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    def reader() -> None:
        from balsam.launcher.wire import recv_frame

        try:
            while True:
                data = recv_frame(sock, links.LINK_MAX_FRAME)
                if data is None:
                    break
                worker.deliver(links.decode(data))
        except (OSError, ValueError):
            pass
        worker.stop("the connection to the master closed")

    import threading

    threading.Thread(target=reader, name="balsam-worker-link", daemon=True).start()
    logger.info("node worker %s on %s: %d CPUs, %d GPUs", welcome["index"], node.hostname, len(node.cpu_ids), len(node.gpu_ids))
    try:
        worker.run()
    except OSError as exc:
        logger.error("node worker stopped: %s", exc)
        return 1
    finally:
        try:
            sock.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
