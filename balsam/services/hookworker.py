"""The processing service's hook workers: separate processes that run app hooks in each job's workdir.

Balsam runs ``preprocess``, ``postprocess``, ``handle_error`` and ``handle_timeout`` with the working
directory set to the job's workdir (created if missing), the hook's stdout and stderr appended to
``balsam.log`` there. The working directory belongs to a process, not a thread, so hooks run in a pool of
worker processes (which also lets hook-heavy workflows use more than one core). A worker loads the app by id
(reloaded when re-synced), binds a fresh app instance to the job, runs the hook, and hands back what the hook
changed; the service saves the results of a batch together.

Workers start with ``spawn`` (the agent runs threads; forking a threaded process is unsafe) and import
nothing but Balsam and the app's own code.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

HookResult = Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]
"""(changed fields incl. state, state_data and state_timestamp; or None) and (a FAILED event's data; or None)."""

LOG_NAME = "balsam.log"

_site_path: Optional[Path] = None
_agent_pid = 0
"""The site agent that started this worker (0: none to watch)."""


PARENT_CHECK_S = 0.25
"""How often a worker checks that the agent that started it is alive."""

RECORDS = "hook-workers"
"""Folder of the site's state folder where each hook worker notes the job whose hook it runs (a file named by its pid)."""


def record_path(state_dir: Path, pid: int) -> Path:
    """Where hook worker ``pid`` notes the job whose hook it runs: read when the worker died, to tell its job (whose
    hook killed it, or was cut short by the OOM killer) from the jobs of the other workers that the pool stopped."""
    return state_dir / RECORDS / str(pid)


def job_of(state_dir: Path, pid: int) -> Optional[int]:
    """The job whose hook worker ``pid`` began last (None if unknown)."""
    try:
        return int(record_path(state_dir, pid).read_text())
    except (OSError, ValueError):
        return None


def _note(job_id: int) -> None:
    """Note that this worker now runs ``job_id``'s hook (see :func:`record_path`); best effort (a full disk)."""
    from balsam.site.layout import SiteLayout

    assert _site_path is not None
    path = record_path(SiteLayout(_site_path).state, os.getpid())
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(job_id).encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def init_worker(site_path: str, balsam_home: Optional[str], agent_pid: int = 0) -> None:
    """Pool initializer: remember the site; start in its directory, as the agent does; end when the agent
    ``agent_pid`` ends, however it ends."""
    global _site_path, _agent_pid
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the agent's terminal is for the agent (it stops us)
    if agent_pid:
        _agent_pid = agent_pid
        _exit_with(agent_pid)
    if balsam_home:
        os.environ["BALSAM_HOME"] = balsam_home
    _site_path = Path(site_path)
    os.chdir(site_path)


def _exit_with(agent_pid: int) -> None:
    """End this worker as soon as the agent is gone. An agent killed with SIGKILL cannot stop its pool, and the
    workers would live on, one set per crash, holding the site DB open; one that was running a hook would go on
    with it while the next agent runs the same hook again (it gets the job back once the dead agent's lease
    ends). A daemon thread polls the parent pid: it works whichever thread of the agent started the worker
    (``PR_SET_PDEATHSIG`` fires when that thread ends, not the process) and on every OS."""

    def watch() -> None:
        while os.getppid() == agent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # the hook in progress, if any, ends here; its job is handed back by the lease (documented)

    threading.Thread(target=watch, name="balsam-agent-watch", daemon=True).start()


@contextmanager
def in_workdir(workdir: Path, log_name: str = LOG_NAME) -> Iterator[None]:
    """Run the body with cwd = ``workdir`` (created if missing) and fds 1 and 2 appended to ``balsam.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    log_fd = os.open(str(workdir / log_name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.chdir(workdir)
        yield
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.chdir(previous)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, log_fd):
                os.close(fd)


def run_hook(job_row: Sequence[Any], hook: str, again: str = "") -> HookResult:
    """Run ``hook`` of the job given as a row of Job columns; see :data:`HookResult`. ``again``: why the hook runs
    again (its last run was cut short), for the job's log. The worker's note of the job is removed once the hook
    ends, so a note left in :data:`RECORDS` names a hook cut short (see :func:`cut_short_notes`)."""
    try:
        return _run_hook(job_row, hook, again)
    finally:
        # Kept when the agent is gone: the result goes nowhere and the next agent runs the hook again, saying why.
        if _agent_pid == 0 or os.getppid() == _agent_pid:
            assert _site_path is not None
            from balsam.site.layout import SiteLayout

            record_path(SiteLayout(_site_path).state, os.getpid()).unlink(missing_ok=True)


def cut_short_notes(state_dir: Path) -> Dict[int, int]:
    """{job id: pid} of the hooks whose workers ended before the hook did (an agent killed or stopped while they
    ran): their notes are still there. Read before a new pool of workers starts (it clears them)."""
    out: Dict[int, int] = {}
    folder = state_dir / RECORDS
    for path in folder.iterdir() if folder.is_dir() else []:
        job_id = job_of(state_dir, int(path.name)) if path.name.isdigit() else None
        if job_id is not None:
            out[job_id] = int(path.name)
    return out


def _run_hook(job_row: Sequence[Any], hook: str, again: str) -> HookResult:
    from balsam._api import rerun
    from balsam._api import sites as _sites
    from balsam._api.app import ApplicationDefinition
    from balsam._api.jobs import Job
    from balsam.db.states import is_legal

    assert _site_path is not None, "init_worker was not called"
    site = _sites.ref_for_root(_site_path)
    job = Job._from_row(site, job_row)
    job_id = int(job.id or 0)
    _note(job_id)
    src = str(job.state)
    try:
        cls = ApplicationDefinition.load_by_id(job.app_id, site=site)
    except Exception as exc:
        return None, {"message": f"app {job.app_id} could not be loaded: {exc}"}
    workdir = job.resolve_workdir()
    try:
        with in_workdir(workdir):
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} job {job_id}: {cls.__name__}.{hook} ({src}){again and ', ' + again}",
                  flush=True)
            try:
                with rerun.hook_running(job_id):  # the jobs it made before, asked for again, are those jobs
                    getattr(cls(job), hook)()
            finally:
                sys.stdout.flush()
    except Exception as exc:
        tb = traceback.format_exc(limit=-8)
        try:
            with open(workdir / LOG_NAME, "a") as log:
                log.write(tb)
        except OSError:
            pass
        return None, {"message": f"{hook} hook raised {type(exc).__name__}: {exc}", "exception": tb[-4000:]}
    dst = str(job.state)
    if dst == src:
        return None, {"message": f"{cls.__name__}.{hook} left the job in {src}; a hook must set job.state"}
    if not is_legal(src, dst):
        return None, {"message": f"{cls.__name__}.{hook} set an illegal state {src} -> {dst}"}
    changed = job._changed_fields()
    for extra in ("state_data", "state_timestamp"):
        value = job.__dict__.get(extra)
        if value is not None:
            changed[extra] = value
    return changed, None
