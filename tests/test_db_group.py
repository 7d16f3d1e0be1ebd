"""Group commit: calls waiting together share one transaction; an urgent call (a launcher's acquire) found
waiting with others commits first, in a transaction of its own, so it waits for nobody else's writes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List

import pytest


def test_calls_waiting_together_share_one_transaction(store: Any) -> None:
    from balsam.db.group import GroupWriter

    # No time bound on a group here: on a loaded machine the writer thread can be off the CPU past the 5 ms bound
    # between two calls, and the group would end for that (the bound is tested on its own below).
    writer = GroupWriter(store, max_group_s=60)
    gate, started = threading.Event(), threading.Event()
    try:
        writer.submit(lambda: (started.set(), gate.wait(10)))
        assert started.wait(10)  # the writer holds the first call; the rest queue behind it
        rest = [writer.submit(lambda i=i: i) for i in range(20)]
        gate.set()
        assert [f.result(timeout=10) for f in rest] == list(range(20))
        assert writer.groups == 2, "the 20 calls that waited together committed once"
    finally:
        writer.stop()


def test_an_urgent_call_commits_ahead_of_the_others_waiting(store: Any) -> None:
    from balsam.db.group import GroupWriter

    writer = GroupWriter(store, max_group_s=60)  # no time bound on a group (see above)
    gate, started = threading.Event(), threading.Event()
    order: List[str] = []

    async def main() -> None:
        first = writer.submit_async(lambda: (started.set(), gate.wait(10), order.append("first")))
        while not started.is_set():  # the writer holds the first call; the rest queue behind it
            await asyncio.sleep(0.01)
        later = [writer.submit_async(lambda i=i: order.append(f"status {i}")) for i in range(3)]
        urgent = writer.submit_async(lambda: order.append("acquire"), urgent=True)
        gate.set()
        await urgent
        await asyncio.gather(first, *later)

    try:
        asyncio.run(main())
    finally:
        writer.stop()
    assert order == ["first", "acquire", "status 0", "status 1", "status 2"]
    assert writer.groups == 3, "the acquire committed in a transaction of its own, then the status batches in one"


@pytest.mark.parametrize("max_group_s", [0.01, 10.0], ids=["group out of time", "group with time left"])
def test_an_urgent_call_arriving_during_a_group_goes_next(store: Any, max_group_s: float) -> None:
    """An acquire that arrives while a group of status batches runs commits right after the call running then:
    the group ends there (whether or not its time ran out) and the rest of it commits after the acquire."""
    from balsam.db.group import GroupWriter

    writer = GroupWriter(store, max_group_s=max_group_s)
    gate, started, slow_gate, slow_started = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    order: List[str] = []

    def slow() -> None:
        slow_started.set()
        slow_gate.wait(10)
        order.append("status 0")

    async def main() -> None:
        first = writer.submit_async(lambda: (started.set(), gate.wait(10), order.append("first")))
        while not started.is_set():
            await asyncio.sleep(0.01)
        later = [writer.submit_async(slow)] + [writer.submit_async(lambda i=i: order.append(f"status {i}")) for i in (1, 2)]
        gate.set()
        while not slow_started.is_set():  # the three status calls are one group; its first is running
            await asyncio.sleep(0.01)
        urgent = writer.submit_async(lambda: order.append("acquire"), urgent=True)
        await asyncio.sleep(0.05)
        slow_gate.set()
        await urgent
        await asyncio.gather(first, *later)

    try:
        asyncio.run(main())
    finally:
        writer.stop()
    assert order == ["first", "status 0", "acquire", "status 1", "status 2"]


def test_the_wal_is_copied_back_beside_the_writer_not_in_its_commits(store: Any) -> None:
    """Checkpoints (copying the WAL back into the database file, with an fsync) run on the writer's own thread
    beside the writes, not inside a group's COMMIT while every other writer of the site waits for its lock."""
    import sqlite3
    import time

    from balsam.db.group import SAFETY_CHECKPOINT_PAGES, GroupWriter

    def main_file_rows() -> int:
        """Rows in the database file itself (``immutable``: SQLite reads no WAL): what checkpoints copied back."""
        conn = sqlite3.connect(f"file:{store.db_path}?immutable=1", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM app WHERE name LIKE 'ckpt-%'").fetchone()[0])
        finally:
            conn.close()

    writer = GroupWriter(store, checkpoint_s=0.01)
    try:
        assert writer.call(lambda: store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == SAFETY_CHECKPOINT_PAGES
        for i in range(5):  # far fewer pages than any commit would checkpoint by itself
            writer.call(lambda i=i: store.conn.execute(
                "INSERT INTO app(name, site_id, kind, serialized_class, created, last_update) VALUES (?, 1, 'shell', '', 0, 0)",
                (f"ckpt-{i}",)))
        deadline = time.monotonic() + 10
        while main_file_rows() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert main_file_rows() == 5, "the checkpoint thread copied the committed groups back into the database file"
    finally:
        writer.stop()
    assert writer._checkpointer is not None and not writer._checkpointer.is_alive(), "stop() ends the checkpoint thread"
