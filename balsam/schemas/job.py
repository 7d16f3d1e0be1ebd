"""Balsam 0.7's ``balsam.schemas.job`` names (``from balsam.schemas.job import JobState``)."""

from balsam.schemas import JobState, JobTransferItem

__all__ = ["JobState", "JobTransferItem"]
