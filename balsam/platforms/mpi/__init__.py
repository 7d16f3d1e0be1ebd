"""MPI launch lines, chosen by short name: ``get_mpi_launcher("srun").render(spec).argv``.

=======  =========================================================================
name     launcher
=======  =========================================================================
mpiexec  MPICH Hydra ``mpiexec`` (also Intel MPI, MVAPICH)
pals     Cray PALS ``mpiexec`` (Polaris, Aurora, Sunspot, Crux)
mpirun   Open MPI ``mpirun``
srun     Slurm ``srun``
aprun    Cray ALPS ``aprun`` (Theta)
jsrun    IBM ``jsrun`` (Summit)
local    no MPI: the bare command, one rank
auto     whichever of the above ``mpiexec``/``mpirun`` on PATH is (see :mod:`.detect`)
=======  =========================================================================
"""

from __future__ import annotations

from typing import Dict, List, Optional, Type

from balsam.exceptions import ConfigError
from balsam.platforms.mpi.aprun import AprunLauncher
from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher
from balsam.platforms.mpi.jsrun import JsrunLauncher
from balsam.platforms.mpi.local import LocalLauncher
from balsam.platforms.mpi.mpiexec import MPICHLauncher
from balsam.platforms.mpi.mpirun import OpenMPILauncher
from balsam.platforms.mpi.pals import PALSLauncher
from balsam.platforms.mpi.srun import SrunLauncher

LAUNCHERS: Dict[str, Type[MPILauncher]] = {
    cls.name: cls
    for cls in (MPICHLauncher, PALSLauncher, OpenMPILauncher, SrunLauncher, AprunLauncher, JsrunLauncher, LocalLauncher)
}

__all__ = ["LAUNCHERS", "LaunchCommand", "LaunchSpec", "MPILauncher", "get_mpi_launcher", "launcher_names", "mpi_flavor"]

AUTO = "auto"  # launcher.mpi_launcher: find the installed MPI when the launcher starts (balsam.platforms.mpi.detect)


def launcher_names() -> List[str]:
    """The short names ``launcher.mpi_launcher`` accepts (and ``auto``)."""
    return sorted(LAUNCHERS)


def get_mpi_launcher(name: str, executable: Optional[str] = None, **options: str) -> MPILauncher:
    """Build the launcher named ``name``; ``executable`` overrides the program name (e.g. ``mpiexec.mpich``)."""
    cls = LAUNCHERS.get(name)
    if cls is None and name == AUTO:
        raise ConfigError("MPI launcher 'auto' must be resolved first (balsam.platforms.mpi.detect.resolve_mpi)")
    if cls is None:
        raise ConfigError(f"unknown MPI launcher {name!r} (known: {', '.join(launcher_names())})")
    return cls(executable, **options)


def mpi_flavor(version_output: str) -> Optional[str]:
    """Which launcher an ``mpiexec --version`` output belongs to: ``mpiexec`` (Hydra), ``mpirun`` (Open MPI),
    ``pals`` (Cray PALS), or None (pure); Intel MPI and MVAPICH are Hydra. Lets a site check that ``mpiexec`` on its PATH is the one its
    settings name; on Debian, for instance, ``mpiexec`` is Open MPI's when both are installed."""
    text = version_output.lower()
    if "hydra" in text or "intel(r) mpi" in text or "mvapich" in text:
        return "mpiexec"
    if "open mpi" in text or "openrte" in text or "open-mpi" in text:
        return "mpirun"
    if "pals" in text or "cray" in text:
        return "pals"
    return None
