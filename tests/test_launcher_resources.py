"""The resource manager: packing by node_packing_count and CPUs, GPUs (whole and shared), whole nodes for
multi-node jobs, release, and jobs that can never fit."""

from __future__ import annotations

import pytest

from balsam.launcher.resources import ResourceManager, Unplaceable


def nodes(n: int, cpus: int = 4, gpus: int = 0):
    return [(f"n{i}", list(range(cpus)), [str(g) for g in range(gpus)]) for i in range(n)]


def test_packing_count_limits_jobs_per_node() -> None:
    rm = ResourceManager(nodes(2, cpus=8))
    req = rm.request(node_packing_count=4)
    placed = [rm.place(req) for _ in range(8)]
    assert all(p is not None for p in placed)
    assert [p.hostnames[0] for p in placed if p] == ["n0"] * 4 + ["n1"] * 4  # first fit fills n0 first
    assert rm.place(req) is None
    assert rm.free_footprint == pytest.approx(0.0)


def test_cpus_limit_packing_and_are_distinct() -> None:
    rm = ResourceManager(nodes(1, cpus=4))
    req = rm.request(ranks_per_node=1, threads_per_rank=2, node_packing_count=64)
    a, b = rm.place(req), rm.place(req)
    assert a is not None and b is not None
    assert a.cpu_ids == (0, 1) and b.cpu_ids == (2, 3)
    assert rm.place(req) is None, "all 4 CPUs are busy although npc allows 64 jobs"
    rm.release(a)
    c = rm.place(req)
    assert c is not None and c.cpu_ids == (0, 1)


def test_threads_per_core_shares_cores() -> None:
    rm = ResourceManager(nodes(1, cpus=4))
    req = rm.request(ranks_per_node=2, threads_per_rank=4, threads_per_core=2, node_packing_count=2)
    p = rm.place(req)
    assert p is not None and len(p.cpu_ids) == 4


def test_more_cpus_than_a_node_has_takes_the_whole_node() -> None:
    rm = ResourceManager(nodes(2, cpus=2))
    req = rm.request(ranks_per_node=4, node_packing_count=8)
    assert req.cpus == 2 and req.occupancy == 1.0
    p = rm.place(req)
    assert p is not None and p.whole_nodes
    assert rm.place(rm.request(node_packing_count=8)).hostnames == ("n1",)  # type: ignore[union-attr]


def test_whole_gpus_are_assigned_and_exclusive() -> None:
    rm = ResourceManager(nodes(1, cpus=8, gpus=4))
    req = rm.request(ranks_per_node=2, gpus_per_rank=1, node_packing_count=4)
    a, b = rm.place(req), rm.place(req)
    assert a is not None and b is not None
    assert a.gpu_ids == ("0", "1") and b.gpu_ids == ("2", "3")
    assert rm.place(req) is None, "no GPUs left although CPUs and packing allow it"
    assert rm.place(rm.request(node_packing_count=4)) is not None, "a CPU-only job still fits"
    rm.release(a)
    assert rm.place(req).gpu_ids == ("0", "1")  # type: ignore[union-attr]


def test_fractional_gpus_share_one_gpu_then_the_next() -> None:
    rm = ResourceManager(nodes(1, cpus=8, gpus=2))
    req = rm.request(gpus_per_rank=0.5, node_packing_count=8)
    got = [rm.place(req) for _ in range(4)]
    assert [p.gpu_ids for p in got if p] == [("0",), ("0",), ("1",), ("1",)]
    assert rm.place(req) is None
    rm.release(got[2])  # type: ignore[arg-type]
    assert rm.place(req).gpu_ids == ("1",)  # type: ignore[union-attr]


def test_multi_node_jobs_take_whole_idle_nodes() -> None:
    rm = ResourceManager(nodes(4, cpus=4, gpus=2))
    small = rm.place(rm.request(node_packing_count=4))
    assert small is not None and small.hostnames == ("n0",)
    big = rm.place(rm.request(num_nodes=3, ranks_per_node=4))
    assert big is not None and big.hostnames == ("n1", "n2", "n3") and big.cpu_ids == ()
    assert big.gpu_ids == ("0", "1")
    assert rm.place(rm.request(num_nodes=2)) is None
    assert rm.place(rm.request(node_packing_count=4)).hostnames == ("n0",)  # type: ignore[union-attr]
    rm.release(big)
    assert rm.idle_nodes == 3


def test_exclusive_single_node_job_takes_a_whole_node() -> None:
    rm = ResourceManager(nodes(1, cpus=8))
    assert rm.place(rm.request(ranks_per_node=2, node_packing_count=4, exclusive=True)) is not None
    assert rm.place(rm.request(node_packing_count=4)) is None


def test_jobs_that_can_never_fit_are_refused() -> None:
    rm = ResourceManager(nodes(2, cpus=4, gpus=1))
    with pytest.raises(Unplaceable, match="needs 3 nodes"):
        rm.request(num_nodes=3)
    with pytest.raises(Unplaceable, match="GPUs"):
        rm.request(ranks_per_node=2, gpus_per_rank=1)


def test_requests_are_interned_and_release_restores_everything() -> None:
    rm = ResourceManager(nodes(3, cpus=2, gpus=1))
    req = rm.request(gpus_per_rank=1, node_packing_count=2)
    assert rm.request(gpus_per_rank=1, node_packing_count=2) is req
    placed = [rm.place(req) for _ in range(3)]
    assert rm.place(req) is None
    for p in placed:
        rm.release(p)  # type: ignore[arg-type]
    assert rm.idle_nodes == 3 and rm.free_footprint == pytest.approx(3.0) and not rm.busy
