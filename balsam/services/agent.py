"""The site agent: the composition root that reads settings.yml and runs the site's services.

``balsam site start`` runs :func:`start_agent`, which starts ``balsam service run --site PATH`` as a
detached process and waits until it reports itself running. That process (:func:`run_agent`) holds the PID
file (a second agent is refused; a stale file from a crash is taken over), logs to ``log/service.log`` (the name Balsam's docs use), runs
each service on its own thread with the shared loop, writes its health to ``.balsam/agent.json`` for
``balsam site status``, and on SIGTERM/SIGINT stops the services and releases their leases. Work survives a
crash: every step is a committed state in the site DB, and leases of a dead agent are released at once.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional

from balsam import __version__
from balsam._api import sites as _sites
from balsam.exceptions import ConfigError, ServiceError
from balsam.pidfile import pid_file, pid_file_held, read_pid
from balsam.runtime import balsam_argv, subprocess_env
from balsam.services.base import Service, ServiceThread
from balsam.settings import SiteSettings, load_settings
from balsam.site import (
    SiteLayout,
    check_site_settings,
    refresh_site_row,
    reread_settings,
    settings_stamp,
    site_identity,
    this_host,
)
from balsam.site.agent_state import agent_status as agent_status  # read by balsam site status and the dashboard
from balsam.site.agent_state import disk_state, pid_path, status_path
from balsam.site.agent_state import read_status as read_status

logger = logging.getLogger("balsam.agent")
STATUS_PERIOD_S = 2.0
STOP_S = 8.0
"""How long a stopping agent waits for its services to finish what they hold (hooks hand theirs back after
``processing.STOP_GRACE_S``); a service still busy then (a hung scheduler command) is left to the process's end."""


AGENT_LOG = "service.log"
"""The agent's log in ``log/`` (Balsam 0.7's docs find it as ``service*.log``)."""


def build_services(site: _sites.SiteRef, settings: SiteSettings, host: str, env: Mapping[str, str]) -> List[Service]:
    """Every service the settings ask for, each given its own section, this host's name and the agent's
    environment (read once, by :func:`run_agent`)."""
    from balsam.services.file_cleaner import FileCleanerService
    from balsam.services.processing import ProcessingService
    from balsam.services.scheduler import SchedulerService
    from balsam.site.submission import scheduler_for

    sched = settings.scheduler
    adapter = scheduler_for(site.layout, sched)
    services: List[Service] = [
        ProcessingService(site, settings.processing, settings.session, host, balsam_home=env.get("BALSAM_HOME")),
        SchedulerService(site, sched, adapter),
    ]
    if settings.file_cleaner is not None:  # file_cleaner: null turns it off, as in Balsam 0.7
        services.append(FileCleanerService(site, settings.file_cleaner))
    if settings.transfers.transfer_locations:
        from balsam.services.transfers import TransferService

        services.append(TransferService(site, settings.transfers, env=env))
    if settings.queue_maintainer is not None:
        from balsam.services.queue_maintainer import QueueMaintainerService

        services.append(QueueMaintainerService(site, settings.queue_maintainer))
    if settings.elastic_queue:
        from balsam.services.elastic import ElasticQueueService

        services.append(ElasticQueueService(site, settings.elastic_queue))
    return services


def _setup_logging(layout: SiteLayout) -> None:
    layout.log.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(layout.log / AGENT_LOG, maxBytes=10_000_000, backupCount=5)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.raiseExceptions = False  # a log that cannot be written (a full disk): no traceback per message in agent.out


_last_write_error = [0.0]


def _write_status(layout: SiteLayout, node: str, threads: List[ServiceThread], started: float, running: bool, api_url: str = "",
                  settings_error: str = "") -> bool:
    """Write the agent's health for ``site status``. A failed write (a full disk) is logged, at most once a
    minute, and never stops the agent: its services keep serving what they can."""
    status = {
        "pid": os.getpid(), "host": node, "version": __version__, "started": started, "updated": time.time(),
        "running": running, "services": {t.service.name: t.health() for t in threads}, "api_url": api_url,
        "disk": disk_state(layout.root),
    }
    if settings_error:
        status["settings_error"] = settings_error
    tmp = status_path(layout).with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, status_path(layout))
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if time.time() - _last_write_error[0] > 60:
            _last_write_error[0] = time.time()
            logger.error("cannot write the agent status %s (%s); the agent goes on", status_path(layout), exc.strerror or exc)
        return False
    return True


def run_agent(site_root: Path) -> int:
    """Run the agent in this process until SIGTERM/SIGINT; returns the exit code."""
    root = Path(site_root).resolve()
    layout = SiteLayout(root)
    _setup_logging(layout)
    stop = threading.Event()
    with pid_file(pid_path(layout)):
        stamp = settings_stamp(layout)
        settings = load_settings(layout.settings_path)
        logging.getLogger().setLevel(settings.logging.level)
        check_site_settings(root, settings)
        applied = _sites.store_for(root).migrate()  # the agent is one of the two places a schema is upgraded
        if applied:
            logger.info("migrated the site DB: %s", ", ".join(applied))
        site = _sites.ref_for_root(root)
        host, node, env = this_host(), socket.gethostname(), dict(os.environ)
        if site.host != host:
            raise ServiceError(f"site {site.name} belongs to host {site.host}; start its agent there")
        refresh_site_row(site.store, settings, stamp)
        _sites.use_site(root)  # hooks that create jobs default to this site
        services = build_services(site, settings, host, env)
        generation = threading.Event()  # set to stop this generation of services (a settings change or the end)

        def on_signal(signum: int, _frame: Any) -> None:
            logger.info("received %s: stopping", signal.Signals(signum).name)
            stop.set()
            generation.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        threads = [ServiceThread(s, generation) for s in services]
        started = time.time()
        logger.info("agent %s starting on %s for site %s (%s): %s", __version__, host, site.name, root,
                    ", ".join(s.name for s in services))
        for t in threads:
            t.start()
        from balsam.services.sync import LinkFollower

        relay = LinkFollower(site, settings.sync.period_s)  # syncs while the site is linked ('balsam site link' / 'unlink' need no restart)
        relay.check()
        # Every other host (login nodes, compute nodes) reaches the DB through the /v1 API (DESIGN.md section 3).
        from balsam.services.api_server import start_api_server

        bad_stamp = settings_error = ""
        try:
            api = start_api_server(root, site.store, settings.api, host=host, expiry_s=settings.session.expiry_s)
        except BaseException:
            stop.set()
            generation.set()
            relay.stop()
            for t in threads:
                t.join(timeout=60)
            raise
        logger.info("API listening at %s", api.url)
        try:
            _write_status(layout, node, threads + relay.threads(), started, True, api.url)
            while not stop.wait(STATUS_PERIOD_S):
                moved = _moved(site)
                if moved is not None:  # 'balsam site link' gave the site a new id: its services take it up
                    logger.info("the site's id changed from %s to %s (balsam site link moved it): restarting the services "
                                "with the new id", site.id, moved.id)
                    generation.set()
                    relay.stop()
                    for t in threads:
                        t.join(timeout=60)
                    site = moved
                    _sites.use_site(root)
                    relay = LinkFollower(site)
                    generation = threading.Event()
                    threads = [ServiceThread(s, generation) for s in build_services(site, settings, host, env)]
                    for t in threads:
                        t.start()
                relay.check()
                new_stamp = settings_stamp(layout)
                if new_stamp != stamp and new_stamp != bad_stamp:
                    try:  # settings.yml is the truth: an edit takes effect without a restart (whoever saw it first)
                        new_settings = reread_settings(site.store, layout, new_stamp)
                    except ConfigError as exc:
                        bad_stamp, settings_error = new_stamp, f"{exc} (the agent runs on the last good settings)"
                        logger.error("settings.yml changed but is invalid; still running on the last good settings: %s", exc)
                    else:
                        stamp, settings_error = new_stamp, ""
                        if new_settings != settings:
                            logger.info("settings.yml changed: restarting the services with the new settings")
                            generation.set()
                            for t in threads:
                                t.join(timeout=60)
                            settings = new_settings
                            generation = threading.Event()
                            threads = [ServiceThread(s, generation) for s in build_services(site, settings, host, env)]
                            for t in threads:
                                t.start()
                _write_status(layout, node, threads + relay.threads(), started, True, api.url, settings_error)
        finally:
            api.stop()
        generation.set()
        sync_threads = relay.threads()
        relay.stop()
        deadline = time.monotonic() + STOP_S
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [t.service.name for t in threads if t.is_alive()]
        if stuck:  # e.g. a scheduler command that hangs: a BatchJob's interrupted submission is recovered at the next start
            logger.warning("stopping without waiting longer for %s (still busy after %g s)", ", ".join(stuck), STOP_S)
        _write_status(layout, node, threads + sync_threads, started, False)
        logger.info("agent stopped")
    return 0


def _moved(site: _sites.SiteRef) -> Optional[_sites.SiteRef]:
    """The site afresh when its id in the DB is no longer the one the agent runs with (None otherwise)."""
    site_id, _name = site_identity(site.store)
    return _sites.reidentify(site.path) if site_id != site.id else None


def start_agent(site_root: Path, timeout_s: float = 30.0) -> int:
    """Start the agent of a site as a background process; returns its pid once it runs."""
    root = Path(site_root).resolve()
    layout = SiteLayout(root)
    if pid_file_held(pid_path(layout)):
        raise ServiceError(f"the site agent is already running (pid {read_pid(pid_path(layout))})")
    if layout.state.is_dir() and not os.access(layout.state, os.W_OK):  # a read-only mount, or another user's site
        raise ServiceError(f"site {root} is read-only ({layout.state} is not writable): the agent records the jobs' "
                           "progress there and cannot run; reads work, or make the site directory writable")
    status_path(layout).unlink(missing_ok=True)
    layout.log.mkdir(parents=True, exist_ok=True)
    with open(layout.log / "agent.out", "ab") as out:
        proc = subprocess.Popen([*balsam_argv(), "service", "run", "--site", str(root)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(root), env=subprocess_env())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(layout)
        if status.get("pid") == proc.pid and status.get("running"):
            return proc.pid
        if proc.poll() is not None:
            raise ServiceError(f"the site agent exited at start: {_last_error(layout)}")
        time.sleep(0.05)
    raise ServiceError(f"the site agent did not report running within {timeout_s:g} s (see {layout.log / AGENT_LOG})")


def _last_error(layout: SiteLayout) -> str:
    for name in ("agent.out", AGENT_LOG):
        try:
            lines = [ln for ln in (layout.log / name).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        for line in reversed(lines):
            if "Error" in line or "ERROR" in line:
                return line.strip().removeprefix("Error: ")[-500:]  # the CLI's own prefix is added again by the caller's
    return f"see {layout.log / AGENT_LOG}"


def stop_agent(site_root: Path, timeout_s: float = 60.0) -> Optional[int]:
    """Stop the site's agent (SIGTERM, then SIGKILL after ``timeout_s``); returns its pid, or None if not running."""
    layout = SiteLayout(Path(site_root).resolve())
    path = pid_path(layout)
    if not pid_file_held(path):
        return None
    pid = read_pid(path)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_file_held(path):
            if time.monotonic() > deadline:
                logger.warning("the site agent (pid %d) did not stop within %g s: killing it", pid, timeout_s)
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass
    return pid
