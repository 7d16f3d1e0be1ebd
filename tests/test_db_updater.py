"""The StatusUpdater: batched writes, per-job order, refusals reported, drained on close, retried on failure."""

from __future__ import annotations

import threading
from typing import Any, List, Sequence

from balsam.api import Job
from balsam.db.jobs import StateChange
from balsam.db.updater import Rejected, StatusUpdater, store_sink
from balsam.exceptions import StoreError


def _held(store: Any, jobs: Any) -> int:
    """Lock jobs to a new lease (what a launcher's acquire does); returns the session id."""
    from balsam.db.sessions import create_session

    with store.write() as conn:
        sid = create_session(conn, host="test")
        conn.execute("UPDATE job SET session_id=? WHERE id IN (SELECT value FROM json_each(?))", (sid, str([j.id for j in jobs])))
    return int(sid)


def test_several_transitions_of_one_job_apply_in_order(hello: Any, store: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"j{i}", say_hello_to="x", save=False) for i in range(50)])
    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    sid = _held(store, jobs)  # acquired, as a launcher does, so it may mark them RUNNING
    updater = StatusUpdater(store_sink(store), period_s=10).start()
    for state in ("RUNNING", "RUN_DONE", "POSTPROCESSED"):
        for job in jobs:
            updater.put(job.id, state, data={"step": state}, session_id=sid if state == "RUNNING" else None)
    assert updater.close(timeout=10)
    assert store.execute("SELECT count(*) FROM job WHERE state='JOB_FINISHED'")[0][0] == 50
    assert [e.to_state for e in jobs[7].history()] == ["STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert updater.written_total == 150 and updater.rejected_total == 0


def test_refused_changes_are_reported_not_fatal(hello: Any, store: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    seen: List[Rejected] = []
    updater = StatusUpdater(store_sink(store), on_rejected=seen.append)
    updater.put(job.id, "RUNNING")  # STAGED_IN -> RUNNING is illegal
    updater.put(job.id, "PREPROCESSED")
    assert updater.flush()
    assert Job.objects.get(id=job.id).state == "PREPROCESSED"
    assert [c.state for c, _ in seen[0]] == ["RUNNING"]


def test_timestamp_is_when_it_happened(hello: Any, store: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    updater = StatusUpdater(store_sink(store))
    updater.put(job.id, "PREPROCESSED", timestamp=1000.0)
    updater.flush()
    assert job.history()[-1].timestamp.timestamp() == 1000.0


def test_a_failing_sink_keeps_the_batch_and_retries(hello: Any, store: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    real = store_sink(store)
    calls = {"n": 0}

    def flaky(changes: Sequence[StateChange]) -> Rejected:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreError("disk full")
        return real(changes)

    updater = StatusUpdater(flaky, period_s=0.01, retry_period_s=0.01).start()
    updater.put(job.id, "PREPROCESSED")
    assert updater.close(timeout=10)
    assert calls["n"] == 2
    assert Job.objects.get(id=job.id).state == "PREPROCESSED"


def test_puts_from_many_threads(hello: Any, store: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"j{i}", say_hello_to="x", save=False) for i in range(400)])
    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    sid = _held(store, jobs)
    updater = StatusUpdater(store_sink(store), period_s=0.01, max_batch=37).start()

    def worker(part: List[Any]) -> None:
        for job in part:
            updater.put(job.id, "RUNNING", session_id=sid)
            updater.put(job.id, "RUN_DONE", fields={"return_code": 0}, session_id=sid)

    threads = [threading.Thread(target=worker, args=(jobs[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert updater.close(timeout=10)
    assert store.execute("SELECT count(*) FROM job WHERE state='RUN_DONE' AND return_code=0")[0][0] == 400
