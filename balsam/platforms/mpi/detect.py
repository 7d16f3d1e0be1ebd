"""Which MPI is installed: ``launcher.mpi_launcher: auto`` asks the ``mpiexec`` (else ``mpirun``) on PATH.

On Debian ``mpiexec`` is Open MPI's when both Open MPI and MPICH are installed; on a Cray it is PALS; with Intel
MPI or MVAPICH it is Hydra. Each takes different flags, so a site that names no launcher gets the one whose
``--version`` output matches (:func:`balsam.platforms.mpi.mpi_flavor`). No MPI on PATH means ``local``: jobs run
one rank each, without a launcher.

Open MPI refuses to run as root unless told: ``allow_run_as_root`` is added only when the launcher runs as root
and the settings do not say otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

from balsam.platforms.mpi import AUTO
from balsam.platforms.runner import CommandRunner, SubprocessRunner

CANDIDATES = ("mpiexec", "mpirun")
FLAVOR_NAMES = {"mpiexec": "MPICH Hydra", "mpirun": "Open MPI", "pals": "Cray PALS"}


@dataclass(frozen=True)
class MPIDetection:
    """What was found: the launcher's short name, the program to call (its full path, so jobs start exactly
    the MPI that was asked), and a line saying what it is."""

    launcher: str
    executable: str
    description: str
    options: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for ``balsam which`` and the launcher's log, e.g. ``mpirun (Open MPI 4.1.4, as /usr/bin/mpiexec)``."""
        if self.launcher == "local":
            return f"local ({self.description})"
        extra = f"; {', '.join(f'{k}={v}' for k, v in sorted(self.options.items()))}" if self.options else ""
        return f"{self.launcher} ({self.description}, as {self.executable}{extra})"


def version_description(text: str, flavor: str) -> str:
    """A short name and version from a ``--version`` output (pure): ``Open MPI 4.1.4``, ``MPICH Hydra 4.0.2``,
    ``Intel(R) MPI Library ... 2021.6``."""
    lower = text.lower()
    if "intel(r) mpi" in lower:
        line = next(ln for ln in text.splitlines() if "intel(r) mpi" in ln.lower())
        return line.strip()
    if flavor == "mpirun":
        m = re.search(r"\((?:Open MPI|OpenRTE)\)\s*(\S+)", text)
        return f"Open MPI {m.group(1)}" if m else "Open MPI"
    if flavor == "mpiexec":
        m = re.search(r"Version:\s*(\S+)", text)
        name = "MVAPICH Hydra" if "mvapich" in lower else "MPICH Hydra"
        return f"{name} {m.group(1)}" if m else name
    return FLAVOR_NAMES.get(flavor, flavor)


def detect_mpi(env: Mapping[str, str], runner: Optional[CommandRunner] = None, timeout_s: float = 15.0) -> MPIDetection:
    """Ask ``mpiexec``, then ``mpirun``, on ``env``'s PATH what it is; ``local`` when neither answers."""
    from balsam.platforms.mpi import mpi_flavor

    runner = runner or SubprocessRunner()
    path = env.get("PATH", os.defpath)
    tried = []
    for name in CANDIDATES:
        exe = shutil.which(name, path=path)
        if exe is None:
            continue
        try:
            result = runner.run([exe, "--version"], env=dict(env), timeout_s=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{name}: {exc.__class__.__name__}")
            continue
        text = result.stdout + "\n" + result.stderr
        flavor = mpi_flavor(text)
        if flavor is None:
            tried.append(f"{name}: unknown kind")
            continue
        return MPIDetection(flavor, exe, version_description(text, flavor))
    why = "; ".join(tried) if tried else "no mpiexec or mpirun on PATH"
    return MPIDetection("local", "", f"no MPI found: {why}; jobs run one rank each")


def resolve_mpi(
    launcher: str,
    executable: Optional[str],
    options: Mapping[str, str],
    env: Mapping[str, str],
    *,
    runner: Optional[CommandRunner] = None,
    euid: Optional[int] = None,
) -> Tuple[str, Optional[str], Dict[str, str], Optional[MPIDetection]]:
    """The launcher, executable and options to use: the settings', with ``auto`` replaced by what
    :func:`detect_mpi` finds, and Open MPI's ``allow_run_as_root`` set when running as root and not set in the
    settings. Returns the detection too (None when the settings named a launcher)."""
    opts = dict(options)
    found: Optional[MPIDetection] = None
    if launcher == AUTO:
        found = detect_mpi(env, runner)
        launcher = found.launcher
        executable = executable or (found.executable or None)
    root = (os.geteuid() if euid is None else euid) == 0
    if launcher == "mpirun" and root and "allow_run_as_root" not in opts:
        opts["allow_run_as_root"] = "true"
    if found is not None:
        found = MPIDetection(found.launcher, found.executable, found.description,
                             {k: v for k, v in opts.items() if k not in options})
    return launcher, executable, opts, found


def check_named_launcher(launcher: str, executable: Optional[str], env: Mapping[str, str],
                         runner: Optional[CommandRunner] = None) -> Optional[str]:
    """A warning when settings name ``mpiexec`` or ``mpirun`` but that program on PATH is another kind of MPI
    (say, MPICH flags for Debian's Open MPI ``mpiexec``); None when they agree or it cannot be told."""
    from balsam.platforms.mpi import mpi_flavor

    if launcher not in ("mpiexec", "mpirun", "pals"):
        return None
    program = executable or {"mpiexec": "mpiexec", "mpirun": "mpirun", "pals": "mpiexec"}[launcher]
    exe = shutil.which(program, path=env.get("PATH", os.defpath))
    if exe is None:
        return f"launcher.mpi_launcher is {launcher} but {program} is not on PATH (set launcher.mpi_launcher: auto)"
    try:
        result = (runner or SubprocessRunner()).run([exe, "--version"], env=dict(env), timeout_s=15.0)
    except (OSError, subprocess.TimeoutExpired):
        return None
    flavor = mpi_flavor(result.stdout + "\n" + result.stderr)
    if flavor is None or flavor == launcher:
        return None
    what = version_description(result.stdout + "\n" + result.stderr, flavor)
    return (f"launcher.mpi_launcher is {launcher} ({FLAVOR_NAMES.get(launcher, launcher)} flags) but {program} on PATH is "
            f"{what}: multi-rank jobs will fail; set launcher.mpi_launcher: auto (or {flavor})")
