"""This host only (laptops, workstations, the local scheduler)."""

from __future__ import annotations

from typing import List, Mapping

from balsam.platforms.nodes.base import NodeAdapter, local_hostname


class LocalNodes(NodeAdapter):
    """One node: this host. The job id is the local scheduler's (``BALSAM_LOCAL_JOB_ID``, the batch job's PID)."""

    name = "local"
    job_id_vars = ("BALSAM_LOCAL_JOB_ID",)

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """This host."""
        return [local_hostname(env)]
