"""The resource manager: which nodes, CPUs and GPUs of the allocation are busy, and where a job fits.

Rules (Balsam's, with its gaps filled):

- A single-node job needs ``max(1, ranks_per_node * threads_per_rank // threads_per_core)`` idle CPUs,
  ``ranks_per_node * gpus_per_rank`` GPUs and ``1 / node_packing_count`` of the node's occupancy. Placement is
  first fit over the nodes in allocation order; CPUs are the lowest idle ids (contiguous when possible).
- A job asking for more CPUs than a node has gets the whole node (it oversubscribes only itself).
- GPUs: a whole number of GPUs takes idle GPUs; a fraction below one shares a GPU with other fractional jobs
  (the most loaded GPU that still fits, so GPUs fill up one at a time). A job that needs more GPUs than a node
  has can never run: :class:`Unplaceable`.
- A multi-node job takes whole idle nodes, with every CPU and GPU on them.
- ``exclusive`` (an MPI launch on a machine whose mpirun cannot pack) makes a single-node job take a whole node.

Nothing here starts processes or talks to the DB: it is bookkeeping, cheap enough to run for every job of a
flood (the nodes with room are kept in a sorted list, so full nodes cost nothing to skip).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from balsam.exceptions import LauncherError

EPS = 1e-9


class Unplaceable(LauncherError):
    """A job that no node of this launcher could ever hold (it fails instead of waiting forever)."""


@dataclass(frozen=True, eq=False)
class Request:
    """What one job needs, checked once against the node shape. Requests are interned per resource manager
    (one object per shape), so they compare and hash by identity: cheap in the placement loop."""

    num_nodes: int
    cpus: int
    gpus: float
    occupancy: float

    @property
    def footprint(self) -> float:
        """Nodes' worth of the allocation the job uses (``num_nodes / node_packing_count``)."""
        return self.num_nodes * self.occupancy if self.num_nodes == 1 else float(self.num_nodes)


@dataclass(frozen=True)
class Placement:
    """Where a job runs: node indices and host names, and (single-node jobs) its CPU and GPU ids."""

    nodes: Tuple[int, ...]
    hostnames: Tuple[str, ...]
    cpu_ids: Tuple[int, ...]
    gpu_ids: Tuple[str, ...]
    occupancy: float
    gpu_share: float
    """GPU load this job adds to each of its GPUs (1.0 for whole GPUs, the fraction when sharing)."""

    @property
    def whole_nodes(self) -> bool:
        return len(self.nodes) > 1 or self.occupancy >= 1.0 - EPS


class NodeState:
    """One node's busy and idle resources."""

    __slots__ = ("index", "hostname", "cpu_ids", "gpu_ids", "idle_cpus", "gpu_load", "occupancy", "num_jobs")

    def __init__(self, index: int, hostname: str, cpu_ids: Sequence[int], gpu_ids: Sequence[str]) -> None:
        self.index = index
        self.hostname = hostname
        self.cpu_ids: Tuple[int, ...] = tuple(cpu_ids)
        self.gpu_ids: Tuple[str, ...] = tuple(gpu_ids)
        self.idle_cpus: List[int] = sorted(self.cpu_ids)
        self.gpu_load: Dict[str, float] = {g: 0.0 for g in self.gpu_ids}
        self.occupancy = 0.0
        self.num_jobs = 0

    @property
    def is_idle(self) -> bool:
        return self.num_jobs == 0

    @property
    def has_room(self) -> bool:
        return self.occupancy < 1.0 - EPS and bool(self.idle_cpus)

    def _gpus_for(self, gpus: float) -> Optional[List[str]]:
        if gpus <= 0:
            return []
        if gpus < 1.0:
            best: Optional[str] = None
            for g in self.gpu_ids:
                load = self.gpu_load[g]
                if load + gpus <= 1.0 + EPS and (best is None or load > self.gpu_load[best]):
                    best = g
            return None if best is None else [best]
        need = math.ceil(gpus - EPS)
        idle = [g for g in self.gpu_ids if self.gpu_load[g] <= EPS]
        return idle[:need] if len(idle) >= need else None

    def fits(self, req: Request) -> Optional[List[str]]:
        """The GPUs the job would get here, or None if it does not fit."""
        if self.occupancy + req.occupancy > 1.0 + EPS or len(self.idle_cpus) < req.cpus:
            return None
        return self._gpus_for(req.gpus)

    def __repr__(self) -> str:
        return f"NodeState({self.hostname!r}, occupancy={self.occupancy:.2f}, idle_cpus={len(self.idle_cpus)})"


class ResourceManager:
    """Tracks an allocation's nodes and places jobs on them."""

    def __init__(self, nodes: Sequence[Tuple[str, Sequence[int], Sequence[str]]]) -> None:
        """``nodes``: (hostname, cpu_ids, gpu_ids) per node, in allocation order."""
        if not nodes:
            raise LauncherError("the launcher has no nodes to run jobs on")
        self.nodes = [NodeState(i, h, cpus, gpus) for i, (h, cpus, gpus) in enumerate(nodes)]
        self._open: List[int] = [n.index for n in self.nodes if n.has_room]
        self.max_cpus = max(len(n.cpu_ids) for n in self.nodes)
        self.max_gpus = max(len(n.gpu_ids) for n in self.nodes)
        self._requests: Dict[Tuple[int, int, int, int, float, int, bool], Request] = {}

    # ------------------------------------------------------------------ requests
    def request(
        self,
        num_nodes: int = 1,
        ranks_per_node: int = 1,
        threads_per_rank: int = 1,
        threads_per_core: int = 1,
        gpus_per_rank: float = 0.0,
        node_packing_count: int = 1,
        exclusive: bool = False,
    ) -> Request:
        """What a job with these resources needs here; Unplaceable if it can never fit."""
        key = (num_nodes, ranks_per_node, threads_per_rank, threads_per_core, gpus_per_rank, node_packing_count, exclusive)
        req = self._requests.get(key)
        if req is None:
            req = self._requests[key] = self._request(*key)
        return req

    def _request(
        self,
        num_nodes: int,
        ranks_per_node: int,
        threads_per_rank: int,
        threads_per_core: int,
        gpus_per_rank: float,
        node_packing_count: int,
        exclusive: bool,
    ) -> Request:
        num_nodes = max(1, int(num_nodes))
        if num_nodes > len(self.nodes):
            raise Unplaceable(f"needs {num_nodes} nodes; this launcher has {len(self.nodes)}")
        gpus = max(0.0, float(ranks_per_node) * float(gpus_per_rank))
        if math.ceil(gpus - EPS) > self.max_gpus:
            raise Unplaceable(f"needs {gpus:g} GPUs per node; the nodes have {self.max_gpus}")
        if num_nodes > 1:
            return Request(num_nodes, self.max_cpus, gpus, 1.0)
        cpus = max(1, int(ranks_per_node) * int(threads_per_rank) // max(1, int(threads_per_core)))
        occupancy = 1.0 if exclusive else 1.0 / max(1, int(node_packing_count))
        if cpus > self.max_cpus:
            cpus, occupancy = self.max_cpus, 1.0  # more than a node holds: the whole node, oversubscribed
        return Request(1, cpus, gpus, occupancy)

    # ------------------------------------------------------------------ placement
    def place(self, req: Request) -> Optional[Placement]:
        """Reserve resources for ``req`` (first fit); None if nothing fits now."""
        if req.num_nodes > 1:
            return self._place_multi(req)
        for i in self._open:
            node = self.nodes[i]
            gpus = node.fits(req)
            if gpus is None:
                continue
            cpus = node.idle_cpus[: req.cpus]
            del node.idle_cpus[: req.cpus]
            share = req.gpus if req.gpus < 1.0 else 1.0
            for g in gpus:
                node.gpu_load[g] += share
            node.occupancy += req.occupancy
            node.num_jobs += 1
            if not node.has_room:
                self._open.remove(i)
            return Placement((i,), (node.hostname,), tuple(cpus), tuple(gpus), req.occupancy, share)
        return None

    def _place_multi(self, req: Request) -> Optional[Placement]:
        chosen = [n for n in self.nodes if n.is_idle][: req.num_nodes]
        if len(chosen) < req.num_nodes:
            return None
        for node in chosen:
            node.idle_cpus = []
            for g in node.gpu_ids:
                node.gpu_load[g] = 1.0
            node.occupancy = 1.0
            node.num_jobs = 1
            self._close(node.index)
        first = chosen[0]
        return Placement(tuple(n.index for n in chosen), tuple(n.hostname for n in chosen), (), first.gpu_ids, 1.0, 1.0)

    def release(self, placement: Placement) -> None:
        """Give a finished job's resources back."""
        if len(placement.nodes) > 1:
            for i in placement.nodes:
                node = self.nodes[i]
                node.idle_cpus = sorted(node.cpu_ids)
                for g in node.gpu_ids:
                    node.gpu_load[g] = 0.0
                node.occupancy = 0.0
                node.num_jobs = 0
                self._reopen(i)
            return
        node = self.nodes[placement.nodes[0]]
        for c in placement.cpu_ids:
            bisect.insort(node.idle_cpus, c)
        for g in placement.gpu_ids:
            node.gpu_load[g] = max(0.0, node.gpu_load[g] - placement.gpu_share)
        node.num_jobs -= 1
        node.occupancy = 0.0 if node.num_jobs == 0 else max(0.0, node.occupancy - placement.occupancy)
        if node.has_room:
            self._reopen(node.index)

    def _close(self, i: int) -> None:
        k = bisect.bisect_left(self._open, i)
        if k < len(self._open) and self._open[k] == i:
            del self._open[k]

    def _reopen(self, i: int) -> None:
        k = bisect.bisect_left(self._open, i)
        if k == len(self._open) or self._open[k] != i:
            self._open.insert(k, i)

    # ------------------------------------------------------------------ views
    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def idle_nodes(self) -> int:
        """Nodes with nothing running."""
        return sum(1 for n in self.nodes if n.is_idle)

    @property
    def free_footprint(self) -> float:
        """Unused node fractions summed over the nodes (what acquisition may still fill)."""
        return sum(max(0.0, 1.0 - n.occupancy) for n in self.nodes if n.idle_cpus)

    @property
    def busy(self) -> bool:
        return any(n.num_jobs for n in self.nodes)

    @property
    def has_room(self) -> bool:
        """False when no node can take any job (every node full)."""
        return bool(self._open)

    def describe(self) -> str:
        """One line for the log: nodes, CPUs and GPUs."""
        n = self.nodes[0]
        gpus = f", {len(n.gpu_ids)} GPUs" if n.gpu_ids else ""
        hosts = ", ".join(x.hostname for x in self.nodes[:4]) + (", ..." if len(self.nodes) > 4 else "")
        return f"{len(self.nodes)} node(s) [{hosts}] with {len(n.cpu_ids)} CPUs{gpus} each"
