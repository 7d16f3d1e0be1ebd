"""The launcher: the pilot that runs inside a batch allocation (or on a laptop) and turns runnable jobs into
running processes.

Modules, one concept each:

=================  ==========================================================================================
``resources``      the allocation's nodes, CPUs and GPUs; placement (first fit, packing, whole nodes)
``tasks``          apps loaded from the site; an acquired job rendered into a task
``spawn``          starting processes fast (``posix_spawn`` in the workdir), output tails, Balsam subprocesses
``executor``       starting tasks (directly, through the MPI launch line, or in warm Python workers), reaping,
                   killing
``pyworker``       warm Python workers (``python -m balsam.launcher.pyworker``)
``pyrun``          the one-shot Python runner for MPI ranks and other interpreters
``pyexec``         calling ``run()`` and capturing its value or exception
``transport``      direct SQLite on the home host, else the site agent's /v1 HTTP API (``remote``)
``base``           what both modes share: lease, status updates, wall time, stopping
``mpi_mode``       one head-node process starts every job
``serial_mode``    a master feeding one worker per node (``serial_worker``, ``links``)
``partitions``     ``-p MODE:N:k=v``: sub-launchers on shares of the allocation
=================  ==========================================================================================

Run it with ``balsam launcher -j MODE -t MIN`` (what the job template does), ``python -m balsam.launcher``,
or :func:`run_launcher`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from balsam.db.batch_jobs import JOB_MODES
from balsam.exceptions import ConfigError, SiteNotFound

__all__ = ["JOB_MODES", "run_launcher"]

logger = logging.getLogger("balsam.launcher")


def _setup_logging(log_dir: Path, mode: str) -> List[logging.Handler]:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handlers: List[logging.Handler] = []
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        fh = logging.FileHandler(log_dir / f"{mode}_mode_{stamp}_{os.getpid()}.log")  # Balsam's names: mpi_mode*.log
        fh.setFormatter(fmt)
        handlers.append(fh)
    except OSError:
        pass
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    handlers.append(sh)
    root = logging.getLogger("balsam")
    for h in handlers:
        root.addHandler(h)
    logging.raiseExceptions = False  # a log file that cannot be written (a full disk): no traceback per message on stderr
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handlers


def run_launcher(
    site_root: Path,
    *,
    job_mode: str,
    wall_time_min: float,
    filter_tags: Dict[str, str] = {},  # noqa: B006 - read only
    partitions: List[str] = [],  # noqa: B006 - read only
    batch_job_id: Optional[int] = None,
    idle_ttl_s: Optional[float] = None,
    serial_workers: str = "auto",
    env: Optional[Mapping[str, str]] = None,
) -> int:
    """Run a launcher on the site at ``site_root`` until it stops; returns the exit code.

    ``job_mode`` is ``mpi`` or ``serial``; ``wall_time_min`` the time the allocation has (the launcher stops a
    little before it, timing out what still runs); ``filter_tags`` limits it to jobs with those tags;
    ``partitions`` (``MODE:N[:k=v,...]``) splits the allocation into sub-launchers; ``idle_ttl_s`` overrides
    ``launcher.idle_ttl_s``. ``serial_workers`` (``auto``, ``thread``, ``process``) says where serial mode's
    node worker runs when there is one node. ``env`` is the environment the node adapter reads (default: this
    process's).

    Raises ConfigError, SiteNotFound or LauncherError if the launcher cannot start. Exit codes: 0 after a
    normal stop (idle, wall time), 128+N after signal N, 1 after an error.
    """
    from balsam.launcher.base import LauncherConfig
    from balsam.launcher.nodes import discover_nodes
    from balsam.launcher.partitions import parse_partition, run_partitions
    from balsam.launcher.spawn import set_home
    from balsam.launcher.transport import choose_transport
    from balsam.launcher.watchdog import BENCH_UNGUARDED_ENV
    from balsam.settings import load_settings
    from balsam.site import SiteLayout, this_host
    from balsam.site.hardware import resolve_launcher_settings

    if job_mode not in JOB_MODES:
        raise ConfigError(f"job mode must be one of {', '.join(JOB_MODES)}, not {job_mode!r}")
    if not wall_time_min or wall_time_min <= 0:
        raise ConfigError(f"the wall time must be positive minutes, not {wall_time_min!r}")
    if serial_workers not in ("auto", "thread", "process"):
        raise ConfigError(f"serial workers must be auto, thread or process, not {serial_workers!r}")
    root = Path(site_root).expanduser().resolve()
    layout = SiteLayout(root)
    if not layout.settings_path.is_file() or not layout.state.is_dir():
        raise SiteNotFound(f"{root} is not a Balsam site (no settings.yml and .balsam/ there)")
    settings = load_settings(layout.settings_path)
    parts = [parse_partition(p) for p in partitions]
    host = this_host()
    environ = dict(os.environ if env is None else env)
    handlers = _setup_logging(layout.log, "partitions" if parts else job_mode)
    logging.getLogger("balsam").setLevel(settings.logging.level)
    try:
        resolved, notes = resolve_launcher_settings(settings.launcher, environ)
        for note in notes:
            (logger.warning if note.startswith("warning:") else logger.info)("%s", note)
        settings = dataclasses.replace(settings, launcher=resolved)
        nodes = discover_nodes(settings.launcher, environ)
        ttl = settings.launcher.idle_ttl_s if idle_ttl_s is None else float(idle_ttl_s)
        if parts:
            logger.info("launcher on %s: %d partitions over %d nodes", host, len(parts), len(nodes))
            return run_partitions(root, parts, nodes, wall_time_min=wall_time_min, filter_tags=dict(filter_tags),
                                  batch_job_id=batch_job_id, idle_ttl_s=ttl)
        transport = choose_transport(root, host)
        logger.info("launcher on %s for site %s: transport %s", host, transport.site_name, transport.describe())
        set_home(root)
        cfg = LauncherConfig(root=root, settings=settings, job_mode=job_mode, wall_time_min=float(wall_time_min), host=host,
                             nodes=nodes, filter_tags=dict(filter_tags), batch_job_id=batch_job_id, idle_ttl_s=ttl,
                             guarded=environ.get(BENCH_UNGUARDED_ENV) != "1")
        try:
            if job_mode == "mpi":
                from balsam.launcher import mpi_mode

                return mpi_mode.build(cfg, transport).run()
            from balsam.launcher import serial_mode

            in_process = {"auto": None, "thread": True, "process": False}[serial_workers]
            return serial_mode.build(cfg, transport, in_process=in_process).run()
        finally:
            transport.close()
    finally:
        for h in handlers:
            logging.getLogger("balsam").removeHandler(h)
            try:
                h.close()
            except OSError:  # a full disk: the log's last lines are lost, the exit code and results are not
                pass
