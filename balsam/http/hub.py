"""Live changes for WebSocket subscribers (the dashboard, ``balsam job ls --watch`` from another host): one poller
of each site's event table for all subscribers of a server."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from balsam import exceptions as exc
from balsam.db.backend import Backend
from balsam.http.schemas import iso

logger = logging.getLogger("balsam.http")
Part = Tuple[int, Backend]
"""One site a server streams changes of: (site id, its backend)."""


class WebSocketHub:
    """Streams job state changes (from each site's event table) to WebSocket subscribers; one poller for all.

    ``parts`` gives the sites to follow, asked again on every poll: a server of this host's sites (``balsam ui``)
    follows a site registered after it started, and tells subscribers that the set of sites changed
    (``{"type": "sites"}``) so the dashboard lists it without a reload.
    """

    def __init__(self, parts: Callable[[], Sequence[Part]], period_s: float = 0.25) -> None:
        self.parts = parts
        self.period_s = period_s
        self.subscribers: Set["asyncio.Queue[Dict[str, Any]]"] = set()
        self._task: Optional["asyncio.Task[None]"] = None
        self._after: Dict[int, int] = {}
        self._started = False

    async def subscribe(self) -> "asyncio.Queue[Dict[str, Any]]":
        """A queue of changes made from now on."""
        queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue(maxsize=10_000)
        if self._task is None or self._task.done():
            self._after, self._started = {}, False
            await asyncio.to_thread(self._read)  # the stream starts after each site's newest event
            self._task = asyncio.get_running_loop().create_task(self._poll())
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: "asyncio.Queue[Dict[str, Any]]") -> None:
        self.subscribers.discard(queue)

    def counts(self) -> List[Dict[str, Any]]:
        """Jobs by state at each site (what a new subscriber is sent first)."""
        now = iso(time.time())
        return [{"type": "counts", "site_id": site_id, "counts": {str(k): v for k, v in backend.count_by("job", {}, "state").items()},
                 "ts": now} for site_id, backend in self.parts()]

    def _read(self) -> List[Dict[str, Any]]:
        msgs: List[Dict[str, Any]] = []
        parts = [(site_id, backend, getattr(backend, "events_since", None)) for site_id, backend in self.parts()]
        first, self._started = not self._started, True
        seen = {site_id for site_id, _, events_since in parts if events_since is not None}
        changed_sites = bool(set(self._after) - seen)
        for site_id in set(self._after) - seen:
            del self._after[site_id]
        for site_id, backend, events_since in parts:
            if events_since is None:
                continue
            if site_id not in self._after:
                last, _ = events_since(None, 0)
                self._after[site_id] = int(last or 0)
                changed_sites = True
                continue
            try:
                last, rows = events_since(self._after[site_id], 5000)
            except (sqlite3.DatabaseError, exc.StoreError) as e:  # one unreadable site does not stop the others' stream
                logger.warning("no changes from site %s: %s", site_id, e)
                continue
            self._after[site_id] = int(last or 0)
            if not rows:
                continue
            msgs.extend({"type": "job", "site_id": site_id, "id": r[1], "state": r[4], "from_state": r[3], "ts": iso(r[2]),
                         "event_id": r[0]} for r in rows)
            msgs.append({"type": "counts", "site_id": site_id, "ts": iso(time.time()),
                         "counts": {str(k): v for k, v in backend.count_by("job", {}, "state").items()}})
        if changed_sites and not first:
            msgs.append({"type": "sites", "site_ids": sorted(seen), "ts": iso(time.time())})
        return msgs

    async def _poll(self) -> None:
        try:
            while self.subscribers:
                msgs = await asyncio.to_thread(self._read)
                for queue in list(self.subscribers):
                    for m in msgs:
                        if queue.full():
                            break  # a stalled subscriber misses changes; it reloads on reconnect
                        queue.put_nowait(m)
                await asyncio.sleep(self.period_s)
        except RuntimeError:  # the server is shutting down (no more worker threads)
            pass
        except Exception:  # the poller restarts with the next subscriber
            logger.exception("the WebSocket poller failed")
