"""Warm Python workers: interpreters that load an app once and run many of its ``run()`` jobs.

A new interpreter costs ~8 ms (and importing an app's dependencies often far more), so single-rank Python jobs
on the launcher's own node go to a pool of worker processes started with ``python -m
balsam.launcher.pyworker FD``. Each worker runs one job at a time: it changes into the job's workdir, points
its stdout and stderr (file descriptors 1 and 2, so C extensions' output too) at ``job.out``, applies the
job's environment and CPU affinity, calls ``run()`` and restores all of it. The launcher and the worker talk
over a socketpair in pickle frames (one trust domain: the launcher started it):

    launcher -> worker   ("app", key, class_name, module_name, source)      once per app version
                         ("run", job_id, key, job_fields, params, env, cpus, output)
    worker -> launcher   ("done", job_id, return_code, serialized_value, serialized_exception)

A job is killed by killing its worker's process group; the pool starts another when needed. Workers die with
the launcher (``PR_SET_PDEATHSIG``) and when the socket closes. Workers are keyed by interpreter and by the
GPUs they were given (a GPU runtime reads its visible devices once per process).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from balsam.launcher.wire import FrameReader, frame, recv_frame

MODULE = "balsam.launcher.pyworker"


# --------------------------------------------------------------------------------------------- worker side
def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def worker_main(fd: int) -> int:
    """The worker's loop (see the module docstring)."""
    _die_with_parent()
    sock = socket.socket(fileno=fd)
    home = os.getcwd()
    saved_out, saved_err = os.dup(1), os.dup(2)
    apps: Dict[str, Any] = {}
    from balsam.launcher.pyexec import call_run, load_app, pickle_exception

    sock.sendall(frame(pickle.dumps(("ready", os.getpid()))))
    while True:
        data = recv_frame(sock)
        if data is None:
            return 0
        msg = pickle.loads(data)
        kind = msg[0]
        if kind == "exit":
            return 0
        if kind == "app":
            _, key, class_name, module_name, source = msg
            try:
                apps[key] = load_app(source, class_name, module_name)
            except Exception as exc:
                apps[key] = exc
            continue
        _, job_id, key, job, params, env, cpus, output = msg
        outcome = _run_one(apps.get(key), job, params, env, cpus, output, saved_out, saved_err, home, call_run, pickle_exception)
        sock.sendall(frame(pickle.dumps(("done", job_id, *outcome), protocol=4)))


def _run_one(
    app: Any,
    job: Dict[str, Any],
    params: Sequence[Any],
    env: Mapping[str, str],
    cpus: Optional[Sequence[int]],
    output: str,
    saved_out: int,
    saved_err: int,
    home: str,
    call_run: Any,
    pickle_exception: Any,
) -> Tuple[int, Optional[bytes], Optional[bytes]]:
    old_env = {k: os.environ.get(k) for k in env}
    old_aff = None
    try:
        os.chdir(job["workdir_path"])
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        err = OSError(exc.errno, f"cannot open the job's output {output}: {exc.strerror}")
        return 1, None, pickle_exception(err, "")
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        os.environ.update(env)
        if cpus and hasattr(os, "sched_setaffinity"):
            old_aff = os.sched_getaffinity(0)
            os.sched_setaffinity(0, cpus)
        if isinstance(app, BaseException) or app is None:
            why = app if app is not None else RuntimeError("the launcher sent no app code for this job")
            print(f"balsam: cannot load the app: {why}", file=sys.stderr)
            return 1, None, pickle_exception(why if isinstance(why, Exception) else RuntimeError(str(why)), "")
        return call_run(app, job, params)  # type: ignore[no-any-return]
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except Exception:
                pass
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old_aff is not None:
            os.sched_setaffinity(0, old_aff)
        try:
            os.chdir(home)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------- launcher side
class PyWorker:
    """The launcher's handle on one worker process."""

    __slots__ = ("pid", "sock", "python", "gpu_key", "apps", "job_id", "reader", "ready", "last_used")

    def __init__(self, pid: int, sock: socket.socket, python: str, gpu_key: Tuple[str, ...]) -> None:
        self.pid = pid
        self.sock = sock
        self.python = python
        self.gpu_key = gpu_key
        self.apps: Set[str] = set()
        self.job_id: Optional[int] = None
        self.reader = FrameReader()
        self.ready = False
        self.last_used = time.monotonic()


class PyWorkerPool:
    """Starts, hands out and retires warm workers. Owned by one executor thread (not thread-safe)."""

    def __init__(self, *, env: Mapping[str, str], home: str, log_path: str, max_idle: int, pylib: Any = None) -> None:
        self.env = dict(env)
        self.home = home
        self.log_path = log_path
        self.max_idle = max(1, max_idle)
        self.pylib = pylib
        self.workers: Dict[int, PyWorker] = {}
        self._idle: List[PyWorker] = []
        self._envs: Dict[str, Dict[str, str]] = {}

    def _spawn(self, python: str, gpu_key: Tuple[str, ...]) -> PyWorker:
        from balsam.launcher.spawn import python_env, python_module_argv, spawn

        env = self._envs.get(python)
        if env is None:
            env = self._envs[python] = python_env(self.env, python, self.pylib)
        parent, child = socket.socketpair()
        try:
            argv = python_module_argv(MODULE, python) + [str(child.fileno())]
            pid = spawn(argv, cwd=self.home, env=env, output=self.log_path, append=True, pass_fds=[child.fileno()])
        finally:
            child.close()
        parent.setblocking(False)
        worker = PyWorker(pid, parent, python, gpu_key)
        self.workers[pid] = worker
        return worker

    def get(self, python: str, gpu_key: Tuple[str, ...]) -> PyWorker:
        """An idle worker for this interpreter and GPU set (the most recently used), or a new one."""
        for i in range(len(self._idle) - 1, -1, -1):
            w = self._idle[i]
            if w.python == python and (w.gpu_key == gpu_key or not w.gpu_key and not gpu_key):
                del self._idle[i]
                return w
        for i in range(len(self._idle) - 1, -1, -1):
            w = self._idle[i]
            if w.python == python and not w.gpu_key:  # a worker that never saw a GPU may take one
                del self._idle[i]
                w.gpu_key = gpu_key
                return w
        return self._spawn(python, gpu_key)

    def submit(
        self,
        worker: PyWorker,
        job_id: int,
        app: Tuple[str, str, str, str],
        job: Dict[str, Any],
        params: Sequence[Any],
        env: Mapping[str, str],
        cpus: Optional[Sequence[int]],
        output: str,
    ) -> None:
        """Send a job (and the app's code the first time this worker needs it)."""
        key = app[0]
        data = b""
        if key not in worker.apps:
            data += frame(pickle.dumps(("app", *app), protocol=4))
            worker.apps.add(key)
        data += frame(pickle.dumps(("run", job_id, key, job, params, dict(env), list(cpus) if cpus else None, output), protocol=4))
        worker.job_id = job_id
        worker.sock.setblocking(True)
        try:
            worker.sock.sendall(data)
        finally:
            worker.sock.setblocking(False)

    def read(self, worker: PyWorker) -> Tuple[List[Tuple[Any, ...]], bool]:
        """Messages a worker sent, and whether its socket closed."""
        out: List[Tuple[Any, ...]] = []
        closed = False
        while True:
            try:
                data = worker.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            for payload in worker.reader.feed(data):
                msg = pickle.loads(payload)
                if msg[0] == "ready":
                    worker.ready = True
                else:
                    out.append(msg)
        return out, closed

    def release(self, worker: PyWorker) -> None:
        """A worker finished its job: keep it warm (or retire the oldest idle one)."""
        worker.job_id = None
        worker.last_used = time.monotonic()
        self._idle.append(worker)
        if len(self._idle) > self.max_idle:
            self.retire(self._idle.pop(0))

    def retire(self, worker: PyWorker) -> None:
        """Ask a worker to exit (its socket closing ends it)."""
        try:
            worker.sock.close()
        except OSError:
            pass

    def kill(self, worker: PyWorker, sig: int = signal.SIGKILL) -> None:
        """Kill a worker and whatever its job started."""
        from balsam.launcher.spawn import kill_group

        kill_group(worker.pid, sig)

    def forget(self, pid: int) -> Optional[PyWorker]:
        """A worker process ended (reaped by the executor): drop it; returns it if it was ours."""
        worker = self.workers.pop(pid, None)
        if worker is None:
            return None
        if worker in self._idle:
            self._idle.remove(worker)
        try:
            worker.sock.close()
        except OSError:
            pass
        return worker

    def shutdown(self) -> None:
        """Close every worker's socket (idle ones exit; busy ones are killed by the executor)."""
        for worker in list(self.workers.values()):
            self.retire(worker)
        self._idle.clear()


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print(f"usage: python -m {MODULE} FD (started by the Balsam launcher)", file=sys.stderr)
        return 2
    return worker_main(int(args[0]))


if __name__ == "__main__":
    sys.exit(main())
