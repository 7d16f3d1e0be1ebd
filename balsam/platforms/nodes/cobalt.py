"""Cobalt allocations: ``COBALT_PARTNAME`` node ids on Theta (``3841-3843`` -> ``nid03841``...), else the
``COBALT_NODEFILE`` (ThetaGPU, Cooley); ``COBALT_JOBID``."""

from __future__ import annotations

from typing import List, Mapping

from balsam.exceptions import LauncherError
from balsam.platforms.nodes.base import NodeAdapter, read_env_file
from balsam.platforms.nodes.nodelist import parse_nodefile, parse_partname


class CobaltNodes(NodeAdapter):
    """Nodes of a Cobalt job."""

    name = "cobalt"
    job_id_vars = ("COBALT_JOBID",)

    def allocation_hosts(self, env: Mapping[str, str]) -> List[str]:
        """Theta node ids from the partition name, else the node file's hosts."""
        partname = env.get("COBALT_PARTNAME", "").strip()
        if partname and partname.replace("-", "").replace(",", "").isdigit():
            return parse_partname(partname)
        if env.get("COBALT_NODEFILE"):
            return parse_nodefile(read_env_file(env, "COBALT_NODEFILE"))
        if partname:
            return [partname]
        raise LauncherError("neither COBALT_PARTNAME nor COBALT_NODEFILE is set: is this running inside a Cobalt job?")
