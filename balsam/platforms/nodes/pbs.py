"""PBS allocations: the ``PBS_NODEFILE`` (a host per line, repeated per MPI slot) and ``PBS_JOBID``."""

from __future__ import annotations

from typing import List, Mapping

from balsam.platforms.nodes.base import NodeAdapter, read_env_file
from balsam.platforms.nodes.nodelist import parse_nodefile


class PBSNodes(NodeAdapter):
    """Nodes of a PBS job."""

    name = "pbs"
    job_id_vars = ("PBS_JOBID",)

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """The hosts of the PBS node file."""
        return parse_nodefile(read_env_file(env, "PBS_NODEFILE"))
