"""Slurm allocations: ``SLURM_JOB_NODELIST`` (host-list syntax) and ``SLURM_JOB_ID``."""

from __future__ import annotations

from typing import List, Mapping

from balsam.exceptions import LauncherError
from balsam.platforms.nodes.base import NodeAdapter
from balsam.platforms.nodes.nodelist import expand_hostlist


class SlurmNodes(NodeAdapter):
    """Nodes of a Slurm job."""

    name = "slurm"
    job_id_vars = ("SLURM_JOB_ID", "SLURM_JOBID")

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """The expanded Slurm node list."""
        expr = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not expr:
            raise LauncherError("SLURM_JOB_NODELIST is not set: is this running inside a Slurm job?")
        return expand_hostlist(expr)
