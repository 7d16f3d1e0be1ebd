"""Balsam 0.7's ``balsam.schemas`` names, for code written against it (``from balsam.schemas import JobState,
TransferItemState, JobMode``, as 0.7's own tests and many hooks import them; ``RUNNABLE_STATES`` and ``DONE_STATES``,
here with USER_KILLED among the done states; ``AllowedQueue``). The definitions live in
:mod:`balsam.states` (the states) and :mod:`balsam._api.schemas` (the typed specs); ``balsam.api`` exports them too."""

from balsam._api.schemas import (
    AllowedQueue,
    AppParameter,
    BatchJobPartition,
    JobMode,
    JobTransferItem,
    TransferDirection,
    TransferSlot,
)
from balsam.states import DONE_STATES, RUNNABLE_STATES, BatchJobState, JobState, TransferItemState

__all__ = ["DONE_STATES", "RUNNABLE_STATES", "AllowedQueue", "AppParameter", "BatchJobPartition", "BatchJobState", "JobMode",
           "JobState", "JobTransferItem", "TransferDirection", "TransferItemState", "TransferSlot"]
