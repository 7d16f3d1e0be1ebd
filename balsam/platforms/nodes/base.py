"""What a node adapter tells the launcher: the allocation's hosts, their CPUs and GPUs, and the job id.

Every function takes the environment as an explicit mapping (the launcher passes its own); nothing here
reads ``os.environ``. Files named by the environment (``PBS_NODEFILE`` and the like) are read when asked.

``BALSAM_LAUNCHER_NODES`` overrides every adapter's host list: the launcher sets it (comma-separated) for
the sub-launchers it starts on a partition of its allocation.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, List, Mapping, Optional, Sequence, Tuple

from balsam.exceptions import LauncherError
from balsam.platforms.nodes.gpus import node_gpu_ids
from balsam.platforms.nodes.nodelist import unique

PARTITION_VAR = "BALSAM_LAUNCHER_NODES"


@dataclass(frozen=True)
class ComputeNode:
    """One node of an allocation: its host name, CPU ids and GPU ids (``"0"`` or Intel tiles ``"0.1"``)."""

    hostname: str
    cpu_ids: Tuple[int, ...]
    gpu_ids: Tuple[str, ...]


def local_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        return len(getaffinity(0))
    return os.cpu_count() or 1


def local_hostname(env: Mapping[str, str]) -> str:
    """This host's name: ``BALSAM_HOSTNAME`` from ``env`` if given, else the system's host name."""
    return env.get("BALSAM_HOSTNAME") or socket.gethostname()


def read_env_file(env: Mapping[str, str], var: str) -> str:
    """The text of the file whose path ``env[var]`` holds; a clear LauncherError if it is missing."""
    path = env.get(var)
    if not path:
        raise LauncherError(f"{var} is not set: is this running inside a batch job?")
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise LauncherError(f"{var}={path}: cannot read the node file ({exc.strerror or exc})") from None


def job_id_from(text: str) -> Optional[int]:
    """The numeric part of a job id: ``1234.server`` or ``1234[5]`` -> 1234; None if there is none."""
    head = text.strip().split(".", 1)[0].split("[", 1)[0]
    return int(head) if head.isdigit() else None


class NodeAdapter(ABC):
    """Base of the node adapters, one per way a scheduler describes its allocation."""

    name: ClassVar[str] = ""
    job_id_vars: ClassVar[Tuple[str, ...]] = ()

    @abstractmethod
    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """The hosts the scheduler gave this job, in its order."""

    def hostnames(self, env: Mapping[str, str]) -> List[str]:
        """The hosts to use: ``BALSAM_LAUNCHER_NODES`` if set (a launcher partition), else the allocation's."""
        part = env.get(PARTITION_VAR, "").strip()
        if part:
            return unique(h.strip() for h in part.replace(" ", ",").split(","))
        hosts = self.allocation_hosts(env)
        if not hosts:
            raise LauncherError(f"{self.name}: the allocation lists no nodes")
        return hosts

    def scheduler_job_id(self, env: Mapping[str, str]) -> Optional[int]:
        """The batch job's id from the scheduler's variables; None outside a batch job."""
        for var in self.job_id_vars:
            if env.get(var):
                return job_id_from(env[var])
        return None

    def nodes(
        self,
        env: Mapping[str, str],
        *,
        cpus_per_node: Optional[int] = None,
        gpus_per_node: Optional[int] = None,
        gpu_ids: Sequence[str] = (),
    ) -> List[ComputeNode]:
        """The allocation's nodes with their CPU and GPU ids (CPUs default to this host's count)."""
        cpus = tuple(range(cpus_per_node if cpus_per_node else local_cpu_count()))
        gpus = tuple(node_gpu_ids(gpu_ids, gpus_per_node))
        return [ComputeNode(host, cpus, gpus) for host in self.hostnames(env)]
