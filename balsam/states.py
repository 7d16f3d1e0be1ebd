"""Job and BatchJob states and their named sets, for every layer: the one table lives in the store
(:mod:`balsam.db.states`, which owns the transitions); this module is its public face, light enough for the CLI
to import at start (it opens nothing).

Outside the store and the wire, states are these enum members, never their names as strings.
"""

from __future__ import annotations

from balsam.db.states import (
    BATCH_ACTIVE_STATES,
    BATCH_LISTED_STATES,
    DISPLAY_ORDER,
    DONE_STATES,
    FAILED_STATES,
    PROCESSING_STATES,
    RESET_DEFAULT_STATES,
    RESETTABLE_STATES,
    RUNNABLE_STATES,
    STORED_STATES,
    BatchJobState,
    JobState,
    TransferItemState,
    to_batch_state,
    to_state,
    to_states,
)

__all__ = [
    "BATCH_ACTIVE_STATES", "BATCH_LISTED_STATES", "DISPLAY_ORDER", "DONE_STATES", "FAILED_STATES", "PROCESSING_STATES",
    "RESETTABLE_STATES", "RESET_DEFAULT_STATES", "RUNNABLE_STATES", "STORED_STATES", "BatchJobState", "JobState", "TransferItemState",
    "to_batch_state", "to_state", "to_states",
]
