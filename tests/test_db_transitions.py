"""The state engine applies a batch in memory and writes each job once: every event, in order, every rule kept."""

from __future__ import annotations

import json
from typing import Any, List, Sequence

import pytest

from balsam.api import Job
from balsam.db import outbox
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.updater import store_sink
from balsam.exceptions import IllegalTransition


def _running(store: Any, jobs: Sequence[Any]) -> int:
    """Mark jobs RUNNING under a new lease, as a launcher does after its acquire; the lease id."""
    from balsam.db.sessions import create_session

    Job.objects.filter(id=[j.id for j in jobs]).update(state="PREPROCESSED")
    with store.write() as conn:
        sid = int(create_session(conn, host="test"))
        conn.execute("UPDATE job SET session_id=? WHERE id IN (SELECT value FROM json_each(?))", (sid, json.dumps([j.id for j in jobs])))
        apply_state_changes(conn, [StateChange(j.id, "RUNNING", session_id=sid) for j in jobs])
    return sid


def _finished(job_id: int, sid: int, code: int = 0) -> List[StateChange]:
    """What a launcher reports for a clean run of an app without a postprocess hook, in one status batch."""
    return [StateChange(job_id, "RUN_DONE", 1000.0, {"returncode": code}, {"return_code": code}, sid),
            StateChange(job_id, "POSTPROCESSED", 1000.5, {"message": "no postprocess hook"}, None, sid)]


def _events(store: Any, job_id: int) -> List[Any]:
    return store.execute("SELECT from_state, to_state, timestamp, data FROM event WHERE job_id=? ORDER BY id", (job_id,))


def test_a_launchers_finish_is_three_events_and_one_write_of_the_job(hello: Any, store: Any) -> None:
    jobs = Job.objects.bulk_create([hello.submit(workdir=f"j{i}", say_hello_to="x", save=False) for i in range(30)])
    sid = _running(store, jobs)
    with store.write() as conn:  # the site is linked to a relay: every write of a job's row is logged for the push
        outbox.enable(conn)
        conn.execute("DELETE FROM outbox")
    versions = dict(store.execute("SELECT id, version FROM job"))
    rejected = store_sink(store)([c for j in jobs for c in _finished(j.id, sid, code=j.id % 2)])
    assert rejected == []
    rows = store.execute("SELECT id, state, return_code, session_id, version FROM job ORDER BY id")
    assert [(r[1], r[2], r[3]) for r in rows] == [("JOB_FINISHED", j.id % 2, None) for j in jobs]
    assert all(r[4] == versions[r[0]] + 3 for r in rows)  # one version step per change, as when each was written
    for job in jobs:
        events = _events(store, job.id)[-3:]
        assert [(e[0], e[1]) for e in events] == [("RUNNING", "RUN_DONE"), ("RUN_DONE", "POSTPROCESSED"),
                                                  ("POSTPROCESSED", "JOB_FINISHED")]
        assert [e[2] for e in events[:2]] == [1000.0, 1000.5]
        assert json.loads(events[0][3]) == {"returncode": job.id % 2}
        assert json.loads(events[2][3]) == {"message": "no stage-out pending"}
    logged = store.execute("SELECT entity_id, count(*) FROM outbox WHERE entity='job' GROUP BY entity_id")
    assert sorted(logged) == sorted((j.id, 1) for j in jobs)  # before: 4 writes each (RUN_DONE, its code, POSTPROCESSED, JOB_FINISHED)


def test_each_change_meets_the_state_the_changes_before_it_left(hello: Any, store: Any) -> None:
    a, b, c = (hello.submit(workdir=w, say_hello_to="x") for w in "abc")
    sid = _running(store, [a, b])
    other = _running(store, [c])
    with store.write() as conn:
        result = apply_state_changes(conn, [
            StateChange(a.id, "RUN_DONE", session_id=sid),
            StateChange(a.id, "RUNNING", session_id=sid),  # RUN_DONE -> RUNNING: refused, the rest of a's changes go on
            StateChange(a.id, "POSTPROCESSED", session_id=sid),
            StateChange(b.id, "RUN_DONE", session_id=other),  # not b's lease
            StateChange(c.id, "RUN_ERROR", data={"error": "boom"}, session_id=other),
            StateChange(c.id, "RESTART_READY"),
            StateChange(a.id + 1000, "RUN_DONE"),
        ], strict=False)
    reasons = [(ch.job_id, why) for ch, why in result.rejected]
    assert reasons == [(a.id, "RUN_DONE -> RUNNING is not allowed"),
                       (b.id, f"job {b.id} is not held by session {other} (its lease expired or it was released)"),
                       (a.id + 1000, "no such job")]
    states = dict(store.execute("SELECT id, state FROM job"))
    assert (states[a.id], states[b.id], states[c.id]) == ("JOB_FINISHED", "RUNNING", "RESTART_READY")
    assert [e[1] for e in _events(store, a.id)][-3:] == ["RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert [e[1] for e in _events(store, c.id)][-2:] == ["RUN_ERROR", "RESTART_READY"]
    assert store.execute("SELECT session_id FROM job WHERE id=?", (c.id,))[0][0] is None  # left RUNNING: unlocked
    assert result.applied == 5  # a's three (with its cascade), c's two


def test_a_refused_change_in_a_strict_batch_writes_nothing(hello: Any, store: Any) -> None:
    a, b = hello.submit(workdir="a", say_hello_to="x"), hello.submit(workdir="b", say_hello_to="x")
    before = store.execute("SELECT count(*) FROM event")[0][0]
    with pytest.raises(IllegalTransition, match="cannot move from STAGED_IN to RUN_DONE"):
        with store.write() as conn:
            apply_state_changes(conn, [StateChange(a.id, "PREPROCESSED"), StateChange(b.id, "RUN_DONE")])
    assert store.execute("SELECT state FROM job WHERE id=?", (a.id,))[0][0] == "STAGED_IN"
    assert store.execute("SELECT count(*) FROM event")[0][0] == before


def test_a_parent_finished_in_a_batch_releases_its_children_in_it(hello: Any, store: Any) -> None:
    parent = hello.submit(workdir="p", say_hello_to="x")
    doomed = hello.submit(workdir="d", say_hello_to="x")
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    orphan = hello.submit(workdir="o", say_hello_to="x", parent_ids=[doomed.id])
    sid = _running(store, [parent, doomed])
    with store.write() as conn:
        result = apply_state_changes(conn, [*_finished(parent.id, sid),
                                            StateChange(doomed.id, "RUN_ERROR", session_id=sid), StateChange(doomed.id, "FAILED")])
    assert result.rejected == []
    states = dict(store.execute("SELECT id, state FROM job"))
    assert (states[parent.id], states[child.id], states[doomed.id], states[orphan.id]) == (
        "JOB_FINISHED", "STAGED_IN", "FAILED", "FAILED")
    assert [e[1] for e in _events(store, child.id)] == ["AWAITING_PARENTS", "READY", "STAGED_IN"]
    assert json.loads(_events(store, orphan.id)[-1][3]) == {"message": f"parent job {doomed.id} is FAILED", "parent_id": doomed.id}


def test_a_run_records_its_footprint_and_a_restart_its_number(hello: Any, store: Any) -> None:
    job = hello.submit(workdir="r", say_hello_to="x", node_packing_count=4)
    sid = _running(store, [job])
    with store.write() as conn:
        apply_state_changes(conn, [StateChange(job.id, "RUN_TIMEOUT", session_id=sid), StateChange(job.id, "RESTART_READY")])
    sid = _running_again(store, job.id)
    data = [json.loads(e[3]) for e in _events(store, job.id) if e[1] == "RUNNING"]
    assert data == [{"num_nodes": 0.25}, {"num_nodes": 0.25, "run": 2}]
    assert store.execute("SELECT state, session_id FROM job WHERE id=?", (job.id,))[0] == ("RUNNING", sid)


def _running_again(store: Any, job_id: int) -> int:
    from balsam.db.sessions import create_session

    with store.write() as conn:
        sid = int(create_session(conn, host="test"))
        conn.execute("UPDATE job SET session_id=? WHERE id=?", (sid, job_id))
        apply_state_changes(conn, [StateChange(job_id, "RUNNING", session_id=sid)])
    return sid


def test_a_refused_change_with_results_is_reported_as_the_caller_sent_it(hello: Any, store: Any) -> None:
    """The HTTP API maps each refusal back to its batch by the change object: one whose fields were checked (and
    so copied) must still come back as the caller's, or its launcher never hears of the refusal."""
    job = hello.submit(workdir="x", say_hello_to="x")
    sid = _running(store, [job])
    stale = StateChange(job.id, "RUN_DONE", fields={"serialized_return_value": b"\x80\x04K\x01.", "return_code": 0},
                        session_id=sid + 1)
    with store.write() as conn:
        result = apply_state_changes(conn, [stale], strict=False)
    assert len(result.rejected) == 1 and result.rejected[0][0] is stale
    assert "is not held by session" in result.rejected[0][1]


def test_each_event_keeps_its_own_data_in_a_batch_of_lookalikes(hello: Any, store: Any) -> None:
    """Equal-looking data of different types (1, True, "1", 1.0) stay what each change said."""
    jobs = [hello.submit(workdir=f"d{i}", say_hello_to="x") for i in range(5)]
    values: List[Any] = [1, True, "1", 1.0, None]
    with store.write() as conn:
        apply_state_changes(conn, [StateChange(j.id, "PREPROCESSED", data={"v": v}) for j, v in zip(jobs, values)])
    got = [json.loads(_events(store, j.id)[-1][3])["v"] for j in jobs]
    assert got == values and [type(v) for v in got] == [int, bool, str, float, type(None)]
