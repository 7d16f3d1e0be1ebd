"""No MPI: run the command itself, one rank on this host (serial jobs, machines without MPI)."""

from __future__ import annotations

from balsam.exceptions import LauncherError
from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher


class LocalLauncher(MPILauncher):
    """The bare command; its environment is returned for the caller to set."""

    name = "local"
    default_executable = ""

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        if spec.num_ranks != 1 or len(spec.hosts) > 1:
            raise LauncherError(f"local: runs one rank on one host; asked for {spec.num_ranks} ranks on {len(spec.hosts) or 1} hosts")
        return LaunchCommand([str(c) for c in spec.command], {k: str(v) for k, v in spec.env.items()})
