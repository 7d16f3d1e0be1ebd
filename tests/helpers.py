"""Small helpers shared by tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

from typing import Any


def advance(job: Any, *states: str) -> None:
    """Move a saved job through ``states``, each change through the state machine."""
    for state in states:
        job.state = state
        job.save()
