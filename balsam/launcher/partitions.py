"""Partitions: one allocation split into sub-launchers, each with its mode, its nodes and its filter tags.

``-p mpi:2:role=leader -p serial:6:role=worker`` runs an MPI-mode launcher on the first 2 nodes for jobs
tagged ``role=leader`` and a serial-mode launcher on the next 6 for ``role=worker``. Each partition is a
``python -m balsam.launcher`` process whose node adapter sees only its nodes (``BALSAM_LAUNCHER_NODES``). The
parent forwards SIGTERM and SIGINT, and kills a partition still running 15 s after that.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from balsam.db.batch_jobs import parse_partition as parse_partition_spec
from balsam.exceptions import ConfigError, ValidationError
from balsam.platforms.nodes import ComputeNode

logger = logging.getLogger("balsam.launcher")

STRAGGLER_GRACE_S = 15.0


@dataclass(frozen=True)
class Partition:
    """``MODE:N[:k=v,...]``."""

    job_mode: str
    num_nodes: int
    filter_tags: Dict[str, str]


def parse_tags(items: Sequence[str], where: str = "--tag") -> Dict[str, str]:
    """``["k=v", ...]`` -> {k: v}; a malformed item is a ConfigError naming it."""
    out: Dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_partition(text: str) -> Partition:
    """Parse one ``-p`` value (the grammar of :func:`balsam.db.batch_jobs.parse_partition`)."""
    try:
        spec = parse_partition_spec(text)
    except ValidationError as exc:
        raise ConfigError(f"--part: {exc}") from None
    return Partition(spec["job_mode"], spec["num_nodes"], spec["filter_tags"])


def split_nodes(parts: Sequence[Partition], nodes: Sequence[ComputeNode]) -> List[List[ComputeNode]]:
    """Consecutive slices of the allocation, one per partition."""
    need = sum(p.num_nodes for p in parts)
    if need > len(nodes):
        raise ConfigError(f"the partitions ask for {need} nodes but the allocation has {len(nodes)}")
    out: List[List[ComputeNode]] = []
    start = 0
    for p in parts:
        out.append(list(nodes[start : start + p.num_nodes]))
        start += p.num_nodes
    return out


def run_partitions(
    root: Path,
    parts: Sequence[Partition],
    nodes: Sequence[ComputeNode],
    *,
    wall_time_min: float,
    filter_tags: Dict[str, str],
    batch_job_id: Optional[int],
    idle_ttl_s: Optional[float],
) -> int:
    """Start one sub-launcher per partition and wait for them all; returns the first non-zero exit code."""
    from balsam.launcher.nodes import job_base_env
    from balsam.launcher.spawn import python_env, python_module_argv

    slices = split_nodes(parts, nodes)
    started = time.monotonic()
    procs: List[subprocess.Popen] = []  # type: ignore[type-arg]
    for i, (part, part_nodes) in enumerate(zip(parts, slices)):
        tags = dict(filter_tags, **part.filter_tags)
        argv = python_module_argv("balsam.launcher") + ["--site", str(root), "-j", part.job_mode, "-t", repr(wall_time_min)]
        for k, v in tags.items():
            argv += ["--tag", f"{k}={v}"]
        if batch_job_id is not None:
            argv += ["--batch-job-id", str(batch_job_id)]
        if idle_ttl_s is not None:
            argv += ["--idle-ttl", repr(idle_ttl_s)]
        env = python_env(job_base_env(), None)
        env["BALSAM_LAUNCHER_NODES"] = ",".join(n.hostname for n in part_nodes)
        logger.info("partition %d: %s mode on %s, filter tags %s", i, part.job_mode, env["BALSAM_LAUNCHER_NODES"], tags or "none")
        procs.append(subprocess.Popen(argv, env=env, cwd=str(root), stdin=subprocess.DEVNULL))
    forwarded: List[float] = []

    def forward(signum: int, _frame: Any) -> None:
        logger.info("forwarding %s to %d partitions", signal.Signals(signum).name, len(procs))
        forwarded.append(time.monotonic())
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signum)
                except ProcessLookupError:
                    pass

    import threading

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(0.1)
            late = time.monotonic() - started > wall_time_min * 60.0 + STRAGGLER_GRACE_S
            if (forwarded and time.monotonic() - forwarded[0] > STRAGGLER_GRACE_S) or late:
                for p in procs:
                    if p.poll() is None:
                        logger.warning("partition launcher %s did not stop: killing it", p.pid)
                        p.kill()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)
