"""LSF allocations: ``LSB_DJOB_HOSTFILE`` and ``LSB_JOBID``.

On Summit (CSM) the host file's first line is the batch (launch) node that runs the job script, followed by
each compute node once per slot; the launch node is skipped (``skip_launch_node``, the default).
"""

from __future__ import annotations

from typing import List, Mapping

from balsam.platforms.nodes.base import NodeAdapter, read_env_file
from balsam.platforms.nodes.nodelist import parse_nodefile


class LSFNodes(NodeAdapter):
    """Nodes of an LSF job."""

    name = "lsf"
    job_id_vars = ("LSB_JOBID",)

    def __init__(self, skip_launch_node: bool = True) -> None:
        self.skip_launch_node = skip_launch_node

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """The compute hosts of the host file, launch node skipped."""
        lines = [ln.strip() for ln in read_env_file(env, "LSB_DJOB_HOSTFILE").splitlines() if ln.strip()]
        if self.skip_launch_node and lines:
            launch = lines[0]
            lines = [ln for ln in lines[1:] if ln != launch]
        return parse_nodefile("\n".join(lines))
