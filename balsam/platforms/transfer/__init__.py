"""Transfer adapters, chosen by short name: ``get_transfer("rsync")``; a task id's prefix names its adapter.

======  =====================================================================
name    adapter
======  =====================================================================
cp      :class:`~.cp.CpTransfer`: local copies (or hard links)
rsync   :class:`~.rsync.RsyncTransfer`: batches over ssh to ``[user@]host``, or local
globus  :class:`~.globus.GlobusTransfer`: Globus Transfer tasks (needs ``balsam[globus]``)
======  =====================================================================
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Type

from balsam.exceptions import ConfigError
from balsam.platforms.runner import CommandRunner
from balsam.platforms.transfer.base import (
    ItemFailure,
    ScriptTransfer,
    TransferAdapter,
    TransferItem,
    TransferState,
    TransferStatus,
    is_remote,
)
from balsam.platforms.transfer.cp import CpTransfer
from balsam.platforms.transfer.rsync import RsyncTransfer

TRANSFERS: Dict[str, Type[TransferAdapter]] = {cls.name: cls for cls in (CpTransfer, RsyncTransfer)}

__all__ = [
    "TRANSFERS",
    "ItemFailure",
    "ScriptTransfer",
    "TransferAdapter",
    "TransferItem",
    "TransferState",
    "TransferStatus",
    "adapter_name_of",
    "get_transfer",
    "is_remote",
    "transfer_names",
]


def transfer_names() -> List[str]:
    """The short names of the transfer adapters."""
    return sorted([*TRANSFERS, "globus"])


def get_transfer(
    name: str,
    runner: Optional[CommandRunner] = None,
    *,
    state_dir: Any = None,
    env: Optional[Mapping[str, str]] = None,
    options: Optional[Mapping[str, str]] = None,
    **extra: Any,
) -> TransferAdapter:
    """Build the transfer adapter named ``name`` (nothing runs). ``extra`` goes to the Globus adapter
    (``client`` or ``client_factory``)."""
    if name == "globus":  # imported here: globus-sdk is optional
        from balsam.platforms.transfer.globus import GlobusTransfer

        return GlobusTransfer(runner, state_dir=state_dir, env=env, options=options, **extra)
    cls = TRANSFERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown transfer adapter {name!r} (known: {', '.join(transfer_names())})")
    return cls(runner, state_dir=state_dir, env=env, options=options)


def adapter_name_of(task_id: str) -> str:
    """The adapter a task id belongs to (its prefix before ':')."""
    return task_id.partition(":")[0]
