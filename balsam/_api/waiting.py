"""Waiting on many jobs: ``Job.objects.wait`` and ``Job.objects.as_completed`` (and so ``job.result()``).

Jobs at a site reached through its agent's API (or a relay) are followed on the change stream (the /v1/ws
WebSocket), whose messages name jobs to re-read; a site on this host is polled through its cheap change counter.
:class:`JobWaiting` is the part of ``Job.objects`` that does this; the rest of the manager is in
:mod:`balsam._api.jobs`.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from balsam._api.base import by_site
from balsam.db.states import DONE_STATES
from balsam.exceptions import ValidationError

if TYPE_CHECKING:
    from balsam._api.jobs import Job
    from balsam._api.sites import SiteRef

ALL_COMPLETED = concurrent.futures.ALL_COMPLETED
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
_DONE_NAMES = tuple(sorted(s.value for s in DONE_STATES))
STREAM_RECHECK_S = 30.0
"""Waiting on a change stream, every job still pending is re-read this often anyway (a missed message costs that)."""


def seconds(name: str, value: Any) -> Optional[float]:
    """A wait's ``timeout`` or ``poll_interval``: None or a number of seconds (negative is no wait at all). NaN, which
    no clock reaches, text or a bool is refused by name, instead of waiting forever or failing mid-wait."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return max(float(value), 0.0)
    raise ValidationError(f"{name}: expected a number of seconds or None, got {value!r:.80}")


class WaitResult(NamedTuple):
    """What ``Job.objects.wait`` returns: the jobs that finished and those that did not (yet)."""

    done: List[Job]
    not_done: List[Job]


class JobWaiting:
    """``Job.objects.wait`` and ``Job.objects.as_completed`` (mixed into the job manager)."""

    def bulk_refresh(self, jobs: Sequence[Job]) -> None:  # pragma: no cover - the job manager's
        raise NotImplementedError

    def _done_ids(self, jobs: Sequence[Job]) -> Set[Tuple[int, int]]:
        out: Set[Tuple[int, int]] = set()
        for site, group in by_site(jobs):
            ids = [int(job.id or 0) for job in group]
            for start in range(0, len(ids), 20000):
                chunk = ids[start : start + 20000]
                out.update((site.id, i) for i in site.backend.ids("job", {"id": chunk, "state": list(_DONE_NAMES)}))
        return out

    def _poll(self, jobs: Sequence[Job], timeout: Optional[float], poll_interval: Optional[float]) -> Iterator[List[Job]]:
        """Yield batches of newly finished jobs until all are done or the timeout passes.

        A site reached through its agent's API is followed on its change stream (the /v1/ws WebSocket): the
        stream names jobs that changed, which are then re-read (a message is a hint, the signed read is the
        truth), with a full re-read when the stream had a gap and every ``STREAM_RECHECK_S``. A site without a
        stream (home host: a cheap change counter; a server without the stream) is polled; so is every site when
        ``poll_interval`` is given.
        """
        for job in jobs:
            if job._is_new:
                raise ValidationError("save the job before waiting on it")
        timeout = seconds("timeout", timeout)
        poll_interval = seconds("poll_interval", poll_interval)
        pending = {(job.site_id, job.id): job for job in jobs}
        deadline = None if timeout is None else time.monotonic() + timeout
        sites = {job.__dict__["_site"].path: job.__dict__["_site"] for job in jobs}
        streams: Dict[Path, Any] = {}
        if poll_interval is None:
            for p, s in sites.items():
                stream = s.backend.watch() if s.backend.data_version() is None else None
                if stream is not None:
                    streams[p] = stream
        try:
            if streams and len(streams) == len(sites):
                yield from self._follow(pending, sites, streams, deadline)
                return
            yield from self._poll_rounds(pending, sites, deadline, poll_interval)
        finally:
            for stream in streams.values():
                stream.close()

    def _poll_rounds(self, pending: Dict[Tuple[Any, Any], Job], sites: Dict[Path, SiteRef], deadline: Optional[float],
                     poll_interval: Optional[float]) -> Iterator[List[Job]]:
        versions: Dict[Path, int] = {}
        delay = 0.02
        while pending:
            now_versions = {p: s.backend.data_version() for p, s in sites.items()}
            changed = [s for p, s in sites.items() if now_versions[p] is None or versions.get(p) != now_versions[p]]
            for s in changed:
                versions[s.path] = now_versions[s.path] or 0
            if changed or not versions:
                finished = self._take_done(pending, list(pending.values()))
                if finished:
                    yield finished
                    delay = 0.02
                    continue
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            step = poll_interval if poll_interval is not None else delay
            if deadline is not None:
                step = min(step, max(deadline - time.monotonic(), 0))
            time.sleep(step)
            delay = min(delay * 1.5, 1.0)

    def _take_done(self, pending: Dict[Tuple[Any, Any], Job], candidates: List[Job]) -> List[Job]:
        """The candidates that are done now (removed from ``pending``, refreshed)."""
        done_keys = self._done_ids(candidates)
        finished = [pending.pop(k) for k in [(j.site_id, j.id) for j in candidates] if k in done_keys and k in pending]
        if finished:
            self.bulk_refresh(finished)
        return finished

    def _follow(self, pending: Dict[Tuple[Any, Any], Job], sites: Dict[Path, SiteRef], streams: Dict[Path, Any],
                deadline: Optional[float]) -> Iterator[List[Job]]:
        """``_poll`` over change streams (every site has one): re-read only the jobs a stream says reached a final
        state; everything after a gap or a quiet ``STREAM_RECHECK_S``."""
        recheck = True
        hinted: Set[Tuple[Any, Any]] = set()
        reopen: Set[Path] = set()
        last_full = time.monotonic()
        while pending:
            for path in list(reopen):  # a stream that ended (an agent restart): a new one, then everything is re-read
                fresh = sites[path].backend.watch()
                if fresh is None:  # no stream to be had: poll from here on
                    yield from self._poll_rounds(pending, sites, deadline, None)
                    return
                streams[path] = fresh
                reopen.discard(path)
            if recheck:
                candidates = list(pending.values())
                last_full = time.monotonic()
                recheck = False
            else:
                candidates = [pending[k] for k in hinted if k in pending]
            hinted.clear()
            if candidates:
                finished = self._take_done(pending, candidates)
                if finished:
                    yield finished
                    continue
            if not pending:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            step = max(0.0, last_full + STREAM_RECHECK_S - now)
            if deadline is not None:
                step = min(step, deadline - now)
            step /= len(streams)
            for path, stream in list(streams.items()):
                site_id = sites[path].id
                changes, gap = stream.wait(step)
                hinted.update((site_id, job_id) for job_id, state in changes if state in _DONE_NAMES)
                if gap:
                    recheck = True
                    stream.close()
                    reopen.add(path)
            if time.monotonic() >= last_full + STREAM_RECHECK_S:
                recheck = True

    def wait(
        self,
        jobs: Sequence[Job],
        timeout: Optional[float] = None,
        poll_interval: Optional[float] = None,
        return_when: str = ALL_COMPLETED,
    ) -> "WaitResult":
        """Wait for jobs to finish; returns Balsam's result: ``.done`` and ``.not_done`` (it also unpacks as
        ``done, not_done``, like concurrent.futures.wait)."""
        jobs = list(jobs)
        done: List[Job] = []
        for batch in self._poll(jobs, timeout, poll_interval):
            done.extend(batch)
            if return_when == FIRST_COMPLETED:
                break
        done_set = {id(j) for j in done}
        return WaitResult(done, [j for j in jobs if id(j) not in done_set])

    def as_completed(self, jobs: Sequence[Job], timeout: Optional[float] = None, poll_interval: Optional[float] = None,
                     progress: bool = False) -> Iterator[Job]:
        """Yield jobs as they finish; concurrent.futures.TimeoutError if some are not done by ``timeout``.

        With ``progress``, a live bar (done, failed, running) follows the jobs while you iterate: a widget in
        a notebook, a text line on stderr elsewhere (see :func:`balsam.widgets.progress`).
        """
        jobs = list(jobs)
        seen = 0
        bar = None
        if progress:
            from balsam.widgets import progress as _progress

            bar = _progress(jobs, poll_interval=poll_interval or 1.0)
        try:
            for batch in self._poll(jobs, timeout, poll_interval):
                for job in batch:
                    seen += 1
                    yield job
        finally:
            if bar is not None:
                bar.stop()
        if seen < len(jobs):
            raise concurrent.futures.TimeoutError(f"{len(jobs) - seen} of {len(jobs)} jobs did not finish within {timeout} s")
