"""Cray PALS ``mpiexec`` (HPE Cray EX with PBS: Polaris, Aurora, Sunspot, Crux).

``mpiexec -n R --ppn P --hosts h1,h2 --depth D --cpu-bind depth --env K=V ... <command>``. PALS takes
``--cpu-bind`` values ``none``, ``core``, ``depth``, ``numa`` and ``list:0-3:4-7``, and ``--depth`` for the
hardware threads each rank spans.
"""

from __future__ import annotations

from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher, bind_kind, param_args


class PALSLauncher(MPILauncher):
    """Cray PALS ``mpiexec``."""

    name = "pals"
    default_executable = "mpiexec"

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        argv = [self.executable, "-n", str(spec.num_ranks), "--ppn", str(spec.ranks_per_node)]
        if spec.hosts:
            argv += ["--hosts", ",".join(spec.hosts)]
        if spec.threads_per_rank > 1:
            argv += ["--depth", str(spec.threads_per_rank)]
        if spec.cpu_bind is not None:
            kind = bind_kind(spec.cpu_bind, self.name)
            argv += ["--cpu-bind", "core" if kind == "hwthread" else spec.cpu_bind]
        for key, value in spec.env.items():
            argv += ["--env", f"{key}={value}"]
        argv += param_args(spec.launch_params)
        argv += [str(c) for c in spec.command]
        return LaunchCommand(argv)
