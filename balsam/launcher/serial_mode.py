"""Serial mode: a master that acquires single-node jobs and feeds them to one worker per node.

For floods of single-node tasks. The master holds the lease and does all DB traffic (acquire and status
updates in bulk); node workers (:mod:`balsam.launcher.serial_worker`) place and run tasks on their node and
prefetch ``launcher.serial_prefetch_per_node`` tasks so they never wait on the master. With one node the
worker runs in a thread of this process; otherwise workers are processes on their nodes, started through
the MPI launcher with one rank per node (``cpu_bind none``, so their jobs are not pinned to one core), that
connect back over TCP on a free port with an HMAC handshake (:mod:`balsam.launcher.links`).

A worker that is lost (its node died) has its running jobs timed out (RUN_TIMEOUT, so they are retried) and
its queued ones handed to the others.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

from balsam.db.doorbell import Doorbell
from balsam.launcher import links
from balsam.launcher.base import LauncherBase, LauncherConfig
from balsam.launcher.executor import Finished
from balsam.launcher.links import Message, WorkerHandle
from balsam.launcher.serial_worker import MODULE as WORKER_MODULE
from balsam.launcher.serial_worker import SerialWorker, finished_from_wire
from balsam.launcher.tasks import Task
from balsam.launcher.transport import Transport

logger = logging.getLogger("balsam.launcher")

IDLE_WAIT_S = 1.0
WORKER_START_TIMEOUT_S = 120.0
DOORBELL_WAIT_S = 0.5


class SerialMaster(LauncherBase):
    """The serial-mode master (see the module docstring)."""

    mode = "serial"

    def __init__(self, cfg: LauncherConfig, transport: Transport, *, in_process: Optional[bool] = None) -> None:
        super().__init__(cfg, transport)
        self.inbox: "queue.SimpleQueue[Tuple[WorkerHandle, Message]]" = queue.SimpleQueue()  # C: no Python-level Condition per message
        self.handles: List[WorkerHandle] = []
        self.backlog: Deque[Task] = deque()
        self.owner: Dict[int, WorkerHandle] = {}
        self.python_jobs: set = set()  # type: ignore[type-arg]
        self.in_process = in_process if in_process is not None else self._local_single_node()
        self._threads: List[threading.Thread] = []
        self._procs: List[subprocess.Popen] = []  # type: ignore[type-arg]
        self._server: Optional[links.MasterServer] = None
        self._secret_path = cfg.layout.state / f"serial-{os.getpid()}.secret"
        self._taken: Dict[int, bool] = {}
        self._started_at = time.monotonic()
        self._workers_log = ""
        self._bell_thread: Optional[threading.Thread] = None
        self._lease_told: Tuple[Optional[int], float] = (None, -1.0)
        """The lease (session, start_by) the workers were last told of (:meth:`tell_lease`)."""

    def _local_single_node(self) -> bool:
        from balsam.launcher.nodes import local_host_names, short

        if len(self.cfg.nodes) != 1:
            return False
        names = local_host_names(self.cfg.host)
        host = self.cfg.nodes[0].hostname
        return self.ls.node == "local" or self.ls.mpi_launcher == "local" or host in names or short(host) in names

    # ------------------------------------------------------------------ workers
    def wake(self) -> None:
        self.inbox.put((WorkerHandle(-1, lambda m: None), {"t": "wake"}))

    def listen(self, doorbell: Doorbell) -> None:
        """A thread turns the doorbell's rings into wake-ups of the loop (which waits on its inbox)."""

        def run() -> None:
            while not self.life.stop_event.is_set():
                if doorbell.wait(DOORBELL_WAIT_S):
                    self.wake()

        self._bell_thread = threading.Thread(target=run, name="balsam-doorbell", daemon=True)
        self._bell_thread.start()

    def start_workers(self) -> None:
        if self.in_process:
            self._start_thread_worker()
        else:
            self._start_process_workers()

    def _start_thread_worker(self) -> None:
        from balsam.launcher.nodes import make_executor, make_resource_manager

        node = self.cfg.nodes[0]
        executor = make_executor(self.cfg, [node])
        executor.all_local = True
        rm = make_resource_manager(self.cfg, [node])
        handle_box: List[WorkerHandle] = []
        worker = SerialWorker(lambda m: self.inbox.put((handle_box[0], m)), executor, rm, prefetch=self.ls.serial_prefetch_per_node,
                              allows_packing=self.ls.mpirun_allows_node_packing, data_dir=Path(self.cfg.data_dir),
                              state_dir=self.cfg.layout.state if self.cfg.guarded else None, index=0)
        handle = WorkerHandle(0, worker.deliver)
        handle.host = node.hostname
        handle_box.append(handle)
        self.handles.append(handle)

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:  # a crash must not leave the master waiting
                logger.exception("the node worker thread failed: %s", exc)
                handle.alive = False
                self.inbox.put((handle, {"t": "lost", "why": f"its thread failed: {exc}"}))

        thread = threading.Thread(target=run, name="balsam-node-worker", daemon=True)
        thread.start()
        self._threads.append(thread)
        logger.info("serial mode: node worker runs in this process on %s (%d CPUs)", node.hostname, len(node.cpu_ids))

    def _assign(self, hello: Message) -> Optional[Tuple[int, Dict[str, Any]]]:
        nodes = self.cfg.nodes
        index = hello.get("index")
        pick: Optional[int] = None
        if isinstance(index, int) and 0 <= index < len(nodes) and index not in self._taken:
            pick = index
        if pick is None:
            for i, n in enumerate(nodes):
                if i not in self._taken and n.hostname in (hello.get("host"), hello.get("short")):
                    pick = i
                    break
        rank = hello.get("rank")
        if pick is None and isinstance(rank, int) and 0 <= rank < len(nodes) and rank not in self._taken:
            pick = rank
        if pick is None:
            return None
        self._taken[pick] = True
        n = nodes[pick]
        ls = self.cfg.settings.launcher  # resolved at launcher start: the worker uses the same MPI and GPU variable
        return pick, {"hostname": n.hostname, "cpu_ids": list(n.cpu_ids), "gpu_ids": list(n.gpu_ids), "gpu_env": ls.gpu_env,
                      "mpi": [ls.mpi_launcher, ls.mpi_executable, dict(ls.mpi_options)]}

    def _start_process_workers(self) -> None:
        from balsam.launcher.nodes import job_base_env, mpi_launcher
        from balsam.launcher.spawn import python_env, python_module_argv
        from balsam.platforms.mpi import LaunchSpec

        secret = links.write_secret(self._secret_path)
        self._server = links.MasterServer(secret, self.inbox, self._assign).start()
        master = f"{socket.gethostname()}:{self._server.port}"
        argv = python_module_argv(WORKER_MODULE) + ["--site", str(self.cfg.root), "--master", master,
                                                     "--secret-file", str(self._secret_path)]
        env = python_env(job_base_env(), None)
        log_dir = self.cfg.log_dir or self.cfg.layout.log
        self._workers_log = os.path.join(str(log_dir), f"serial-workers-{os.getpid()}.out")
        out = open(self._workers_log, "ab")
        try:
            hosts = [n.hostname for n in self.cfg.nodes]
            if self.ls.mpi_launcher == "local" or self._local_single_node():
                for i in range(len(hosts)):
                    self._procs.append(subprocess.Popen(argv + ["--node-index", str(i)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                                        stdin=subprocess.DEVNULL, cwd=str(self.cfg.root), start_new_session=True))
            else:
                launch = mpi_launcher(self.ls).render(LaunchSpec(command=argv, num_ranks=len(hosts), ranks_per_node=1, hosts=hosts,
                                                                 cpu_bind="none", env={"PYTHONPATH": env.get("PYTHONPATH", "")}))
                env.update(launch.env)
                self._procs.append(subprocess.Popen(launch.argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, cwd=str(self.cfg.root), start_new_session=True))
        finally:
            out.close()
        logger.info("serial mode: started node workers on %d node(s); master at %s", len(hosts), master)

    # ------------------------------------------------------------------ loop
    def busy(self) -> bool:
        starting = not self.in_process and not self.handles
        return bool(self.backlog or self.owner) or starting

    def cycle(self) -> None:
        try:
            item: Optional[Tuple[WorkerHandle, Message]] = self.inbox.get(timeout=self._timeout())
        except queue.Empty:
            item = None
        while item is not None:
            self.handle(*item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                item = None
        for job_id in self.take_rejected():
            self.kill_job(job_id, "its RUNNING update was refused")
        for job_id in self.killed_among(lambda: [j for h in self.handles for j in h.started]):
            logger.info("job %s was killed at the site: stopping it", job_id)
            self.kill_job(job_id, "killed by the user")
        if not self.life.stopping:
            self.distribute()
            self.tell_lease()
        if not self.in_process and not self.handles:
            log = self._workers_log
            if self._procs and all(p.poll() is not None for p in self._procs):
                self.life.stop(f"the node workers exited before connecting (see {log})")
                self.exit_code = 1
            elif time.monotonic() - self._started_at > WORKER_START_TIMEOUT_S:
                self.life.stop(f"no node worker connected within {WORKER_START_TIMEOUT_S:g} s (see {log})")
                self.exit_code = 1

    def lease_message(self) -> Message:
        """What workers need to know of the lease: its id (they journal each start under it) and for how much longer
        they may start jobs (:meth:`start_by`, as seconds from now: their clocks are their own)."""
        start_by = self.start_by()
        self._lease_told = (self.source.session_id, start_by)
        return {"session": self.source.session_id, "valid_s": start_by - time.monotonic()}

    def tell_lease(self) -> None:
        """Tell the workers when the site confirmed the lease again (or a new one opened): jobs queued at a worker start
        only while the lease is confirmed, so a worker goes on starting them only while its master runs."""
        if (self.source.session_id, self.start_by()) == self._lease_told or not self.handles:
            return
        msg = {"t": "lease", "lease": self.lease_message()}
        for h in self.handles:
            h.send(msg)

    def _timeout(self) -> float:
        wanting = any(h.want > 0 for h in self.handles if h.alive)
        wait = self.poll_s if wanting else IDLE_WAIT_S
        return max(0.0, min(wait, self.life.remaining_s()))

    def handle(self, h: WorkerHandle, msg: Message) -> None:
        kind = msg.get("t")
        if kind == "status":
            started = msg.get("started") or ()
            for job_id, ts in started:
                task = h.sent.pop(job_id, None)
                h.started[job_id] = task is not None and task.kind == "python"
                self.reporter.running(job_id, float(ts), flush=False)
            if started:
                self.reporter.flush()  # these already run: on record at once, in one write
            for d in msg.get("done") or ():
                f = finished_from_wire(d) if isinstance(d, dict) else d
                python = h.started.pop(f.job_id, False)
                h.sent.pop(f.job_id, None)
                self.owner.pop(f.job_id, None)
                self.reporter.finished(f, python=python, stopping=self.life.stop_event.is_set())
            for job_id, why in msg.get("failed") or ():
                h.sent.pop(job_id, None)
                self.owner.pop(job_id, None)
                self.fail(int(job_id), str(why))
            h.want += int(msg.get("want") or 0)
        elif kind == "connected":
            self.handles.append(h)
            self.idle_since = time.monotonic()  # idle time counts from the first moment jobs could run
            logger.info("node worker %d connected from %s", h.index, h.host)
        elif kind == "bye":
            h.said_bye = True
        elif kind == "lost":
            self.lost(h, str(msg.get("why", "")))

    def lost(self, h: WorkerHandle, why: str) -> None:
        h.alive = False
        h.want = 0
        if h.said_bye:
            return
        logger.error("node worker %d (%s) was lost: %s", h.index, h.host, why)
        for job_id in list(h.started):
            self.owner.pop(job_id, None)
            self.reporter.finished(Finished(job_id, -1, timed_out=True, message=f"its node worker on {h.host} was lost: {why}"))
        h.started.clear()
        for job_id, task in list(h.sent.items()):
            self.owner.pop(job_id, None)
            self.backlog.appendleft(task)
        h.sent.clear()
        if not self.life.stopping and not any(x.alive for x in self.handles):
            self.life.stop("every node worker was lost")
            self.exit_code = 1

    def kill_job(self, job_id: int, reason: str) -> None:
        h = self.owner.get(job_id)
        if h is not None:
            h.send({"t": "kill", "ids": [job_id]})

    def distribute(self) -> None:
        alive = [h for h in self.handles if h.alive]
        total_want = sum(h.want for h in alive)
        if total_want > len(self.backlog):
            idle = not self.busy()
            if self.should_acquire(idle):
                jobs = self.acquire(total_want - len(self.backlog), idle=idle, serial_only=True, max_nodes_per_job=1,
                                    max_gpus_per_node=max(len(n.gpu_ids) for n in self.cfg.nodes))
                if jobs:
                    for _job, task in self.tasks_for(jobs):
                        self.backlog.append(task)
        if not self.backlog or not self.may_start() or self._data_disk_full():  # only while the lease holds and the disk has room
            return
        remaining = self.life.remaining_s()
        for h in alive:
            if h.want <= 0 or not self.backlog:
                continue
            n = min(h.want, len(self.backlog))
            batch = [self.backlog.popleft() for _ in range(n)]
            h.want -= n
            for t in batch:
                h.sent[t.id] = t
                self.owner[t.id] = h
            if self.in_process:
                h.send({"t": "jobs", "tasks": batch, "remaining_s": remaining, "lease": self.lease_message()})
                continue
            wires: List[Dict[str, Any]] = []
            apps: Dict[str, Any] = {}
            for t in batch:
                wire = t.to_wire()
                if t.app is not None:
                    key = t.app[0]
                    if key not in h.apps_sent:
                        apps[key] = t.app
                        h.apps_sent.add(key)
                    wire["app"] = key  # the worker keeps each app's code after its first task
                wires.append(wire)
            h.send({"t": "jobs", "tasks": wires, "apps": apps, "remaining_s": remaining, "lease": self.lease_message()})

    # ------------------------------------------------------------------ stopping
    def drop_all(self, reason: str) -> None:
        for h in self.handles:
            ids = list(h.started) + list(h.sent)
            if ids:
                h.send({"t": "kill", "ids": ids})
        self.backlog.clear()

    def shutdown_jobs(self) -> None:
        reason = self.life.stop_reason or "the launcher stopped"
        if self._bell_thread is not None:
            self._bell_thread.join(timeout=2 * DOORBELL_WAIT_S + 1.0)  # before the doorbell closes under it
        self.backlog.clear()
        for h in self.handles:
            h.send({"t": "exit", "reason": reason})
        deadline = time.monotonic() + self.cfg.kill_grace_s + 15.0
        while any(h.alive and not h.said_bye for h in self.handles) and time.monotonic() < deadline:
            try:
                self.handle(*self.inbox.get(timeout=0.1))
            except queue.Empty:
                pass
        while True:
            try:
                self.handle(*self.inbox.get_nowait())
            except queue.Empty:
                break
        for h in self.handles:
            for job_id in list(h.started):
                self.reporter.finished(Finished(job_id, -9, timed_out=True, message=f"the launcher stopped: {reason}"))
            h.started.clear()
        for t in self._threads:
            t.join(timeout=10.0)
        if self._server is not None:
            self._server.close()
        for p in self._procs:
            try:
                p.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:
            self._secret_path.unlink()
        except FileNotFoundError:
            pass

    def run(self) -> int:
        self.start_workers()
        return super().run()


def build(cfg: LauncherConfig, transport: Transport, *, in_process: Optional[bool] = None) -> SerialMaster:
    """A serial-mode master for ``cfg``'s nodes."""
    return SerialMaster(cfg, transport, in_process=in_process)
