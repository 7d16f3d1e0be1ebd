"""A plain host list in ``BALSAM_LAUNCHER_NODES`` (comma or space separated), for machines without a
scheduler-provided list or for tests."""

from __future__ import annotations

from typing import List, Mapping

from balsam.exceptions import LauncherError
from balsam.platforms.nodes.base import PARTITION_VAR, NodeAdapter
from balsam.platforms.nodes.nodelist import unique


class HostListNodes(NodeAdapter):
    """The hosts named in ``BALSAM_LAUNCHER_NODES``."""

    name = "hostlist"
    job_id_vars = ("BALSAM_BATCH_JOB_ID",)

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """The hosts in ``BALSAM_LAUNCHER_NODES``."""
        text = env.get(PARTITION_VAR, "")
        if not text.strip():
            raise LauncherError(f"{PARTITION_VAR} is not set: the hostlist node adapter needs the hosts there")
        return unique(h for h in text.replace(",", " ").split())
