"""Balsam 0.7's small typed specs, usable wherever the API takes the plain dicts they stand for.

Balsam 0.7 exported these from ``balsam.api`` (pydantic models there); code written for it builds app parameters,
transfer slots, job transfers and BatchJob partitions with them::

    parameters = {"mode": AppParameter(required=False, default="explore", help="The simulation mode")}
    transfers = {"input_file": TransferSlot(required=True, direction=TransferDirection.stage_in, local_path="input.nw")}
    Job(..., transfers={"input_file": JobTransferItem(location_alias="laptop", path="/data/input.nw")})
    BatchJob(..., partitions=[BatchJobPartition(job_mode=JobMode.mpi, num_nodes=1)])

Each is a frozen dataclass whose :meth:`to_dict` gives the plain form; :func:`plain` turns any of them (or leaves
anything else) into that form, so every door checks one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Dict, Union

from balsam.db.states import ValueEnum


class JobMode(ValueEnum):
    """A launcher's mode: ``mpi`` (any job, one launch command each) or ``serial`` (many single-node jobs)."""

    serial = "serial"
    mpi = "mpi"


class TransferDirection(ValueEnum):
    """A transfer slot's direction: staged in before the run, or out after it."""

    stage_in = "in"
    stage_out = "out"


@dataclass(frozen=True)
class AppParameter:
    """An app parameter: required, or optional with a default; ``help`` is free text."""

    required: bool = True
    default: Any = None
    help: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """The ``{"required", "default", "help"}`` dict an ApplicationDefinition's ``parameters`` holds."""
        out: Dict[str, Any] = {"required": self.required, "help": self.help}
        if not self.required:
            out["default"] = self.default
        return out


@dataclass(frozen=True)
class TransferSlot:
    """A named place for data staged in (``direction="in"``) or out, at ``local_path`` in the job's workdir."""

    required: bool
    direction: Union[TransferDirection, str]
    local_path: Union[str, PurePath] = "."
    description: str = ""
    recursive: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """The slot spec an ApplicationDefinition's ``transfers`` holds."""
        return {"required": self.required, "direction": str(self.direction), "local_path": str(self.local_path),
                "description": self.description, "recursive": self.recursive}


@dataclass(frozen=True)
class JobTransferItem:
    """What fills a job's transfer slot: a location alias from settings.yml and an absolute path there."""

    location_alias: str
    path: Union[str, PurePath]

    def to_dict(self) -> Dict[str, Any]:
        """The ``{"location_alias", "path"}`` form (same as the string ``"alias:/path"``)."""
        return {"location_alias": self.location_alias, "path": str(self.path)}


@dataclass(frozen=True)
class BatchJobPartition:
    """A part of a BatchJob's allocation run by its own launcher, with its own mode and tag filter."""

    job_mode: Union[JobMode, str]
    num_nodes: int
    filter_tags: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The ``{"job_mode", "num_nodes", "filter_tags"}`` dict a BatchJob's ``partitions`` holds."""
        return {"job_mode": str(self.job_mode), "num_nodes": self.num_nodes, "filter_tags": dict(self.filter_tags)}


@dataclass(frozen=True)
class AllowedQueue:
    """A queue's limits, as Balsam 0.7's site schema named them (``max_walltime`` is settings.yml's
    ``max_wall_time_min``); ``BatchJob.validate(allowed_queues, ...)`` takes them."""

    max_nodes: int
    max_walltime: int
    max_queued_jobs: int

    def to_dict(self) -> Dict[str, Any]:
        """The ``{"max_nodes", "max_wall_time_min", "max_queued_jobs"}`` policy a site's ``allowed_queues`` holds."""
        return {"max_nodes": self.max_nodes, "max_wall_time_min": self.max_walltime, "max_queued_jobs": self.max_queued_jobs}


_SPECS = (AppParameter, TransferSlot, JobTransferItem, BatchJobPartition, AllowedQueue)


class Record(Dict[str, Any]):
    """A dict whose keys also read as attributes, as Balsam 0.7's models of a site's queues, backfill windows and
    queued BatchJobs did (``site.allowed_queues["debug"].max_nodes``; its ``max_walltime`` is ``max_wall_time_min``)."""

    _ALIASES = {"max_walltime": "max_wall_time_min"}

    def __getattr__(self, name: str) -> Any:
        try:
            return self[self._ALIASES.get(name, name)]
        except KeyError:
            raise AttributeError(f"no {name!r} here (keys: {', '.join(map(str, self)) or 'none'})") from None


def records(value: Any) -> Any:
    """A site's ``{name: {...}}`` or ``{name: [{...}, ...]}`` column with each inner dict a :class:`Record`."""
    if not isinstance(value, dict):
        return value
    return {k: Record(v) if isinstance(v, dict) else [Record(x) if isinstance(x, dict) else x for x in v] if isinstance(v, list) else v
            for k, v in value.items()}


def plain(value: Any) -> Any:
    """One of the specs above as its plain dict; any other value as it is."""
    return value.to_dict() if isinstance(value, _SPECS) else value
