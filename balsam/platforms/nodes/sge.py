"""Grid Engine allocations: ``PE_HOSTFILE`` (parallel jobs) else this host; ``JOB_ID``."""

from __future__ import annotations

from typing import List, Mapping

from balsam.platforms.nodes.base import NodeAdapter, local_hostname, read_env_file
from balsam.platforms.nodes.nodelist import parse_pe_hostfile


class SGENodes(NodeAdapter):
    """Nodes of a Grid Engine job."""

    name = "sge"
    job_id_vars = ("JOB_ID",)

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """The PE host file's hosts, or this host."""
        if env.get("PE_HOSTFILE"):
            return parse_pe_hostfile(read_env_file(env, "PE_HOSTFILE"))
        return [local_hostname(env)]
