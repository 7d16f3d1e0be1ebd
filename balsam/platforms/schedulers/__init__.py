"""Batch scheduler adapters, chosen by short name: ``get_scheduler("slurm")``.

=========  ===================================================================
name       adapter
=========  ===================================================================
local      :class:`~.local.LocalScheduler` (background processes on this host)
slurm      :class:`~.slurm.SlurmScheduler`
pbs        :class:`~.pbs.PBSScheduler` (PBS Professional / OpenPBS)
cobalt     :class:`~.cobalt.CobaltScheduler`
lsf        :class:`~.lsf.LSFScheduler` (IBM Spectrum LSF)
sge        :class:`~.sge.SGEScheduler` (Grid Engine)
=========  ===================================================================
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any, Dict, List, Mapping, Optional, Type

from balsam.exceptions import ConfigError
from balsam.platforms.runner import CommandRunner
from balsam.platforms.schedulers.base import (
    ACTIVE_STATES,
    DONE_STATES,
    BackfillWindow,
    JobTimes,
    Scheduler,
    SchedulerJobStatus,
    SchedulerState,
)
from balsam.platforms.schedulers.cobalt import CobaltScheduler
from balsam.platforms.schedulers.local import LocalScheduler
from balsam.platforms.schedulers.lsf import LSFScheduler
from balsam.platforms.schedulers.pbs import PBSScheduler
from balsam.platforms.schedulers.sge import SGEScheduler
from balsam.platforms.schedulers.slurm import SlurmScheduler
from balsam.platforms.schedulers.timefmt import UNLIMITED_MIN

SCHEDULERS: Dict[str, Type[Scheduler]] = {
    cls.name: cls for cls in (LocalScheduler, SlurmScheduler, PBSScheduler, CobaltScheduler, LSFScheduler, SGEScheduler)
}

__all__ = [
    "ACTIVE_STATES",
    "DONE_STATES",
    "SCHEDULERS",
    "UNLIMITED_MIN",
    "BackfillWindow",
    "JobTimes",
    "Scheduler",
    "SchedulerJobStatus",
    "SchedulerState",
    "get_scheduler",
    "scheduler_names",
]


def scheduler_names() -> List[str]:
    """The short names ``scheduler.type`` accepts."""
    return sorted(SCHEDULERS)


def get_scheduler(
    name: str,
    runner: Optional[CommandRunner] = None,
    *,
    timeout_s: float = 60.0,
    env: Optional[Mapping[str, str]] = None,
    options: Optional[Mapping[str, str]] = None,
    tz: Optional[tzinfo] = None,
    state_dir: Any = None,
) -> Scheduler:
    """Build the adapter named ``name`` (no command runs).

    ``state_dir`` is where an adapter may keep records of its own (the local scheduler's job records); the
    composition root can pass it whatever the type, and adapters that need none ignore it.
    """
    cls = SCHEDULERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown scheduler {name!r} (known: {', '.join(scheduler_names())})")
    if cls is LocalScheduler:
        return LocalScheduler(runner, state_dir=state_dir, timeout_s=timeout_s, env=env, options=options)
    return cls(runner, timeout_s=timeout_s, env=env, options=options, tz=tz)
