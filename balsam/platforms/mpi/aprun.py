"""Cray ALPS ``aprun`` (Theta KNL).

``aprun -n R -N P -d D -j T -cc depth -L 10,11 -e K=V ... <command>``. ALPS names nodes by their numeric id:
the host list (``nid00010``) becomes ``-L 10``.
"""

from __future__ import annotations

import re
from typing import List, Sequence

from balsam.exceptions import LauncherError
from balsam.platforms.mpi.base import LaunchCommand, LaunchSpec, MPILauncher, bind_kind, bind_lists, param_args

_NID = re.compile(r"^nid0*(\d+)$")


def node_ids(hosts: Sequence[str]) -> List[str]:
    """``nid00010`` -> ``10`` (a bare number passes through) (pure)."""
    out = []
    for host in hosts:
        if host.isdigit():
            out.append(str(int(host)))
            continue
        m = _NID.match(host)
        if not m:
            raise LauncherError(f"aprun: host {host!r} is not a Cray node id (nidNNNNN)")
        out.append(m.group(1))
    return out


class AprunLauncher(MPILauncher):
    """Cray ``aprun``."""

    name = "aprun"
    default_executable = "aprun"

    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        argv = [self.executable, "-n", str(spec.num_ranks), "-N", str(spec.ranks_per_node),
                "-d", str(spec.threads_per_rank), "-j", str(spec.threads_per_core)]  # fmt: skip
        if spec.cpu_bind is not None:
            kind = bind_kind(spec.cpu_bind, self.name)
            if kind == "list":
                cc = ":".join(",".join(str(c) for c in cpus) for cpus in bind_lists(spec.cpu_bind))
            else:
                cc = {"none": "none", "depth": "depth", "core": "depth", "hwthread": "cpu", "numa": "numa_node"}[kind]
            argv += ["-cc", cc]
        if spec.hosts:
            argv += ["-L", ",".join(node_ids(spec.hosts))]
        for key, value in spec.env.items():
            argv += ["-e", f"{key}={value}"]
        argv += param_args(spec.launch_params)
        argv += [str(c) for c in spec.command]
        return LaunchCommand(argv)
