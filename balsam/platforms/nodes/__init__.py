"""Node adapters, chosen by short name (``launcher.node`` in settings.yml): ``get_node_adapter("pbs")``.

========  ===========================================================================
name      reads
========  ===========================================================================
local     this host
hostlist  ``BALSAM_LAUNCHER_NODES``
slurm     ``SLURM_JOB_NODELIST``, ``SLURM_JOB_ID``
pbs       ``PBS_NODEFILE``, ``PBS_JOBID``
cobalt    ``COBALT_PARTNAME`` or ``COBALT_NODEFILE``, ``COBALT_JOBID``
lsf       ``LSB_DJOB_HOSTFILE`` (launch node skipped), ``LSB_JOBID``
sge       ``PE_HOSTFILE``, ``JOB_ID``
========  ===========================================================================
"""

from __future__ import annotations

from typing import Dict, List, Type

from balsam.exceptions import ConfigError
from balsam.platforms.nodes.base import ComputeNode, NodeAdapter, local_cpu_count
from balsam.platforms.nodes.cobalt import CobaltNodes
from balsam.platforms.nodes.gpus import GPU_ENV_VARS, default_gpu_ids, gpu_visibility_env
from balsam.platforms.nodes.hostlist import HostListNodes
from balsam.platforms.nodes.local import LocalNodes
from balsam.platforms.nodes.lsf import LSFNodes
from balsam.platforms.nodes.nodelist import expand_hostlist, parse_nodefile, parse_partname
from balsam.platforms.nodes.pbs import PBSNodes
from balsam.platforms.nodes.sge import SGENodes
from balsam.platforms.nodes.slurm import SlurmNodes

NODE_ADAPTERS: Dict[str, Type[NodeAdapter]] = {
    cls.name: cls for cls in (LocalNodes, HostListNodes, SlurmNodes, PBSNodes, CobaltNodes, LSFNodes, SGENodes)
}

__all__ = [
    "GPU_ENV_VARS",
    "NODE_ADAPTERS",
    "ComputeNode",
    "NodeAdapter",
    "default_gpu_ids",
    "expand_hostlist",
    "get_node_adapter",
    "gpu_visibility_env",
    "local_cpu_count",
    "node_adapter_names",
    "parse_nodefile",
    "parse_partname",
]


def node_adapter_names() -> List[str]:
    """The short names ``launcher.node`` accepts."""
    return sorted(NODE_ADAPTERS)


def get_node_adapter(name: str) -> NodeAdapter:
    """Build the node adapter named ``name``."""
    cls = NODE_ADAPTERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown node adapter {name!r} (known: {', '.join(node_adapter_names())})")
    return cls()
