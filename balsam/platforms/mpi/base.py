"""The launch spec every MPI launcher renders, and the base class of the launchers.

A launcher is a pure function from a :class:`LaunchSpec` (what to run, how many ranks where, with which
threads, CPU binding, GPUs and environment) to a :class:`LaunchCommand`: the argv, plus environment variables
the caller must add to the launcher process's own environment (``srun`` forwards its environment; others
carry variables on the command line so remote ranks get them too).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence

from balsam.exceptions import ConfigError, LauncherError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch and how.

    ``cpu_bind`` is one of ``none``, ``core``, ``hwthread``, ``depth`` (each rank bound to
    ``threads_per_rank`` hardware threads), ``numa``, or ``list:<cpus>:<cpus>...`` (one CPU list per rank,
    e.g. ``list:0-3:4-7``); None leaves the launcher's default. ``launch_params`` pass through as extra flags:
    ``{"--overlap": ""}`` gives ``--overlap``, ``{"--mem-bind": "local"}`` gives ``--mem-bind local`` (a key
    without leading dashes gets ``--``, or ``-`` if it is one letter).
    """

    command: Sequence[str]
    num_ranks: int = 1
    ranks_per_node: int = 1
    threads_per_rank: int = 1
    threads_per_core: int = 1
    cpu_bind: Optional[str] = None
    gpus_per_rank: float = 0.0
    hosts: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    launch_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        """Nodes the ranks span: the host list's length, else ranks / ranks per node rounded up."""
        if self.hosts:
            return len(self.hosts)
        return max(1, math.ceil(self.num_ranks / self.ranks_per_node))

    @property
    def cores_per_rank(self) -> int:
        """Physical cores one rank needs: threads / threads per core, at least one."""
        return max(1, self.threads_per_rank // max(1, self.threads_per_core))


@dataclass(frozen=True)
class LaunchCommand:
    """A rendered launch: run ``argv`` with ``env`` added to the launcher process's environment."""

    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)


def validate(spec: LaunchSpec, launcher: str) -> None:
    """Refuse a spec no launcher could honour, with one clear line."""
    if not spec.command:
        raise LauncherError(f"{launcher}: nothing to launch (empty command)")
    for name, value in (("num_ranks", spec.num_ranks), ("ranks_per_node", spec.ranks_per_node),
                        ("threads_per_rank", spec.threads_per_rank), ("threads_per_core", spec.threads_per_core)):  # fmt: skip
        if int(value) < 1:
            raise LauncherError(f"{launcher}: {name} must be at least 1, got {value}")
    if spec.gpus_per_rank < 0:
        raise LauncherError(f"{launcher}: gpus_per_rank must not be negative, got {spec.gpus_per_rank}")
    if spec.hosts and spec.num_ranks > len(spec.hosts) * spec.ranks_per_node:
        raise LauncherError(
            f"{launcher}: {spec.num_ranks} ranks do not fit on {len(spec.hosts)} hosts at {spec.ranks_per_node} per node"
        )
    for key in spec.env:
        if not _ENV_NAME.match(key):
            raise LauncherError(f"{launcher}: invalid environment variable name {key!r}")
    if spec.cpu_bind is not None:
        bind_kind(spec.cpu_bind, launcher)


BIND_KINDS = ("none", "core", "hwthread", "depth", "numa", "list")


def bind_kind(cpu_bind: str, launcher: str) -> str:
    """The kind of a cpu_bind value (``list:0-3:4-7`` is ``list``)."""
    kind = cpu_bind.split(":", 1)[0]
    if kind not in BIND_KINDS:
        raise LauncherError(f"{launcher}: unknown cpu_bind {cpu_bind!r} (use one of {', '.join(BIND_KINDS)})")
    if kind == "list" and not cpu_bind[5:]:
        raise LauncherError(f"{launcher}: cpu_bind list needs CPU lists, e.g. list:0-3:4-7")
    return kind


def bind_lists(cpu_bind: str) -> List[List[int]]:
    """``list:0-1,4:2-3`` -> [[0, 1, 4], [2, 3]] (pure)."""
    out: List[List[int]] = []
    for group in cpu_bind.split(":")[1:]:
        cpus: List[int] = []
        for part in group.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                cpus.extend(range(int(lo), int(hi) + 1))
            elif part:
                cpus.append(int(part))
        out.append(cpus)
    return out


def param_args(launch_params: Mapping[str, str]) -> List[str]:
    """Pass-through flags, in the order given (see :class:`LaunchSpec`)."""
    args: List[str] = []
    for key, value in launch_params.items():
        flag = key if key.startswith("-") else (f"-{key}" if len(key) == 1 else f"--{key}")
        args.append(flag)
        if value is not None and str(value) != "":
            args.append(str(value))
    return args


def whole_gpus(spec: LaunchSpec, launcher: str) -> int:
    """GPUs per rank as a whole number (fractions are for packing jobs onto one GPU, not launch flags)."""
    if spec.gpus_per_rank and spec.gpus_per_rank != int(spec.gpus_per_rank):
        if spec.gpus_per_rank < 1:
            return 0  # sharing a GPU: visibility is set through the environment, not the launcher
        raise LauncherError(f"{launcher}: gpus_per_rank {spec.gpus_per_rank} must be whole when above 1")
    return int(spec.gpus_per_rank)


def as_flag(value: str, name: str) -> bool:
    """An option string as a boolean."""
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"MPI launcher option {name}: expected true or false, got {value!r}")


class MPILauncher(ABC):
    """Base of the launchers. ``executable`` is the program to call (e.g. ``mpiexec.mpich``); ``options``
    are launcher-specific (``launcher.mpi_options`` in settings.yml), each named in ``options_help``."""

    name: ClassVar[str] = ""
    default_executable: ClassVar[str] = ""
    options_help: ClassVar[Dict[str, str]] = {}

    def __init__(self, executable: Optional[str] = None, **options: str) -> None:
        unknown = sorted(set(options) - set(self.options_help))
        if unknown:
            known = ", ".join(sorted(self.options_help)) or "none"
            raise ConfigError(f"MPI launcher {self.name}: unknown option {unknown[0]!r} (known options: {known})")
        self.executable = executable or self.default_executable
        self.options = options

    def render(self, spec: LaunchSpec) -> LaunchCommand:
        """Validate ``spec`` and render it (pure)."""
        validate(spec, self.name)
        return self._render(spec)

    @abstractmethod
    def _render(self, spec: LaunchSpec) -> LaunchCommand:
        """The launcher-specific rendering of a valid spec."""
