"""Node adapters: each scheduler's way of naming an allocation's nodes, host-list expansion edge cases, CPU
and GPU ids, the GPU visibility variable, and the job id from the environment."""

from __future__ import annotations

import socket

import pytest

from balsam.exceptions import ConfigError, LauncherError
from balsam.platforms.nodes import (
    ComputeNode,
    default_gpu_ids,
    expand_hostlist,
    get_node_adapter,
    gpu_visibility_env,
    node_adapter_names,
    parse_nodefile,
    parse_partname,
)
from balsam.platforms.nodes.lsf import LSFNodes
from balsam.platforms.nodes.nodelist import parse_pe_hostfile


@pytest.mark.parametrize(
    "expr, hosts",
    [
        ("nid[00010-00012,00020],login1", ["nid00010", "nid00011", "nid00012", "nid00020", "login1"]),
        ("nid0[3038-3039,8241]", ["nid03038", "nid03039", "nid08241"]),
        ("node1", ["node1"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("a[1,3],b[5]-ib", ["a1", "a3", "b5-ib"]),
        ("x1000c0s0b0n0,x1000c0s0b0n1", ["x1000c0s0b0n0", "x1000c0s0b0n1"]),
        (" gpu[098-101] ", ["gpu098", "gpu099", "gpu100", "gpu101"]),
    ],
)
def test_slurm_hostlists_expand(expr, hosts):
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("expr", ["nid[1-3", "nid1-3]", "nid[3-1]", "nid[a-b]", "nid[1,,x]"])
def test_malformed_hostlists_are_clear_errors(expr):
    with pytest.raises(LauncherError, match="cannot parse node list"):
        expand_hostlist(expr)


def test_node_files_and_partnames():
    assert parse_nodefile("x1.hsn\nx1.hsn\nx2.hsn\n\n# comment\nx3.hsn x4.hsn,x5.hsn\n") == ["x1.hsn", "x2.hsn", "x3.hsn", "x4.hsn", "x5.hsn"]
    assert parse_partname("3841-3843,3845") == ["nid03841", "nid03842", "nid03843", "nid03845"]
    assert parse_pe_hostfile("node1 4 all.q@node1 UNDEFINED\nnode2 4 all.q@node2 UNDEFINED\n") == ["node1", "node2"]


def test_slurm_adapter():
    env = {"SLURM_JOB_NODELIST": "nid[001-002]", "SLURM_JOB_ID": "4242"}
    slurm = get_node_adapter("slurm")
    assert slurm.hostnames(env) == ["nid001", "nid002"] and slurm.scheduler_job_id(env) == 4242
    assert slurm.hostnames({"SLURM_NODELIST": "a,b"}) == ["a", "b"]
    with pytest.raises(LauncherError, match="SLURM_JOB_NODELIST is not set"):
        slurm.hostnames({})
    assert slurm.scheduler_job_id({}) is None


def test_pbs_adapter_reads_the_nodefile(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov\n" * 4 + "x3006c0s19b0n0.hsn.cm.polaris.alcf.anl.gov\n")
    pbs = get_node_adapter("pbs")
    env = {"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "1234567.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"}
    assert pbs.hostnames(env) == ["x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov", "x3006c0s19b0n0.hsn.cm.polaris.alcf.anl.gov"]
    assert pbs.scheduler_job_id(env) == 1234567
    with pytest.raises(LauncherError, match="cannot read the node file"):
        pbs.hostnames({"PBS_NODEFILE": str(tmp_path / "missing")})


def test_cobalt_adapter_prefers_partname_then_nodefile(tmp_path):
    cobalt = get_node_adapter("cobalt")
    assert cobalt.hostnames({"COBALT_PARTNAME": "10-11,20", "COBALT_JOBID": "104927"}) == ["nid00010", "nid00011", "nid00020"]
    assert cobalt.scheduler_job_id({"COBALT_JOBID": "104927"}) == 104927
    nodefile = tmp_path / "cobalt.nodes"
    nodefile.write_text("thetagpu05\nthetagpu06\n")
    assert cobalt.hostnames({"COBALT_PARTNAME": "thetagpu05", "COBALT_NODEFILE": str(nodefile)}) == ["thetagpu05", "thetagpu06"]
    assert cobalt.hostnames({"COBALT_PARTNAME": "cc012"}) == ["cc012"]


def test_lsf_adapter_skips_the_launch_node(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("batch3\n" + "a01n01\n" * 42 + "a01n02\n" * 42)
    env = {"LSB_DJOB_HOSTFILE": str(hostfile), "LSB_JOBID": "806290"}
    assert get_node_adapter("lsf").hostnames(env) == ["a01n01", "a01n02"]
    assert LSFNodes(skip_launch_node=False).hostnames(env) == ["batch3", "a01n01", "a01n02"]
    assert get_node_adapter("lsf").scheduler_job_id(env) == 806290


def test_sge_local_and_hostlist_adapters(tmp_path):
    pe = tmp_path / "pe_hostfile"
    pe.write_text("node7 2 all.q@node7 UNDEFINED\n")
    assert get_node_adapter("sge").hostnames({"PE_HOSTFILE": str(pe), "JOB_ID": "12"}) == ["node7"]
    assert get_node_adapter("sge").hostnames({"BALSAM_HOSTNAME": "me"}) == ["me"]
    assert get_node_adapter("local").hostnames({}) == [socket.gethostname()]
    assert get_node_adapter("local").scheduler_job_id({"BALSAM_LOCAL_JOB_ID": "999"}) == 999
    assert get_node_adapter("hostlist").hostnames({"BALSAM_LAUNCHER_NODES": "h1, h2 h1"}) == ["h1", "h2"]
    with pytest.raises(LauncherError, match="BALSAM_LAUNCHER_NODES is not set"):
        get_node_adapter("hostlist").hostnames({})


def test_a_launcher_partition_overrides_the_allocation():
    env = {"SLURM_JOB_NODELIST": "nid[1-4]", "BALSAM_LAUNCHER_NODES": "nid3,nid4"}
    assert get_node_adapter("slurm").hostnames(env) == ["nid3", "nid4"]


def test_nodes_carry_cpu_and_gpu_ids():
    aurora_tiles = default_gpu_ids(6, tiles_per_gpu=2)
    assert aurora_tiles[:3] == ["0.0", "0.1", "1.0"] and len(aurora_tiles) == 12
    nodes = get_node_adapter("slurm").nodes({"SLURM_JOB_NODELIST": "n[1-2]"}, cpus_per_node=4, gpu_ids=aurora_tiles)
    assert nodes[1] == ComputeNode("n2", (0, 1, 2, 3), tuple(aurora_tiles))
    assert get_node_adapter("local").nodes({}, cpus_per_node=2, gpus_per_node=4)[0].gpu_ids == ("0", "1", "2", "3")
    assert len(get_node_adapter("local").nodes({})[0].cpu_ids) >= 1
    with pytest.raises(ConfigError, match="lists 2 GPUs"):
        get_node_adapter("local").nodes({}, gpus_per_node=4, gpu_ids=["0", "1"])


def test_gpu_visibility_variables():
    assert gpu_visibility_env("CUDA_VISIBLE_DEVICES", ["3", "2"]) == {"CUDA_VISIBLE_DEVICES": "3,2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert gpu_visibility_env("ROCR_VISIBLE_DEVICES", ["0", "7"]) == {"ROCR_VISIBLE_DEVICES": "0,7"}
    assert gpu_visibility_env("HIP_VISIBLE_DEVICES", ["1"]) == {"HIP_VISIBLE_DEVICES": "1"}
    assert gpu_visibility_env("ZE_AFFINITY_MASK", ["0.0", "0.1"]) == {"ZE_AFFINITY_MASK": "0.0,0.1"}
    assert gpu_visibility_env("CUDA_VISIBLE_DEVICES", []) == {}
    with pytest.raises(ConfigError, match="unknown GPU variable"):
        gpu_visibility_env("GPUS", ["0"])


def test_registry():
    assert node_adapter_names() == ["cobalt", "hostlist", "local", "lsf", "pbs", "sge", "slurm"]
    with pytest.raises(ConfigError, match="unknown node adapter"):
        get_node_adapter("flux")
