"""MPICH's Hydra ``mpiexec`` (also Intel MPI and MVAPICH, which share its flags).

``mpiexec -n R -ppn P -hosts h1,h2 -bind-to core:C -genv K V ... <command>``. Variables go on the command line
(``-genv``) so ranks on other hosts receive them whatever the launcher's environment forwarding.
"""

from __future__ import annotations

from typing import List

from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher, bind_kind, bind_lists, param_args


def hydra_bind(spec: LaunchSpec) -> List[str]:
    """Hydra's ``-bind-to`` for a spec's cpu_bind (pure)."""
    if spec.cpu_bind is None:
        return []
    kind = bind_kind(spec.cpu_bind, "mpiexec")
    if kind == "none":
        return ["-bind-to", "none"]
    if kind == "hwthread":
        return ["-bind-to", f"hwthread:{spec.threads_per_rank}"]
    if kind in ("core", "depth"):
        return ["-bind-to", f"core:{spec.cores_per_rank}"]
    if kind == "numa":
        return ["-bind-to", "numa"]
    return ["-bind-to", "user:" + ",".join("+".join(str(c) for c in cpus) for cpus in bind_lists(spec.cpu_bind))]


class MPICHLauncher(MPILauncher):
    """MPICH Hydra ``mpiexec``."""

    name = "mpiexec"
    default_executable = "mpiexec"

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        argv = [self.executable, "-n", str(spec.num_ranks), "-ppn", str(spec.ranks_per_node)]
        if spec.hosts:
            argv += ["-hosts", ",".join(spec.hosts)]
        argv += hydra_bind(spec)
        for key, value in spec.env.items():
            argv += ["-genv", key, str(value)]
        argv += param_args(spec.launch_params)
        argv += [str(c) for c in spec.command]
        return LaunchCommand(argv)
