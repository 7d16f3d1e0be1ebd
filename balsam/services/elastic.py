"""The elastic queue (autoscaler): size BatchJobs to the backlog, within each queue's limits.

Per configured queue (``elastic_queue`` in settings.yml is a list), each cycle:

- **demand** is the node footprint (``num_nodes / node_packing_count``) of the unlocked jobs that can run or
  soon can (STAGED_IN, PREPROCESSED, RESTART_READY), match the queue's ``filter_tags`` and fit in
  ``max_num_nodes``;
- **supply** is the idle nodes of this queue's running BatchJobs (their nodes minus the footprint of their
  RUNNING jobs) plus the nodes of its BatchJobs still waiting to start;
- if demand exceeds supply and fewer than ``max_queued_jobs`` wait, one BatchJob is submitted: as many nodes
  as are missing (at least the largest job needs, within min/max nodes), for the longest job's wall time plus
  a pad (within min/max). With ``use_backfill``, a backfill window that can hold it shapes it to start now,
  and the max wall time still holds (Balsam 0.7 ignored it there);
- BatchJobs that waited longer than ``max_queue_wait_time_min``, or that nothing needs any more, are
  withdrawn (set to pending_deletion; the scheduler service cancels them).

:func:`decide` is pure, so its choices are tested on scripted backlogs and backfill windows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from balsam._api.sites import SiteRef
from balsam.db import batch_jobs as batch_db
from balsam.db.codec import dumps
from balsam.db.site_row import read_site_row
from balsam.db.states import BATCH_ACTIVE_STATES, RUNNABLE_STATES, BatchJobState, JobState
from balsam.exceptions import ValidationError
from balsam.services.base import Service
from balsam.settings import ElasticQueueSettings

logger = logging.getLogger(__name__)
B = BatchJobState

DEMAND_STATES = (JobState.STAGED_IN, *sorted(RUNNABLE_STATES))


@dataclass
class Backlog:
    """What the waiting jobs need."""

    footprint: float = 0.0
    max_job_nodes: int = 0
    max_job_wall_time_min: int = 0


@dataclass
class ManagedBatchJob:
    """One of this queue's BatchJobs that is still active."""

    id: int
    state: str
    num_nodes: int
    wall_time_min: int
    created: float
    busy_footprint: float = 0.0


@dataclass
class Decision:
    """What to do this cycle."""

    submit: Optional[Tuple[int, int]] = None
    """(num_nodes, wall_time_min) of a BatchJob to submit."""
    withdraw: List[int] = field(default_factory=list)
    """BatchJobs to cancel."""
    reason: str = ""


def decide(
    cfg: ElasticQueueSettings,
    backlog: Backlog,
    managed: Sequence[ManagedBatchJob],
    backfill: Sequence[Tuple[int, int]],
    now: float,
) -> Decision:
    """The autoscaler's choice for one queue (pure; see the module docstring)."""
    decision = Decision()
    waiting = [b for b in managed if b.state in (B.pending_submission, B.queued)]
    running = [b for b in managed if b.state == B.running]
    idle = sum(max(b.num_nodes - b.busy_footprint, 0.0) for b in running)
    if backlog.footprint <= 1e-9:
        decision.withdraw = [b.id for b in waiting]
        decision.reason = "no backlog"
        return decision
    for b in waiting:
        if b.state == B.queued and now - b.created > cfg.max_queue_wait_time_min * 60:
            decision.withdraw.append(b.id)
    still_waiting = [b for b in waiting if b.id not in decision.withdraw]
    supply = idle + sum(b.num_nodes for b in still_waiting)
    missing = backlog.footprint - supply
    if missing <= 1e-9:
        decision.reason = f"supply {supply:g} nodes covers demand {backlog.footprint:g}"
        return decision
    if len(still_waiting) >= cfg.max_queued_jobs:
        decision.reason = f"{len(still_waiting)} batch jobs already waiting (max_queued_jobs {cfg.max_queued_jobs})"
        return decision
    floor_nodes = max(cfg.min_num_nodes, backlog.max_job_nodes, 1)
    if floor_nodes > cfg.max_num_nodes:
        decision.reason = f"the largest job needs {backlog.max_job_nodes} nodes, more than max_num_nodes {cfg.max_num_nodes}"
        return decision
    nodes = min(max(math.ceil(missing - 1e-9), floor_nodes), cfg.max_num_nodes)
    wanted_wall = backlog.max_job_wall_time_min + cfg.wall_time_pad_min if backlog.max_job_wall_time_min else cfg.max_wall_time_min
    wall = min(max(wanted_wall, cfg.min_wall_time_min), cfg.max_wall_time_min)
    if cfg.use_backfill and backfill:
        fits = [(n, w) for n, w in backfill if n >= floor_nodes and w >= cfg.min_wall_time_min]
        if fits:
            n, w = max(fits, key=lambda nw: (min(nw[0], nodes), nw[1]))
            decision.submit = (min(nodes, n), min(wall, w, cfg.max_wall_time_min))
            decision.reason = f"backfill window {n} nodes x {w} min"
            return decision
    decision.submit = (nodes, wall)
    decision.reason = f"demand {backlog.footprint:g} nodes, supply {supply:g}"
    return decision


class ElasticQueueService(Service):
    """Runs :func:`decide` for each configured queue and acts on it."""

    name = "elastic_queue"

    def __init__(self, site: SiteRef, queues: List[ElasticQueueSettings]) -> None:
        super().__init__(min(q.period_s for q in queues))
        self.site = site
        self.queues = queues
        self.last_decisions: Dict[str, str] = {}

    @staticmethod
    def marker(cfg: ElasticQueueSettings) -> str:
        return f"elastic:{cfg.queue}:{dumps(cfg.filter_tags)}"

    def demand(self, cfg: ElasticQueueSettings) -> Backlog:
        # A job needing more nodes than max_num_nodes can run in none of this queue's BatchJobs: it is not demand
        # (it waits for a BatchJob made by hand; `balsam job show` says so), and it must not stop the queue serving
        # the jobs that fit (it did: one such job kept every other job of the site waiting).
        footprint, max_nodes, max_wall = batch_db.waiting_demand(self.site.store.conn, DEMAND_STATES, cfg.filter_tags,
                                                                 max_num_nodes=cfg.max_num_nodes)
        return Backlog(footprint=footprint, max_job_nodes=max_nodes, max_job_wall_time_min=max_wall)

    def managed(self, cfg: ElasticQueueSettings) -> List[ManagedBatchJob]:
        out = []
        conn = self.site.store.conn
        for bj in batch_db.batch_jobs_in(conn, sorted(BATCH_ACTIVE_STATES), queue=cfg.queue):
            if bj["status_info"].get("managed_by") != self.marker(cfg):
                continue
            out.append(ManagedBatchJob(bj["id"], bj["state"], bj["num_nodes"], bj["wall_time_min"], bj["created"],
                                       batch_db.running_footprint(conn, bj["id"])))
        return out

    def run_cycle(self) -> None:
        windows = read_site_row(self.site.store.conn, ("backfill_windows",)).get("backfill_windows") or {}
        now = time.time()
        for cfg in self.queues:
            backfill = [(int(w["num_nodes"]), int(w["wall_time_min"])) for w in windows.get(cfg.queue, [])]
            backlog = self.demand(cfg)
            self.backlog = int(math.ceil(backlog.footprint))
            decision = decide(cfg, backlog, self.managed(cfg), backfill, now)
            self.last_decisions[cfg.queue] = decision.reason
            with self.site.store.write() as conn:
                for bid in decision.withdraw:
                    batch_db.update_batch_job(conn, bid, state=B.pending_deletion, only_from=(B.pending_submission, B.queued),
                                              strict=False, now=now)
                    logger.info("elastic queue %s: withdrew batch job %s (%s)", cfg.queue, bid, decision.reason)
                if decision.submit is not None:
                    nodes, wall = decision.submit
                    try:
                        bid = batch_db.create_batch_job(conn, num_nodes=nodes, wall_time_min=wall, job_mode=cfg.job_mode,
                                                        queue=cfg.queue, project=cfg.project, filter_tags=cfg.filter_tags,
                                                        status_info={"managed_by": self.marker(cfg)})
                        logger.info("elastic queue %s: submitted batch job %s, %d nodes x %d min (%s)", cfg.queue, bid, nodes, wall,
                                    decision.reason)
                    except ValidationError as exc:
                        self.last_decisions[cfg.queue] = f"cannot submit: {exc}"
                        logger.warning("elastic queue %s: cannot submit: %s", cfg.queue, exc)
