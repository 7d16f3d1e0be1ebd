"""Writes a relay keeps for a site that has not applied them yet (offline, or busy): provisional handles.

Through a relay, every write is a command for the site that owns the row. When the site does not answer in time,
the write is not lost and not an error: the relay keeps the command, and the call returns a handle saying so.
An object whose write is queued (a Job, BatchJob or App saved or deleted, a DAG saved) carries the command in
``obj.queued_command``, and ``obj.refresh_from_db()`` shows the outcome: the row as the site wrote it, the site's
refusal raised as its error, or :class:`~balsam.exceptions.CommandPending` while the site has still not synced. A
bulk write (``Job.objects.filter(...).update(...)`` / ``.delete()``, a DAG instance's ``kill()`` or
``retry_failed()``) returns a :class:`WriteCount`, an ``int`` whose ``queued`` lists the :class:`QueuedWrite`
commands its sites have yet to apply.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from balsam.exceptions import CommandPending

if TYPE_CHECKING:
    from balsam._api.base import Model
    from balsam._api.sites import SiteRef

M = TypeVar("M", bound="Model")

logger = logging.getLogger(__name__)


class QueuedWrite:
    """One write the relay keeps for its site: ``command_id``, the ``site``, ``what`` it does and the relay's
    ``message`` ("queued for site polaris (offline since ...): ...")."""

    def __init__(self, site: "SiteRef", command_id: int, what: str, message: str = "", rows: int = 0) -> None:
        self.site = site
        self.command_id = int(command_id)
        self.what = what
        self.message = message or f"queued for site {site.name} as command {command_id}"
        self.rows = rows
        """How many rows the write covers (for a bulk write; 0 when not counted)."""

    @classmethod
    def from_pending(cls, site: "SiteRef", error: CommandPending, what: str, rows: int = 0) -> "QueuedWrite":
        """The handle of a write the relay answered with CommandPending (re-raised when it names no command)."""
        if error.command_id is None:
            raise error
        logger.warning("%s: %s", what, error)
        return cls(site, error.command_id, what, str(error), rows)

    def state(self) -> str:
        """``pending``, ``applied`` or ``rejected``, as the relay knows it now."""
        return str(self.site.backend.queued_command(self.command_id)["state"])

    def result(self) -> Any:
        """What the site answered once it applied the write; its refusal raised as the site's error;
        CommandPending while it is still queued."""
        answer = self.site.backend.queued_command(self.command_id)
        if answer["state"] == "rejected":
            raise answer["error"]
        if answer["state"] != "applied":
            raise CommandPending(f"{self.what} still queued at the relay as command {self.command_id}: site {self.site.name} "
                                 "has not synced yet ('balsam site ls' shows when it was last seen)", self.command_id)
        return answer.get("result")

    def __repr__(self) -> str:
        return f"QueuedWrite({self.what!r}, site={self.site.name!r}, command_id={self.command_id})"


class WriteCount(int):
    """How many rows a bulk write changed, counting those queued for offline sites; ``queued`` holds the
    :class:`QueuedWrite` of each site that has not applied its part yet (empty when all were applied)."""

    queued: List[QueuedWrite]

    def __new__(cls, n: int, queued: Optional[Iterable[QueuedWrite]] = None) -> "WriteCount":
        obj = super().__new__(cls, n)
        obj.queued = list(queued or ())
        return obj


def resolve_all(objects: Sequence[M], refresh: Callable[[List[M]], None]) -> List[M]:
    """Resolve the queued writes of ``objects`` (one request per command): creates get their ids, applied changes
    are read back (``refresh``), applied deletes leave their objects deleted. Returns the objects still queued; a
    refused write raises the site's error."""
    answers: Dict[Tuple[Path, int], Dict[str, Any]] = {}
    waiting: List[M] = []
    changed: List[M] = []
    for obj in objects:
        queued = obj.__dict__.get("_queued")
        if queued is None:
            continue
        site = obj.__dict__["_site"]
        key = (site.path, int(queued[0]))
        if key not in answers:
            answers[key] = site.backend.queued_command(queued[0])
        if answers[key]["state"] not in ("applied", "rejected"):
            waiting.append(obj)
            continue
        if not obj._settle(answers[key]) and queued[2] != "create":
            changed.append(obj)
    if changed:
        refresh(changed)
    return waiting
