"""What a launcher started on this node would use: the settings' ``launcher`` section with what the node itself says
filled in (the MPI on PATH for ``mpi_launcher: auto``, the GPUs of a ``local`` node). The launcher resolves its
settings with :func:`resolve_launcher_settings`; ``balsam which`` shows the same answer without starting one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple

from balsam.platforms.runner import CommandRunner
from balsam.settings import LauncherSettings

__all__ = ["resolve_launcher_settings"]


def resolve_launcher_settings(ls: LauncherSettings, env: Mapping[str, str],
                              runner: Optional[CommandRunner] = None) -> Tuple[LauncherSettings, List[str]]:
    """The launcher settings with what the node itself says filled in, and a line per thing found (for the log):
    ``mpi_launcher: auto`` becomes the MPI on PATH (Open MPI's ``allow_run_as_root`` only when running as root);
    on a ``local`` node with neither ``gpus_per_node`` nor ``gpu_ids`` set, the GPUs are found (visibility
    variables, then nvidia-smi / rocm-smi / amd-smi / xpu-smi). What the settings say explicitly wins."""
    from balsam.platforms.mpi.detect import check_named_launcher, resolve_mpi
    from balsam.platforms.nodes.gpus import detect_gpus

    notes: List[str] = []
    name, exe, opts, found = resolve_mpi(ls.mpi_launcher, ls.mpi_executable, ls.mpi_options, env, runner=runner)
    if found is not None:
        notes.append(f"MPI: {found.summary()} (launcher.mpi_launcher: auto)")
    else:
        warning = check_named_launcher(ls.mpi_launcher, ls.mpi_executable, env, runner)
        if warning:
            notes.append(f"warning: {warning}")
    changes: Dict[str, Any] = {"mpi_launcher": name, "mpi_executable": exe, "mpi_options": opts}
    gpu_env = ls.gpu_env
    if ls.node == "local" and ls.gpus_per_node is None and not ls.gpu_ids:
        gpus = detect_gpus(env, runner)
        notes.append(f"GPUs: {gpus.summary()}")
        changes.update(gpus_per_node=len(gpus.gpu_ids), gpu_ids=list(gpus.gpu_ids))
        gpu_env = gpu_env or gpus.gpu_env
    changes["gpu_env"] = gpu_env or "CUDA_VISIBLE_DEVICES"
    return dataclasses.replace(ls, **changes), notes
