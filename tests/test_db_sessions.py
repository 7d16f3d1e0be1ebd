"""Leases: acquisition filters, concurrent acquirers, heartbeats, expiry, and a lease holder killed with -9."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, List, Tuple

import pytest

from balsam.api import Job, Session
from balsam.db import sessions
from balsam.db.jobsource import JobSource
from balsam.exceptions import SessionExpired, ValidationError


def runnable(hello: Any, n: int, prefix: str = "j", **kwargs: Any) -> List[Any]:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"{prefix}{i}", say_hello_to="x", save=False, **kwargs) for i in range(n)])
    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    return jobs


def test_two_sessions_split_jobs_without_overlap(hello: Any) -> None:
    runnable(hello, 10)
    s1, s2 = Session.objects.create(), Session.objects.create()
    a = s1.acquire_jobs(max_num_jobs=2)
    b = s2.acquire_jobs(max_num_jobs=100)
    assert (len(a), len(b)) == (2, 8)
    assert not {j.id for j in a} & {j.id for j in b}
    assert s1.acquire_jobs(max_num_jobs=5) == []


def test_acquire_filters(hello: Any, adder: Any) -> None:
    runnable(hello, 3, "small", tags={"role": "worker"})
    runnable(hello, 2, "big", num_nodes=4, wall_time_min=30, tags={"role": "leader"})
    adds = Job.objects.bulk_create([adder.submit(workdir=f"add{i}", x=i, save=False) for i in range(2)])
    Job.objects.filter(id=[j.id for j in adds]).update(state="PREPROCESSED")
    s = Session.objects.create()

    def ids(jobs: List[Any]) -> List[str]:
        return sorted(j.workdir for j in jobs)

    assert ids(s.acquire_jobs(filter_tags={"role": "leader"})) == ["big0", "big1"]
    s.delete()
    s = Session.objects.create()
    assert ids(s.acquire_jobs(app_ids=[adder.__app_id__])) == ["add0", "add1"]
    s.delete()
    s = Session.objects.create()
    assert ids(s.acquire_jobs(serial_only=True)) == ["add0", "add1", "small0", "small1", "small2"]
    s.delete()
    s = Session.objects.create()
    assert ids(s.acquire_jobs(max_wall_time_min=10, max_nodes_per_job=2)) == ["add0", "add1", "small0", "small1", "small2"]
    s.delete()
    s = Session.objects.create()
    assert [j.workdir for j in s.acquire_jobs(sort_by="long_large_first", max_num_jobs=1)] == ["big0"]


def test_aggregate_footprint_packs_small_jobs_into_the_budget(hello: Any) -> None:
    runnable(hello, 2, "two", num_nodes=2)
    runnable(hello, 8, "eighth", node_packing_count=8)
    s = Session.objects.create()
    got = s.acquire_jobs(max_aggregate_nodes=5, sort_by="long_large_first")
    footprint = sum(j.num_nodes / j.node_packing_count for j in got)
    assert footprint == pytest.approx(5.0)
    assert sorted(j.workdir for j in got if j.num_nodes == 2) == ["two0", "two1"]
    assert len(got) == 10


def test_running_keeps_the_lock_and_finishing_releases_it(hello: Any, store: Any) -> None:
    (job,) = runnable(hello, 1)
    s = Session.objects.create()
    (got,) = s.acquire_jobs()
    got.state = "RUNNING"
    got.save()
    assert store.execute("SELECT session_id FROM job WHERE id=?", (job.id,))[0][0] == s.id
    got.state = "RUN_DONE"
    got.save()
    assert store.execute("SELECT session_id FROM job WHERE id=?", (job.id,))[0][0] is None


def test_expired_lease_times_out_running_jobs_and_unlocks_the_rest(hello: Any, store: Any) -> None:
    runnable(hello, 3)
    with store.write() as conn:
        sid = sessions.create_session(conn, host="elsewhere", pid=1)
        got = sessions.acquire(conn, sid, max_num_jobs=3)
        conn.execute("UPDATE job SET state='RUNNING' WHERE id=?", (got[0]["id"],))
        conn.execute("UPDATE session SET heartbeat=heartbeat-1000 WHERE id=?", (sid,))
        expired = sessions.expire_sessions(conn, expiry_s=300, host="here")
    assert expired == [sid]
    states = dict(store.execute("SELECT id, state FROM job"))
    assert states[got[0]["id"]] == "RUN_TIMEOUT"
    assert store.execute("SELECT count(*) FROM job WHERE session_id IS NOT NULL")[0][0] == 0
    event = Job.objects.get(id=got[0]["id"]).history()[-1]
    assert event.to_state == "RUN_TIMEOUT" and "no heartbeat" in event.data["message"]
    with pytest.raises(SessionExpired):
        with store.write() as conn:
            sessions.tick(conn, sid)


def test_a_lapsed_lease_cannot_mark_its_old_jobs_running(hello: Any, store: Any) -> None:
    from balsam.db.jobs import StateChange, apply_state_changes

    runnable(hello, 1)
    with store.write() as conn:
        old = sessions.create_session(conn, host="x", pid=1)
        (job,) = sessions.acquire(conn, old, max_num_jobs=1)
        sessions.release(conn, old)
        new = sessions.create_session(conn, host="x", pid=1)
        assert sessions.acquire(conn, new, max_num_jobs=1)[0]["id"] == job["id"]
        result = apply_state_changes(conn, [StateChange(job["id"], "RUNNING", session_id=old)], strict=False)
    assert result.rejected and "not held by session" in result.rejected[0][1]


def _acquirer(args: Tuple[str, int]) -> List[int]:
    home, rounds = args
    os.environ["BALSAM_HOME"] = home
    from balsam._api import sites

    sites.reset()
    source = JobSource(sites.resolve("test-site").store, host="h", heartbeat_period_s=60).start()
    got: List[int] = []
    for _ in range(rounds):
        got.extend(j["id"] for j in source.acquire(7))
    return got


def test_concurrent_acquirer_processes_never_share_a_job(hello: Any, balsam_home: Path) -> None:
    runnable(hello, 300)
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_acquirer, [(str(balsam_home), 12)] * 4)
    all_ids = [i for r in results for i in r]
    assert len(all_ids) == len(set(all_ids)) == 300


def test_lease_of_a_killed_local_process_is_released_at_once(hello: Any, balsam_home: Path, store: Any) -> None:
    runnable(hello, 4)
    script = textwrap.dedent(f"""
        import os, time
        os.environ["BALSAM_HOME"] = {str(balsam_home)!r}
        from balsam._api import sites
        from balsam.db.jobsource import JobSource
        from balsam.db.jobs import StateChange, apply_state_changes
        store = sites.resolve("test-site").store
        src = JobSource(store, host=store.host).start()
        jobs = src.acquire(4)
        with store.write() as conn:
            apply_state_changes(conn, [StateChange(jobs[0]["id"], "RUNNING", session_id=src.session_id)])
        print("holding", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    source = JobSource(store, host=store.host).start()  # expiry runs when a lease is opened or jobs are acquired
    got = source.acquire(10)
    source.release()
    assert len(got) == 3  # the three unlocked at once; the running one timed out
    states = sorted(r[0] for r in store.execute("SELECT state FROM job"))
    assert states.count("RUN_TIMEOUT") == 1
    assert "is gone" in Job.objects.filter(state="RUN_TIMEOUT").first().history()[-1].data["message"]  # type: ignore[union-attr]


def test_unknown_sort_order_is_refused(hello: Any) -> None:
    s = Session.objects.create()
    with pytest.raises(ValidationError, match="unknown sort order"):
        s.acquire_jobs(sort_by="random")


def test_heartbeat_thread_keeps_the_lease(hello: Any, store: Any) -> None:
    runnable(hello, 1)
    source = JobSource(store, host=store.host, heartbeat_period_s=0.05).start()
    first = store.execute("SELECT heartbeat FROM session WHERE id=?", (source.session_id,))[0][0]
    time.sleep(0.3)
    later = store.execute("SELECT heartbeat FROM session WHERE id=?", (source.session_id,))[0][0]
    source.release()
    assert later > first
    assert store.execute("SELECT count(*) FROM session")[0][0] == 0


def test_jobs_needing_more_gpus_than_the_nodes_have_are_left_unlocked(hello: Any, store: Any) -> None:
    runnable(hello, 1, "cpu")
    runnable(hello, 1, "one-gpu", gpus_per_rank=1)
    runnable(hello, 1, "four-gpus", gpus_per_rank=1, ranks_per_node=4)
    runnable(hello, 1, "half-gpu", gpus_per_rank=0.5)
    with store.write() as conn:
        sid = sessions.create_session(conn, host="h", label=sessions.capacity_label("launcher (mpi)", 1, 8, 0))
        got = sessions.acquire(conn, sid, max_gpus_per_node=0)
        assert [j["workdir"] for j in got] == ["cpu0"]
        sid2 = sessions.create_session(conn, host="h")
        assert sorted(j["workdir"] for j in sessions.acquire(conn, sid2, max_gpus_per_node=1)) == ["half-gpu0", "one-gpu0"]
        left = conn.execute("SELECT workdir FROM job WHERE session_id IS NULL").fetchall()
    assert left == [("four-gpus0",)]
    assert sessions.label_capacity(sessions.capacity_label("launcher (mpi)", 2, 8, 4)) == (2, 8, 4)
    assert sessions.label_capacity("launcher (mpi)") is None


def _order_fixture(hello: Any) -> dict:
    shapes = {"a": (2, 1, 10), "b": (1, 1, 5), "c": (1, 4, 5), "d": (1, 4, 30), "e": (1, 1, 5)}
    jobs = {k: hello.submit(workdir=k, say_hello_to="x", num_nodes=n, node_packing_count=p, wall_time_min=w)
            for k, (n, p, w) in shapes.items()}
    Job.objects.filter(id=[j.id for k, j in jobs.items() if k != "e"]).update(state="PREPROCESSED")
    Job.objects.filter(id=[jobs["e"].id]).update(state="RESTART_READY")
    return {j.id: k for k, j in jobs.items()}


@pytest.mark.parametrize("sort_by, expected", [
    (None, "dcbea"),  # Balsam's default: num_nodes asc, node_packing_count desc, wall_time_min desc
    ("long_large_first", "dabce"),  # wall_time_min desc, num_nodes desc
    ("short_small_first", "bcead"),  # wall_time_min asc, num_nodes asc
])
def test_acquisition_order_spans_both_runnable_states(hello: Any, sort_by: Any, expected: str) -> None:
    names = _order_fixture(hello)
    session = Session.objects.create()
    assert "".join(names[j.id] for j in session.acquire_jobs(sort_by=sort_by)) == expected


def test_acquisition_order_with_a_limit_takes_the_first_in_order(hello: Any) -> None:
    names = _order_fixture(hello)
    session = Session.objects.create()
    assert "".join(names[j.id] for j in session.acquire_jobs(max_num_jobs=3)) == "dcb"
    assert "".join(names[j.id] for j in session.acquire_jobs(max_num_jobs=3)) == "ea"


def test_a_lease_silent_while_the_disk_was_full_gets_its_expiry_counted_from_when_writes_work_again(
        small_disk: Path) -> None:
    """Nobody could write a heartbeat while the disk was full: a lease is not ended for that silence the moment
    space is back (its launcher still has results to write); it expires only if it stays silent after."""
    import sqlite3

    from balsam._api import sites
    from balsam.exceptions import StoreError
    from balsam.site import init_site
    from tests.helpers import fill

    init_site(small_disk / "site", name="full-site")
    store = sites.resolve("full-site").store
    with store.write() as conn:
        silent = sessions.create_session(conn, host="compute-node-7", pid=1, label="launcher", now=time.time() - 1000)
    fill(small_disk / "filler")
    with pytest.raises((StoreError, sqlite3.OperationalError)):
        with store.write() as conn:  # this process (the agent, say) cannot write either
            for _ in range(2000):
                sessions.create_session(conn, host="compute-node-8", pid=2, label="x" * 1000)
    (small_disk / "filler").unlink()
    with store.write() as conn:
        assert sessions.expire_sessions(conn, expiry_s=300, host="login") == []  # 1000 s silent, but deaf until now
        assert sessions.expire_sessions(conn, expiry_s=300, host="login", now=time.time() + 301) == [silent]


def test_a_lease_counts_as_confirmed_from_when_it_was_asked_not_when_the_answer_was_read() -> None:
    """A launcher stopped (SIGSTOP) between sending a heartbeat and reading its answer counted the lease as confirmed
    when it resumed, though the site had expired it meanwhile and another launcher ran its jobs: it started one of
    them a second time (tests/test_launcher_faults.py, under load in CI). A slow answer stands for the stop here."""
    import time

    from balsam.db.jobsource import Heartbeat

    class SlowAnswer(Heartbeat):
        def __init__(self) -> None:
            self.session_id = 1
            self._init_heartbeat(0.01)
            self.renewed_at -= 100.0  # confirmed long ago
            self.sent: list = []

        def heartbeat(self) -> None:
            self.sent.append(time.monotonic())
            time.sleep(0.5)

    beat = SlowAnswer()
    beat._start_heartbeat()
    deadline = time.monotonic() + 10
    while beat.renewed_at < beat.sent[0] if beat.sent else True:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.01)
    beat._stop_heartbeat()  # the beat under way ends first
    assert beat.sent[-1] - 0.1 < beat.renewed_at <= beat.sent[-1], "as of the last request, not of its answer 0.5 s later"
    assert not beat.fresh(0.2)
