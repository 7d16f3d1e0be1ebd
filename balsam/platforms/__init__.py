"""Platform adapters: batch schedulers, MPI launch lines, compute nodes, transfers, and machine presets.

This package imports nothing else of Balsam's except ``balsam.exceptions``: it is the bottom layer. Adapters are
chosen by short name, and building one does no work (no command runs, nothing is read) until it is used:

* :func:`get_scheduler` (``scheduler.type``): local, slurm, pbs, cobalt, lsf, sge
* :func:`get_mpi_launcher` (``launcher.mpi_launcher``): mpiexec, pals, mpirun, srun, aprun, jsrun, local
* :func:`get_node_adapter` (``launcher.node``): local, hostlist, slurm, pbs, cobalt, lsf, sge
* :func:`get_transfer`: cp, rsync
* :func:`render_job_script` renders a preset's or site's ``job-template.sh``; :func:`describe_presets` lists
  the presets ``balsam site init`` offers.

Commands run through one injected :class:`CommandRunner` (:class:`SubprocessRunner` for real, :class:`FakeRunner`
for tests), with a timeout and an explicit environment.
"""

from __future__ import annotations

from balsam.platforms.mpi import LaunchCommand, LaunchSpec, MPILauncher, get_mpi_launcher
from balsam.platforms.nodes import ComputeNode, NodeAdapter, get_node_adapter, gpu_visibility_env
from balsam.platforms.presets import PresetInfo, describe_presets, list_presets, read_preset_file
from balsam.platforms.runner import CommandResult, CommandRunner, CountingRunner, FakeRunner, SubprocessRunner
from balsam.platforms.schedulers import (
    BackfillWindow,
    Scheduler,
    SchedulerJobStatus,
    SchedulerState,
    get_scheduler,
)
from balsam.platforms.templates import job_script_context, render_job_script
from balsam.platforms.transfer import TransferAdapter, TransferItem, TransferState, TransferStatus, get_transfer

__all__ = [
    "BackfillWindow",
    "CommandResult",
    "CommandRunner",
    "ComputeNode",
    "CountingRunner",
    "FakeRunner",
    "LaunchCommand",
    "LaunchSpec",
    "MPILauncher",
    "NodeAdapter",
    "PresetInfo",
    "Scheduler",
    "SchedulerJobStatus",
    "SchedulerState",
    "SubprocessRunner",
    "TransferAdapter",
    "TransferItem",
    "TransferState",
    "TransferStatus",
    "describe_presets",
    "get_mpi_launcher",
    "get_node_adapter",
    "get_scheduler",
    "get_transfer",
    "gpu_visibility_env",
    "job_script_context",
    "list_presets",
    "read_preset_file",
    "render_job_script",
]
