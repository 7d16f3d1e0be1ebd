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


def test_a_kick_writes_what_waits_without_waiting_for_the_period(hello: Any, store: Any) -> None:
    """A launcher whose jobs all ended kicks its updater: their ends reach the store now, not an hour later."""
    import time

    job = hello.submit(workdir="a", say_hello_to="x")
    updater = StatusUpdater(store_sink(store), period_s=3600).start()
    try:
        updater.put(job.id, "PREPROCESSED")
        updater.kick()
        deadline = time.monotonic() + 60
        while Job.objects.get(id=job.id).state != "PREPROCESSED":
            assert time.monotonic() < deadline, "the kicked change was not written"
            time.sleep(0.01)
        updater.kick()  # nothing waits: no write, no error
        assert updater.written_total == 1
    finally:
        assert updater.close(timeout=10)


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


def _running_jobs(hello: Any, store: Any, n: int) -> "tuple[List[Any], int]":
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"r{i}", say_hello_to="x", save=False) for i in range(n)])
    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    sid = _held(store, jobs)
    updater = StatusUpdater(store_sink(store))
    for job in jobs:
        updater.put(job.id, "RUNNING", session_id=sid)
    assert updater.close(timeout=10)
    return jobs, sid


def test_a_change_the_store_refuses_is_dropped_and_the_rest_go_through(hello: Any, store: Any, caplog: Any) -> None:
    """A change that makes the whole write fail (here: data JSON cannot hold) does not block the batch or later
    batches: it is found, logged with its reason, dropped; the job gets RUN_ERROR with the reason (defect 2)."""
    jobs, sid = _running_jobs(hello, store, 9)
    seen: List[Rejected] = []
    updater = StatusUpdater(store_sink(store), period_s=0.01, retry_period_s=0.01, on_rejected=seen.append).start()
    bad = jobs[4]
    for job in jobs:
        data = {"returncode": 0, "odd": object()} if job is bad else {"returncode": 0}
        updater.put(job.id, "RUN_DONE", data=data, fields={"return_code": 0}, session_id=sid)
    assert updater.flush(timeout=10), "a refused change must not block the batch"
    states = dict(store.execute("SELECT id, state FROM job"))
    assert [states[j.id] for j in jobs if j is not bad] == ["RUN_DONE"] * 8
    assert states[bad.id] == "RUN_ERROR"
    assert "refused" in bad.history()[-1].data["error"]
    assert [c.job_id for batch in seen for c, _ in batch] == [bad.id]
    assert "status update refused" in caplog.text and updater.rejected_total == 1
    updater.put(jobs[0].id, "POSTPROCESSED")  # later batches go through
    assert updater.close(timeout=10)
    assert store.execute("SELECT state FROM job WHERE id=?", (jobs[0].id,)) == [("JOB_FINISHED",)]


def test_an_oversized_result_is_refused_and_recorded(hello: Any, store: Any, monkeypatch: Any) -> None:
    from balsam.db import fields

    monkeypatch.setattr(fields, "MAX_RESULT_BYTES", 100)
    jobs, sid = _running_jobs(hello, store, 2)
    updater = StatusUpdater(store_sink(store), period_s=0.01).start()
    updater.put(jobs[0].id, "RUN_DONE", fields={"return_code": 0, "serialized_return_value": b"x" * 101}, session_id=sid)
    updater.put(jobs[1].id, "RUN_DONE", fields={"return_code": 0, "serialized_return_value": b"x" * 100}, session_id=sid)
    assert updater.close(timeout=10)
    first, second = (Job.objects.get(id=j.id) for j in jobs)
    assert first.state == "RUN_ERROR" and first.serialized_return_value is None
    assert "101 bytes" in first.history()[-1].data["error"]
    assert second.state == "RUN_DONE" and second.serialized_return_value == b"x" * 100


def test_transient_errors_are_retried_with_backoff(hello: Any, store: Any) -> None:
    import sqlite3
    import time

    job = hello.submit(workdir="a", say_hello_to="x")
    real = store_sink(store)
    attempts: List[float] = []

    def locked(changes: Sequence[StateChange]) -> Rejected:
        attempts.append(time.monotonic())
        if len(attempts) <= 4:
            raise (sqlite3.OperationalError("database is locked") if len(attempts) % 2 else StoreError("commit failed: disk I/O error"))
        return real(changes)

    updater = StatusUpdater(locked, period_s=0.01, retry_period_s=0.01).start()
    updater.put(job.id, "PREPROCESSED")
    assert updater.close(timeout=20)
    assert len(attempts) == 5 and Job.objects.get(id=job.id).state == "PREPROCESSED"
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[-1] > gaps[0], f"the waits between retries grow: {gaps}"


def test_state_data_json_cannot_hold_is_refused_alone(hello: Any, store: Any) -> None:
    """NaN or an object in a change's data would fail SQLite's JSON functions for the whole batch (the updater
    then retried it forever): that change is refused on its own and the others are written."""
    from balsam.db.jobs import apply_state_changes

    jobs = [hello.submit(f"nan/{i}", say_hello_to="x") for i in range(3)]
    with store.write() as conn:
        result = apply_state_changes(conn, [StateChange(jobs[0].id, "PREPROCESSED", data={"x": float("nan")}),
                                            StateChange(jobs[1].id, "PREPROCESSED", data={"o": object()}),
                                            StateChange(jobs[2].id, "PREPROCESSED", data={"ok": 1.5})], strict=False)
    assert sorted(ch.job_id for ch, _ in result.rejected) == sorted([jobs[0].id, jobs[1].id])
    assert all("not plain JSON" in why for _, why in result.rejected)
    states = dict(store.execute("SELECT id, state FROM job"))
    assert states[jobs[2].id] == "PREPROCESSED" and states[jobs[0].id] == states[jobs[1].id] == "STAGED_IN"


def test_a_launchers_run_done_and_postprocessed_reach_the_store_in_one_batch(hello: Any, store: Any) -> None:
    # A launcher finishing a hookless job queues RUN_DONE then POSTPROCESSED under its lease. Were they written in
    # separate batches, the second would find the job already released by the first and be refused (RUN_DONE stuck).
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"j{i}", say_hello_to="x", save=False) for i in range(3)])
    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    sid = _held(store, jobs)
    seen: List[Rejected] = []
    updater = StatusUpdater(store_sink(store), max_batch=2, on_rejected=seen.append)  # a batch cut falls inside the pair
    for job in jobs:
        updater.put(job.id, "RUNNING", session_id=sid)
    assert updater.flush()
    updater.put(jobs[0].id, "RUN_DONE", session_id=sid)
    updater.put_together([(job.id, state, 1.0, None, {"return_code": 0} if state == "RUN_DONE" else None, sid)
                          for job in jobs[1:] for state in ("RUN_DONE", "POSTPROCESSED")])
    assert updater.flush()
    assert seen == []
    assert [Job.objects.get(id=j.id).state for j in jobs] == ["RUN_DONE", "JOB_FINISHED", "JOB_FINISHED"]


def test_one_batch_of_mixed_changes_applies_each_with_its_own_state_lease_time_and_data(hello: Any, store: Any) -> None:
    """A launcher's batch mixes states, leases, event data and refusals: changes without data are written by
    (state, lease) groups, the rest one by one, and each job still gets exactly its own change."""
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"m{i}", say_hello_to="x", save=False) for i in range(8)])
    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    lease_a, lease_b = _held(store, jobs[:2]), _held(store, jobs[2:4])
    seen: List[Rejected] = []
    updater = StatusUpdater(store_sink(store), period_s=10, on_rejected=seen.append)
    updater.put(jobs[0].id, "RUNNING", timestamp=1001.0, session_id=lease_a)
    updater.put(jobs[1].id, "RUNNING", timestamp=1002.0, data={"note": "warm"}, session_id=lease_a)
    updater.put(jobs[2].id, "RUNNING", timestamp=1003.0, session_id=lease_b)
    updater.put(jobs[3].id, "RUNNING", timestamp=1004.0, session_id=lease_a)  # lease_b holds it: refused
    updater.put(jobs[4].id, "FAILED", timestamp=1005.0)
    updater.put(jobs[5].id, "USER_KILLED", timestamp=1006.0, data={"message": "by hand"})
    updater.put(jobs[6].id, "NOT_A_STATE", timestamp=1007.0)
    updater.put(jobs[7].id, "RUNNING', NULL, NULL); DROP TABLE job; --", timestamp=1008.0)
    assert updater.flush(timeout=10)
    rows = dict(store.execute("SELECT id, state || ' ' || coalesce(session_id, '-') FROM job"))
    assert [rows[j.id] for j in jobs] == [f"RUNNING {lease_a}", f"RUNNING {lease_a}", f"RUNNING {lease_b}", f"PREPROCESSED {lease_b}",
                                          "FAILED -", "USER_KILLED -", "PREPROCESSED -", "PREPROCESSED -"]
    last = {j.id: j.history()[-1] for j in jobs}
    assert [(last[j.id].to_state, last[j.id].timestamp.timestamp()) for j in jobs[:3]] == [
        ("RUNNING", 1001.0), ("RUNNING", 1002.0), ("RUNNING", 1003.0)]
    assert last[jobs[0].id].data == {"num_nodes": 1.0} and last[jobs[1].id].data == {"note": "warm", "num_nodes": 1.0}
    assert (last[jobs[4].id].to_state, last[jobs[4].id].timestamp.timestamp(), last[jobs[4].id].data) == ("FAILED", 1005.0, {})
    assert (last[jobs[5].id].to_state, last[jobs[5].id].data) == ("USER_KILLED", {"message": "by hand"})
    assert [last[j.id].to_state for j in jobs[6:]] == ["PREPROCESSED", "PREPROCESSED"]
    reasons = {c.job_id: why for c, why in seen[0]}
    assert sorted(reasons) == sorted(j.id for j in jobs[3:4] + jobs[6:])
    assert f"is not held by session {lease_a}" in reasons[jobs[3].id]
    assert "is not allowed" in reasons[jobs[6].id] and "is not allowed" in reasons[jobs[7].id]


def test_a_batch_to_one_state_and_a_batch_to_several_states_write_each_jobs_own_time(hello: Any, store: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"t{i}", say_hello_to="x", save=False) for i in range(6)])
    updater = StatusUpdater(store_sink(store), period_s=10)
    for i, job in enumerate(jobs):
        updater.put(job.id, "PREPROCESSED", timestamp=2000.0 + i)
    assert updater.flush(timeout=10)
    assert store.execute("SELECT count(*) FROM job WHERE state='PREPROCESSED' AND session_id IS NULL")[0][0] == 6
    for i, job in enumerate(jobs):
        updater.put(job.id, "FAILED" if i % 2 else "USER_KILLED", timestamp=3000.0 + i)
    assert updater.close(timeout=10)
    assert [str(Job.objects.get(id=j.id).state) for j in jobs] == ["USER_KILLED", "FAILED"] * 3
    assert [[(e.to_state, e.timestamp.timestamp()) for e in j.history()[1:]] for j in jobs[:2]] == [
        [("PREPROCESSED", 2000.0), ("USER_KILLED", 3000.0)], [("PREPROCESSED", 2001.0), ("FAILED", 3001.0)]]
