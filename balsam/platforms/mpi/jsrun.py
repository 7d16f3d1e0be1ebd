"""IBM ``jsrun`` (Summit).

``jsrun --nrs R --tasks_per_rs 1 --rs_per_host P --cpu_per_rs C --gpu_per_rs G --bind packed:C -E K=V
<command>``: one resource set per rank. jsrun places resource sets itself and cannot be given host names
without an explicit resource file, so ``hosts`` only sets how many hosts the ranks span; Summit presets
therefore turn node packing off (each job gets whole nodes).
"""

from __future__ import annotations

import math

from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher, bind_kind, param_args


class JsrunLauncher(MPILauncher):
    """IBM ``jsrun``."""

    name = "jsrun"
    default_executable = "jsrun"

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        cores = spec.cores_per_rank
        argv = [self.executable, "--nrs", str(spec.num_ranks), "--tasks_per_rs", "1",
                "--rs_per_host", str(spec.ranks_per_node), "--cpu_per_rs", str(cores)]  # fmt: skip
        gpus = math.ceil(spec.gpus_per_rank) if spec.gpus_per_rank else 0
        if gpus:
            argv += ["--gpu_per_rs", str(gpus)]
        if spec.cpu_bind is not None:
            kind = bind_kind(spec.cpu_bind, self.name)
            argv += ["--bind", "none" if kind == "none" else f"packed:{cores}"]
        for key, value in spec.env.items():
            argv += ["-E", f"{key}={value}"]
        argv += param_args(spec.launch_params)
        argv += [str(c) for c in spec.command]
        return LaunchCommand(argv)
