"""The queue maintainer: keep a fixed number of fixed-size BatchJobs waiting in the queue.

Simpler than the elastic queue: whenever fewer than ``num_queued_jobs`` of its BatchJobs wait (pending or
queued), it submits another of ``num_nodes`` x ``wall_time_min``. Useful for a steady stream of work.
"""

from __future__ import annotations

import logging

from balsam._api.sites import SiteRef
from balsam.db import batch_jobs as batch_db
from balsam.db.states import BatchJobState
from balsam.exceptions import ValidationError
from balsam.services.base import Service
from balsam.settings import QueueMaintainerSettings

logger = logging.getLogger(__name__)
B = BatchJobState
MARKER = "queue_maintainer"


class QueueMaintainerService(Service):
    """Keeps ``num_queued_jobs`` BatchJobs waiting."""

    name = "queue_maintainer"

    def __init__(self, site: SiteRef, settings: QueueMaintainerSettings) -> None:
        super().__init__(settings.period_s)
        self.site = site
        self.settings = settings

    def waiting(self) -> int:
        """How many of this service's BatchJobs are waiting to start."""
        waiting = batch_db.batch_jobs_in(self.site.store.conn, (B.pending_submission, B.queued), queue=self.settings.queue)
        return sum(1 for bj in waiting if bj["status_info"].get("managed_by") == MARKER)

    def run_cycle(self) -> None:
        s = self.settings
        missing = s.num_queued_jobs - self.waiting()
        self.backlog = max(missing, 0)
        for _ in range(max(missing, 0)):
            try:
                with self.site.store.write() as conn:
                    bid = batch_db.create_batch_job(conn, num_nodes=s.num_nodes, wall_time_min=s.wall_time_min, job_mode=s.job_mode,
                                                    queue=s.queue, project=s.project, filter_tags=s.filter_tags,
                                                    status_info={"managed_by": MARKER})
                logger.info("queue maintainer: submitted batch job %s (%d nodes x %d min)", bid, s.num_nodes, s.wall_time_min)
            except ValidationError as exc:
                logger.warning("queue maintainer: cannot submit: %s", exc)
                return
