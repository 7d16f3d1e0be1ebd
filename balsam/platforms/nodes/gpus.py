"""GPU identifiers and the environment variable that makes them visible to an application.

=========================  ==============================================================================
variable                   machines
=========================  ==============================================================================
CUDA_VISIBLE_DEVICES       NVIDIA (Polaris, ThetaGPU, Perlmutter, Summit); ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is
                           set too so ids match ``nvidia-smi``
ROCR_VISIBLE_DEVICES       AMD ROCm (Frontier: 8 GCDs per node)
HIP_VISIBLE_DEVICES        AMD HIP (an alternative on ROCm machines)
ZE_AFFINITY_MASK           Intel Level Zero (Aurora, Sunspot): whole GPUs ``0,1`` or tiles ``0.0,0.1``
=========================  ==============================================================================
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from balsam.exceptions import ConfigError

GPU_ENV_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")


def default_gpu_ids(gpus_per_node: int, tiles_per_gpu: int = 1) -> List[str]:
    """``0..n-1``, or Intel tile ids ``g.t`` when each GPU has several tiles (pure)."""
    if tiles_per_gpu <= 1:
        return [str(i) for i in range(gpus_per_node)]
    return [f"{g}.{t}" for g in range(gpus_per_node) for t in range(tiles_per_gpu)]


def node_gpu_ids(gpu_ids: Sequence[str], gpus_per_node: Optional[int]) -> List[str]:
    """The GPU ids of one node: the settings' explicit list, else ``0..gpus_per_node-1`` (pure)."""
    if gpu_ids:
        if gpus_per_node is not None and gpus_per_node != len(gpu_ids):
            raise ConfigError(f"launcher.gpu_ids lists {len(gpu_ids)} GPUs but launcher.gpus_per_node is {gpus_per_node}")
        return [str(g) for g in gpu_ids]
    return default_gpu_ids(gpus_per_node or 0)


def gpu_visibility_env(gpu_env: str, gpu_ids: Sequence[str]) -> Dict[str, str]:
    """Environment variables restricting an application to ``gpu_ids`` (pure); {} when there are none."""
    if gpu_env not in GPU_ENV_VARS:
        raise ConfigError(f"launcher.gpu_env: unknown GPU variable {gpu_env!r} (use one of {', '.join(GPU_ENV_VARS)})")
    if not gpu_ids:
        return {}
    value = ",".join(str(g) for g in gpu_ids)
    env = {gpu_env: value}
    if gpu_env == "CUDA_VISIBLE_DEVICES":
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env
