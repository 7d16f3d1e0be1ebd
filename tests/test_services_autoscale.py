"""The elastic queue's decisions on scripted backlogs and backfill windows, and the queue maintainer."""

from __future__ import annotations

from typing import Any

from balsam.api import BatchJob, Job
from balsam.services.elastic import Backlog, ElasticQueueService, ManagedBatchJob, decide
from balsam.services.queue_maintainer import QueueMaintainerService
from balsam.settings import ElasticQueueSettings, QueueMaintainerSettings

CFG = ElasticQueueSettings(queue="debug", project="p", min_num_nodes=2, max_num_nodes=16, min_wall_time_min=10,
                           max_wall_time_min=60, wall_time_pad_min=5, max_queue_wait_time_min=30, max_queued_jobs=2,
                           use_backfill=True)
NOW = 100_000.0


def bj(i: int, state: str, nodes: int, busy: float = 0.0, age_min: float = 1) -> ManagedBatchJob:
    return ManagedBatchJob(i, state, nodes, 30, NOW - age_min * 60, busy)


def test_no_backlog_withdraws_waiting_jobs_but_keeps_running_ones() -> None:
    d = decide(CFG, Backlog(), [bj(1, "queued", 4), bj(2, "running", 4), bj(3, "pending_submission", 2)], [], NOW)
    assert d.submit is None and d.withdraw == [1, 3]


def test_backlog_sized_to_what_is_missing() -> None:
    d = decide(CFG, Backlog(footprint=9.5, max_job_nodes=1, max_job_wall_time_min=20), [bj(1, "running", 4, busy=1)], [], NOW)
    assert d.submit == (7, 25)  # 9.5 needed, 3 idle running nodes: 6.5 -> 7 nodes; 20 min + 5 pad


def test_limits_clamp_nodes_and_wall_time() -> None:
    d = decide(CFG, Backlog(footprint=100, max_job_nodes=1, max_job_wall_time_min=0), [], [], NOW)
    assert d.submit == (16, 60)  # capped at max nodes; unknown job length -> max wall time
    d = decide(CFG, Backlog(footprint=0.25, max_job_nodes=1, max_job_wall_time_min=1), [], [], NOW)
    assert d.submit == (2, 10)  # at least min nodes and min wall time


def test_waiting_supply_counts_and_max_queued_jobs_holds() -> None:
    assert decide(CFG, Backlog(footprint=8), [bj(1, "queued", 8)], [], NOW).submit is None
    d = decide(CFG, Backlog(footprint=40), [bj(1, "queued", 8), bj(2, "pending_submission", 8)], [], NOW)
    assert d.submit is None and "max_queued_jobs" in d.reason


def test_stale_queued_jobs_are_withdrawn_and_replaced() -> None:
    d = decide(CFG, Backlog(footprint=4, max_job_nodes=1, max_job_wall_time_min=10), [bj(1, "queued", 4, age_min=45)], [], NOW)
    assert d.withdraw == [1] and d.submit == (4, 15)


def test_a_job_too_big_for_the_queue_is_not_submitted_forever() -> None:
    d = decide(CFG, Backlog(footprint=32, max_job_nodes=32), [], [], NOW)
    assert d.submit is None and "more than max_num_nodes" in d.reason


def test_backfill_window_shapes_the_batch_job_within_limits() -> None:
    backlog = Backlog(footprint=12, max_job_nodes=1, max_job_wall_time_min=40)
    d = decide(CFG, backlog, [], [(8, 120), (1, 500), (20, 5)], NOW)
    assert d.submit == (8, 45)  # the 8-node window; wall = job need (45), not the window's 120
    d = decide(CFG, Backlog(footprint=12, max_job_nodes=1, max_job_wall_time_min=0), [], [(8, 240)], NOW)
    assert d.submit == (8, 60)  # never above max_wall_time_min (Balsam 0.7 ignored it with backfill)
    d = decide(CFG, backlog, [], [(1, 500)], NOW)
    assert d.submit == (12, 45)  # no usable window: a normal request


def _site_with_queue(store: Any) -> None:
    with store.write() as conn:
        conn.execute("""UPDATE site SET allowed_queues='{"debug":{"max_nodes":16,"max_wall_time_min":60,"max_queued_jobs":5}}',
                        allowed_projects='["p"]'""")


def test_elastic_service_acts_on_the_site(site: Any, hello: Any) -> None:
    _site_with_queue(site.store)
    Job.objects.bulk_create([hello.submit(workdir=f"j{i}", say_hello_to="x", save=False, num_nodes=1, wall_time_min=20,
                                          tags={"exp": "a"}) for i in range(6)])
    Job.objects.bulk_create([hello.submit(workdir=f"k{i}", say_hello_to="x", save=False, tags={"exp": "b"}) for i in range(3)])
    cfg = ElasticQueueSettings(queue="debug", project="p", min_num_nodes=1, max_num_nodes=16, max_queued_jobs=2,
                               filter_tags={"exp": "a"})
    service = ElasticQueueService(site, [cfg])
    service.run_cycle()
    (made,) = BatchJob.objects.all()
    assert (made.num_nodes, made.wall_time_min, made.filter_tags) == (6, 25, {"exp": "a"})
    service.run_cycle()
    assert BatchJob.objects.count() == 1  # its 6 waiting nodes cover the demand
    Job.objects.filter(tags={"exp": "a"}).delete()
    service.run_cycle()
    assert BatchJob.objects.get(id=made.id).state == "pending_deletion"


def test_one_job_too_big_for_the_queue_does_not_stop_it_serving_the_others(site: Any, hello: Any) -> None:
    """Balsam 0.7's elastic queue sizes each BatchJob within max_num_nodes; here a 16-node job in the backlog of a
    1-node queue kept every other job waiting (no BatchJob was ever submitted)."""
    _site_with_queue(site.store)
    big = hello.submit(workdir="big", say_hello_to="x", num_nodes=16)
    hello.submit(workdir="small", say_hello_to="x", node_packing_count=2)
    service = ElasticQueueService(site, [ElasticQueueSettings(queue="debug", project="p", min_num_nodes=1, max_num_nodes=1)])
    service.run_cycle()
    (made,) = BatchJob.objects.all()
    assert made.num_nodes == 1 and made.state == "pending_submission"
    Job.objects.filter(workdir="small").delete()
    service.run_cycle()  # only the big job is left: nothing this queue could run, so its waiting BatchJob goes
    assert BatchJob.objects.get(id=made.id).state == "pending_deletion" and Job.objects.get(id=big.id).state == "STAGED_IN"


def test_queue_maintainer_keeps_n_waiting(site: Any) -> None:
    _site_with_queue(site.store)
    svc = QueueMaintainerService(site, QueueMaintainerSettings(queue="debug", project="p", num_queued_jobs=3, num_nodes=2))
    svc.run_cycle()
    svc.run_cycle()
    assert BatchJob.objects.filter(state="pending_submission").count() == 3
    first = BatchJob.objects.first()
    assert first is not None
    first.state = "pending_deletion"
    first.save()
    svc.run_cycle()
    assert BatchJob.objects.filter(state="pending_submission").count() == 3
