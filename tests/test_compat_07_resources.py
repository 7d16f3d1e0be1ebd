"""Balsam 0.7's jobs guide, "Defining Compute Resources": its job placement examples, run by a real launcher on a
node with the guide's 64 CPU cores and 8 GPUs (settings.yml's launcher.cpus_per_node and gpus_per_node).

The guide's allocation has 2 such nodes; a local site has one, so each count here is the guide's per node:
16 jobs with ``node_packing_count=8, gpus_per_rank=1`` all run at once on 2 nodes (8 per node); with
``node_packing_count=4`` only 8 (4 per node, by occupancy); with ``gpus_per_rank=8`` only 2 (1 per node, by GPUs).
How many ran at once is read from the EventLog (RUNNING in, RUN_DONE out), and the GPUs each job was given from
its ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
import yaml

from balsam.api import ApplicationDefinition, EventLog, Job
from tests.launcher_support import run, runnable


class GpuTask(ApplicationDefinition):
    site = "test-site"
    command_template = "echo GPUS=$CUDA_VISIBLE_DEVICES; sleep 2"


def _most_at_once(jobs: List[Any]) -> int:
    moves: List[Tuple[Any, int]] = []
    for e in EventLog.objects.filter(job_id=[j.id for j in jobs]):
        if e.to_state == "RUNNING":
            moves.append((e.timestamp, 1))
        elif e.from_state == "RUNNING":
            moves.append((e.timestamp, -1))
    now = most = 0
    for _, step in sorted(moves):  # at equal times an end (-1) sorts before a start
        now += step
        most = max(most, now)
    return most


@pytest.mark.slow
@pytest.mark.parametrize("packing, gpus, count, at_once, gpus_each", [
    (8, 1, 8, 8, 1),  # "16 single-process jobs with node_packing_count=8 and gpus_per_rank=1: all 16 run concurrently"
    (4, 1, 8, 4, 1),  # "with node_packing_count=4 and gpus_per_rank=1, only 8 jobs will run at a time (4 per node)"
    (8, 8, 2, 1, 8),  # "if node_packing_count=8 and gpus_per_rank=8, only 2 jobs (one job per node, for lack of idle GPUs)"
])
def test_the_job_placement_examples(site: Any, packing: int, gpus: int, count: int, at_once: int, gpus_each: int) -> None:
    settings = yaml.safe_load((site.path / "settings.yml").read_text())
    settings["launcher"].update(cpus_per_node=64, gpus_per_node=8)
    (site.path / "settings.yml").write_text(yaml.safe_dump(settings))
    GpuTask.sync()
    jobs = [GpuTask.submit(workdir=f"place/{i}", node_packing_count=packing, gpus_per_rank=gpus) for i in range(count)]
    runnable(site.store, jobs)
    assert run(site, "mpi", idle_ttl_s=1.0) == 0
    assert {str(Job.objects.get(id=j.id).state) for j in jobs} == {"JOB_FINISHED"}
    assert _most_at_once(jobs) == at_once
    given = [(site.path / "data" / j.workdir / "job.out").read_text().split("=", 1)[1].split() for j in jobs]
    assert all(len(g[0].split(",")) == gpus_each for g in given)
    if gpus_each == 1:  # jobs running together got different GPUs
        assert len({g[0] for g in given}) >= at_once
