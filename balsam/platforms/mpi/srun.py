"""Slurm ``srun`` (Perlmutter, Frontier, Cori, Bebop).

``srun -n R --ntasks-per-node P -N N --nodelist h1,h2 --cpus-per-task C --cpu-bind=cores --gpus-per-task G
<command>``. srun forwards its own environment to every task (``--export=ALL`` is its default), so the spec's
variables are returned in :attr:`LaunchCommand.env` for the caller to set, not put on the command line
(``--export`` splits values at commas).

Options (``launcher.mpi_options``):
  overlap  true to pass ``--overlap``, so steps packed onto one allocation may share its CPUs
"""

from __future__ import annotations

from typing import List

from balsam.platforms.mpi.base import (
    LaunchCommand,
    LaunchSpec,
    MPILauncher,
    as_flag,
    bind_kind,
    bind_lists,
    param_args,
    whole_gpus,
)


def slurm_bind(spec: LaunchSpec) -> List[str]:
    """``--cpu-bind`` for a spec (pure)."""
    if spec.cpu_bind is None:
        return []
    kind = bind_kind(spec.cpu_bind, "srun")
    value = {"none": "none", "core": "cores", "depth": "cores", "hwthread": "threads", "numa": "ldoms"}.get(kind)
    if value is None:
        masks = ",".join(hex(sum(1 << c for c in cpus)) for cpus in bind_lists(spec.cpu_bind))
        value = f"mask_cpu:{masks}"
    return [f"--cpu-bind={value}"]


class SrunLauncher(MPILauncher):
    """Slurm ``srun``."""

    name = "srun"
    default_executable = "srun"
    options_help = {"overlap": "true to pass --overlap (steps may share the allocation's CPUs)"}

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        argv = [self.executable, "-n", str(spec.num_ranks), "--ntasks-per-node", str(spec.ranks_per_node),
                "-N", str(spec.num_nodes)]  # fmt: skip
        if spec.hosts:
            argv += ["--nodelist", ",".join(spec.hosts)]
        argv += ["--cpus-per-task", str(spec.threads_per_rank)]
        argv += slurm_bind(spec)
        gpus = whole_gpus(spec, self.name)
        if gpus:
            argv += ["--gpus-per-task", str(gpus)]
        if as_flag(self.options.get("overlap", "false"), "overlap"):
            argv.append("--overlap")
        argv += param_args(spec.launch_params)
        argv += [str(c) for c in spec.command]
        return LaunchCommand(argv, {k: str(v) for k, v in spec.env.items()})
