"""More processes serving the site agent's /v1 API on the same port (``api.workers``), so it uses more than one core.

One Python process serves requests on one core at most (one GIL), and hundreds of launchers on a facility's
login node need more. With ``api.workers: N`` (N > 1) the agent's own server and N - 1 worker processes each
listen on the agent's port with ``SO_REUSEPORT``, and the kernel spreads the launchers' connections over them.
What makes that safe is that nothing a request relies on lives in one process only:

- **replays**: the processes share one nonce table (:class:`balsam.db.nonces.SharedNonces`), so a request
  replayed to another process is refused as it is at the first;
- **exactly-once**: idempotent answers are in the site DB already, looked up and written inside the write
  transaction that does the work, so a retry that reaches another process gets the stored answer;
- **writes**: each process has its own connection and group writer; the site DB's writer lock (``flock`` and
  ``BEGIN IMMEDIATE``) serializes their transactions, as it does for every writer on the home host.

Workers start with ``spawn`` (the agent runs threads; forking a threaded process is unsafe), log to
``log/api-worker-<n>.log``, end when the agent ends (SIGTERM from :meth:`ApiWorkers.stop`, or the agent's death
seen by the worker), and are started again by the agent if one dies; its launchers reconnect and retry.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, List, Optional

from balsam.exceptions import ServiceError
from balsam.settings import ApiSettings

logger = logging.getLogger("balsam.http")

RESTART_DELAY_S = 1.0
"""Wait before starting a worker again after it died (a worker that dies at once is not restarted in a loop)."""
WORKER_LOG = "api-worker-{index}.log"


class ApiWorkers:
    """The agent's extra API processes: :meth:`start` them on ``port``, :meth:`stop` them; dead ones come back."""

    def __init__(self, root: Path, settings: ApiSettings, port: int, count: int, *, host: str, expiry_s: float,
                 not_before: float, log_level: str = "INFO") -> None:
        self.root = Path(root)
        self.settings = settings
        self.port = port
        self.count = count
        self.host = host
        self.expiry_s = expiry_s
        self.not_before = not_before
        self.log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: List[Optional[Any]] = [None] * count
        self._stop = threading.Event()
        self._monitor: Optional[threading.Thread] = None

    @property
    def pids(self) -> List[int]:
        """The running workers' process ids."""
        return [int(p.pid) for p in self._procs if p is not None and p.is_alive() and p.pid is not None]

    def start(self, timeout_s: float = 60.0) -> "ApiWorkers":
        """Start every worker and wait until each listens (ServiceError saying why one could not)."""
        ready = [self._spawn(i) for i in range(self.count)]
        deadline = time.monotonic() + timeout_s
        for i, conn in enumerate(ready):
            self._await_ready(i, conn, deadline)
        self._monitor = threading.Thread(target=self._watch, name="balsam-api-workers", daemon=True)
        self._monitor.start()
        return self

    def _spawn(self, index: int) -> Any:
        receiver, sender = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=serve_worker, name=f"balsam-api-worker-{index}", daemon=True,
            args=(str(self.root), self.settings, self.port, index, self.host, self.expiry_s, self.not_before, self.log_level,
                  os.getpid(), sender))
        proc.start()
        sender.close()
        self._procs[index] = proc
        return receiver

    def _await_ready(self, index: int, conn: Any, deadline: float) -> None:
        proc = self._procs[index]
        try:
            while not conn.poll(0.05):
                if proc is None or not proc.is_alive():
                    raise ServiceError(f"API worker {index} exited at start (see {self.root / 'log' / WORKER_LOG.format(index=index)})")
                if time.monotonic() > deadline:
                    raise ServiceError(f"API worker {index} did not start listening in time")
            error = conn.recv()
        except EOFError:
            error = "it exited at start"
        finally:
            conn.close()
        if error:
            raise ServiceError(f"API worker {index} could not serve on port {self.port}: {error}")

    def _watch(self) -> None:
        while not self._stop.wait(RESTART_DELAY_S):
            for i, proc in enumerate(self._procs):
                if self._stop.is_set():
                    return
                if proc is not None and not proc.is_alive():
                    logger.warning("API worker %d (pid %s) exited with %s: starting it again", i, proc.pid, proc.exitcode)
                    try:
                        self._await_ready(i, self._spawn(i), time.monotonic() + 60.0)
                    except ServiceError as exc:
                        logger.error("%s", exc)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End every worker (SIGTERM: each finishes the requests it is answering; SIGKILL after ``timeout_s``)."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=timeout_s)
        procs = [p for p in self._procs if p is not None]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def serve_worker(root: str, settings: ApiSettings, port: int, index: int, host: str, expiry_s: float, not_before: float,
                 log_level: str, parent_pid: int, ready: Any) -> None:
    """A worker process: serve the site's API on ``port`` (shared with the agent) until SIGTERM or the agent's death.
    Sends "" through ``ready`` once it listens, or why it cannot."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the agent's terminal stops the agent, which stops us
    site_root = Path(root)
    log_dir = site_root / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(log_dir / WORKER_LOG.format(index=index), maxBytes=10_000_000, backupCount=2)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(log_level)
    try:
        from balsam._api import sites
        from balsam.services.api_server import start_api_server

        server = start_api_server(site_root, sites.store_for(site_root), settings, host=host, expiry_s=expiry_s,
                                  worker_port=port, not_before=not_before)
    except BaseException as exc:  # told to the agent, which reports it
        logging.getLogger("balsam.http").exception("API worker %d failed to start", index)
        ready.send(f"{type(exc).__name__}: {exc}")
        ready.close()
        return
    ready.send("")
    ready.close()
    logging.getLogger("balsam.http").info("API worker %d (pid %d) serving on port %d", index, os.getpid(), port)
    try:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:  # the agent died without stopping us
                break
    finally:
        server.stop()


__all__ = ["ApiWorkers", "serve_worker"]
