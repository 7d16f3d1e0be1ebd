"""Open MPI ``mpirun`` (ThetaGPU, workstations).

``mpirun -n R --map-by ppr:P:node[:PE=C] --bind-to core -H h1:P,h2:P -x K=V ... <command>``. Open MPI forwards
only ``-x`` variables to remote hosts, so every variable goes on the command line.

Options (``launcher.mpi_options``):
  allow_run_as_root  add ``--allow-run-as-root`` (Open MPI refuses root otherwise; the caller sets it when
                     running as root)
  oversubscribe      add ``--oversubscribe`` (more ranks than cores, e.g. on a laptop or in CI)
"""

from __future__ import annotations

from typing import List

from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher, as_flag, bind_kind, bind_lists, param_args


def openmpi_binding(spec: LaunchSpec) -> List[str]:
    """``--map-by`` and ``--bind-to`` for a spec (pure)."""
    mapping = f"ppr:{spec.ranks_per_node}:node"
    if spec.cpu_bind is None:
        return ["--map-by", mapping]
    kind = bind_kind(spec.cpu_bind, "mpirun")
    if kind == "none":
        return ["--map-by", mapping, "--bind-to", "none"]
    if kind in ("core", "depth"):
        if spec.cores_per_rank > 1:
            mapping += f":PE={spec.cores_per_rank}"
        return ["--map-by", mapping, "--bind-to", "core"]
    if kind == "hwthread":
        return ["--map-by", mapping, "--bind-to", "hwthread"]
    if kind == "numa":
        return ["--map-by", mapping, "--bind-to", "numa"]
    cpus = ",".join(str(c) for group in bind_lists(spec.cpu_bind) for c in group)
    return ["--cpu-set", cpus, "--bind-to", "core", "--map-by", mapping]


class OpenMPILauncher(MPILauncher):
    """Open MPI ``mpirun``."""

    name = "mpirun"
    default_executable = "mpirun"
    options_help = {
        "allow_run_as_root": "true to pass --allow-run-as-root (needed when the launcher runs as root)",
        "oversubscribe": "true to pass --oversubscribe (more ranks than cores)",
    }

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        argv = [self.executable, "-n", str(spec.num_ranks)]
        argv += openmpi_binding(spec)
        if spec.hosts:
            argv += ["--host", ",".join(f"{h}:{spec.ranks_per_node}" for h in spec.hosts)]
        if as_flag(self.options.get("allow_run_as_root", "false"), "allow_run_as_root"):
            argv.append("--allow-run-as-root")
        if as_flag(self.options.get("oversubscribe", "false"), "oversubscribe"):
            argv.append("--oversubscribe")
        for key, value in spec.env.items():
            argv += ["-x", f"{key}={value}"]
        argv += param_args(spec.launch_params)
        argv += [str(c) for c in spec.command]
        return LaunchCommand(argv)
