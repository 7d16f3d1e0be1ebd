"""The allocation as the launcher sees it: nodes from the platform's node adapter, the MPI launch line from the
settings, and which nodes are this host (those start jobs without an MPI launcher)."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
from typing import List, Mapping, Optional, Set

from balsam.launcher.base import LauncherConfig
from balsam.launcher.executor import Executor
from balsam.launcher.resources import ResourceManager
from balsam.platforms.mpi import AUTO, MPILauncher, get_mpi_launcher
from balsam.platforms.nodes import ComputeNode, get_node_adapter
from balsam.settings import LauncherSettings
from balsam.site.hardware import resolve_launcher_settings


def discover_nodes(ls: LauncherSettings, env: Mapping[str, str]) -> List[ComputeNode]:
    """The allocation's nodes, with their CPUs and GPUs (``launcher.node``, ``cpus_per_node``, ...)."""
    adapter = get_node_adapter(ls.node)
    return adapter.nodes(env, cpus_per_node=ls.cpus_per_node, gpus_per_node=ls.gpus_per_node, gpu_ids=ls.gpu_ids)


def short(host: str) -> str:
    return host.split(".", 1)[0]


def local_host_names(host: str) -> Set[str]:
    """Names under which an allocation's node list may name this host."""
    names = {host, socket.gethostname(), "localhost", "127.0.0.1"}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return names | {short(n) for n in names}


def mpi_launcher(ls: LauncherSettings) -> MPILauncher:
    """The MPI launch line the settings name (``auto`` is resolved here if the caller has not)."""
    if ls.mpi_launcher == AUTO:
        ls = resolve_launcher_settings(dataclasses.replace(ls, gpus_per_node=0), os.environ)[0]
    return get_mpi_launcher(ls.mpi_launcher, ls.mpi_executable, **ls.mpi_options)


def make_resource_manager(cfg: LauncherConfig, nodes: Optional[List[ComputeNode]] = None) -> ResourceManager:
    return ResourceManager([(n.hostname, n.cpu_ids, n.gpu_ids) for n in (nodes if nodes is not None else cfg.nodes)])


def job_base_env() -> dict:  # type: ignore[type-arg]
    """The environment jobs start from: the launcher's, without the launcher's own partition variables."""
    env = dict(os.environ)
    for var in ("BALSAM_LAUNCHER_NODES", "BALSAM_SERIAL_MASTER"):
        env.pop(var, None)
    return env


def make_executor(cfg: LauncherConfig, nodes: Optional[List[ComputeNode]] = None) -> Executor:
    """An executor for ``cfg`` on ``nodes`` (default: all of cfg's)."""
    ls = cfg.settings.launcher
    nodes = nodes if nodes is not None else cfg.nodes
    names = local_host_names(cfg.host)
    local = {n.hostname for n in nodes if n.hostname in names or short(n.hostname) in names}
    all_local = ls.node == "local" or ls.mpi_launcher == "local"
    log_dir = str(cfg.log_dir or cfg.layout.log)
    return Executor(
        mpi=mpi_launcher(ls), local_hosts=local, all_local=all_local, gpu_env=ls.gpu_env or "CUDA_VISIBLE_DEVICES",
        env=job_base_env(),
        home=str(cfg.root), log_dir=log_dir, error_tail_num_lines=ls.error_tail_num_lines,
        error_tail_max_bytes=ls.error_tail_max_bytes,
        python_exe=ls.python_exe or sys.executable, pylib=cfg.layout.state / "pylib",
        max_workers=max(len(n.cpu_ids) for n in nodes), kill_grace_s=cfg.kill_grace_s,
        kill_orphans=ls.kill_orphans, guarded=cfg.guarded,
    )
