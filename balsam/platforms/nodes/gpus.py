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

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from balsam.exceptions import ConfigError

if TYPE_CHECKING:
    from balsam.platforms.runner import CommandRunner

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


# ------------------------------------------------------------------------------------------------ detection
# Inside an allocation the scheduler says which GPUs are this job's through a visibility variable; outside one
# (a workstation) the vendor's tool lists them. Each tool's output is parsed by a pure function.
VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK")
_NO_GPUS = ("", "-1", "none", "nodevfiles", "void")


@dataclass(frozen=True)
class GPUDetection:
    """The GPUs found on this node: their ids, the variable that selects among them, and how they were found."""

    gpu_ids: Tuple[str, ...]
    gpu_env: str
    source: str

    def summary(self) -> str:
        """One line, e.g. ``2 GPUs (0,1) from nvidia-smi -L; jobs see CUDA_VISIBLE_DEVICES``."""
        if not self.gpu_ids:
            return f"no GPUs ({self.source})"
        n = len(self.gpu_ids)
        return f"{n} GPU{'s' if n != 1 else ''} ({','.join(self.gpu_ids)}) from {self.source}; jobs see {self.gpu_env}"


def parse_visible(value: str) -> List[str]:
    """``0,1`` / ``GPU-uuid,...`` / ``0.0,0.1`` -> ids; empty, ``-1`` or ``NoDevFiles`` -> none (pure)."""
    if value.strip().lower() in _NO_GPUS:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_nvidia_smi(text: str) -> List[str]:
    """``nvidia-smi -L`` lines ``GPU 0: NVIDIA H100 (UUID: ...)`` -> ``["0", ...]``; MIG lines are skipped (pure)."""
    return [m.group(1) for m in re.finditer(r"^GPU (\d+):", text, re.MULTILINE)]


def parse_rocm_smi(text: str) -> List[str]:
    """``rocm-smi --showid`` lines ``GPU[3] : Device ID: ...`` -> unique ids in order (pure)."""
    return list(dict.fromkeys(re.findall(r"^GPU\[(\d+)\]", text, re.MULTILINE)))


def parse_amd_smi(text: str) -> List[str]:
    """``amd-smi list`` blocks ``GPU: 0`` -> ``["0", ...]`` (pure)."""
    return list(dict.fromkeys(re.findall(r"^GPU:\s*(\d+)", text, re.MULTILINE)))


def parse_xpu_smi(text: str) -> List[str]:
    """``xpu-smi discovery`` table rows ``| 0 | Device Name: ...`` -> ``["0", ...]`` (pure)."""
    return list(dict.fromkeys(re.findall(r"^\|\s*(\d+)\s*\|\s*Device Name", text, re.MULTILINE)))


GPU_TOOLS: Tuple[Tuple[Tuple[str, ...], Callable[[str], List[str]], str], ...] = (
    (("nvidia-smi", "-L"), parse_nvidia_smi, "CUDA_VISIBLE_DEVICES"),
    (("rocm-smi", "--showid"), parse_rocm_smi, "ROCR_VISIBLE_DEVICES"),
    (("amd-smi", "list"), parse_amd_smi, "ROCR_VISIBLE_DEVICES"),
    (("xpu-smi", "discovery"), parse_xpu_smi, "ZE_AFFINITY_MASK"),
)


def detect_gpus(env: Mapping[str, str], runner: Optional["CommandRunner"] = None, timeout_s: float = 15.0) -> GPUDetection:
    """This node's GPUs: a visibility variable already set in ``env`` wins (an allocation's share); else the
    first of ``nvidia-smi -L``, ``rocm-smi``, ``amd-smi``, ``xpu-smi`` on PATH that lists GPUs; else none."""
    from balsam.platforms.runner import SubprocessRunner

    for var in VISIBILITY_VARS:
        if var in env:
            return GPUDetection(tuple(parse_visible(env[var])), var, f"{var}={env[var]}")
    runner = runner or SubprocessRunner()
    path = env.get("PATH", os.defpath)
    tried = []
    for argv, parse, var in GPU_TOOLS:
        exe = shutil.which(argv[0], path=path)
        if exe is None:
            continue
        try:
            result = runner.run([exe, *argv[1:]], env=dict(env), timeout_s=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{argv[0]}: {exc.__class__.__name__}")
            continue
        ids = parse(result.stdout) if result.returncode == 0 else []
        if ids:
            return GPUDetection(tuple(ids), var, " ".join(argv))
        tried.append(f"{' '.join(argv)} listed none")
    return GPUDetection((), "CUDA_VISIBLE_DEVICES", "; ".join(tried) or "no GPU tool on PATH")
