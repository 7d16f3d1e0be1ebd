"""Balsam 0.7's ``balsam.schemas.batchjob`` names (``from balsam.schemas.batchjob import BatchJobState``)."""

from balsam.schemas import BatchJobPartition, BatchJobState, JobMode

__all__ = ["BatchJobPartition", "BatchJobState", "JobMode"]
