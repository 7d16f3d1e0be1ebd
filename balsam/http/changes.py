"""One watch of the site DB for every request waiting for something to change (an idle launcher's acquire).

A launcher with free slots and nothing to run asks for jobs with a wait (``wait_s``): the server holds the
request until a commit might have made jobs runnable. Each waiting request polling ``data_version`` on its own
costs the agent work in proportion to the idle launchers (256 of them polling every 20 ms kept a core busy
doing nothing). :class:`ChangeWatch` instead polls once for all of them, on one thread (one connection, so
successive versions compare), and wakes every waiter when the version moves; it polls only while someone waits.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

POLL_S = 0.02
"""How often the watch looks while someone waits."""


class ChangeWatch:
    """``await wait(timeout)`` returns when a commit was seen after the call began (or after ``timeout``)."""

    def __init__(self, version: Callable[[], Optional[int]], poll_s: float = POLL_S) -> None:
        self.version = version
        self.poll_s = poll_s
        self.polls = 0
        """Versions read (for tests: one poll serves every waiter)."""
        self._executor: Optional[ThreadPoolExecutor] = None
        self._changed: Optional["asyncio.Future[None]"] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._waiting = 0

    async def wait(self, timeout: float) -> None:
        if timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        if self._changed is None or self._changed.done():
            self._changed = loop.create_future()
        changed = self._changed
        self._waiting += 1
        try:
            if self._task is None or self._task.done():
                self._task = loop.create_task(self._poll())
            await asyncio.wait([changed], timeout=timeout)
        finally:
            self._waiting -= 1

    async def _read(self) -> Optional[int]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="balsam-api-watch")
        self.polls += 1
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.version)

    async def _poll(self) -> None:
        try:
            seen = await self._read()
            while self._waiting:
                await asyncio.sleep(self.poll_s)
                now = await self._read()
                if now != seen or now is None:
                    seen = now
                    changed, self._changed = self._changed, None
                    if changed is not None and not changed.done():
                        changed.set_result(None)
                    if now is None:  # nothing cheap to watch: waiters look again each poll
                        continue
        except RuntimeError:  # the server is shutting down (no more threads)
            pass

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


__all__ = ["ChangeWatch", "POLL_S"]
