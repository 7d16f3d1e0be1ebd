"""Job creation states and the cascades: parents, failures, transfers, deletion, added dependencies."""

from __future__ import annotations

from typing import Any

import pytest

from balsam.api import ApplicationDefinition, EventLog, Job, TransferItem
from balsam.db import jobs as job_db
from balsam.exceptions import IllegalTransition, JobLockedError, ValidationError
from tests.helpers import advance, sid

FINISH = ("PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED")


def state(job: Any) -> str:
    return str(Job.objects.get(id=job.id).state)


def test_initial_states(hello: Any) -> None:
    free = hello.submit(workdir="free", say_hello_to="x")
    child = hello.submit(workdir="child", say_hello_to="x", parent_ids=[free.id])
    assert (state(free), state(child)) == ("STAGED_IN", "AWAITING_PARENTS")
    events = list(EventLog.objects.filter(job_id=child.id))
    assert [(e.from_state, e.to_state) for e in events] == [("CREATED", "AWAITING_PARENTS")]


def test_child_of_finished_parent_starts_staged_in(hello: Any) -> None:
    parent = hello.submit(workdir="p", say_hello_to="x")
    advance(parent, *FINISH)
    assert state(parent) == "JOB_FINISHED"
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    assert state(child) == "STAGED_IN"


def test_child_of_failed_parent_fails_at_creation_with_the_reason(hello: Any) -> None:
    parent = hello.submit(workdir="p", say_hello_to="x")
    advance(parent, "PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED")
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    assert state(child) == "FAILED"
    assert child.history()[-1].data["message"] == f"parent job {parent.id} is FAILED"


def test_missing_parent_is_refused(hello: Any) -> None:
    with pytest.raises(ValidationError, match=f"parent job {sid(42)} does not exist"):
        hello.submit(workdir="c", say_hello_to="x", parent_ids=[42])
    assert Job.objects.count() == 0


def test_children_are_released_only_when_every_parent_finished(hello: Any) -> None:
    a = hello.submit(workdir="a", say_hello_to="x")
    b = hello.submit(workdir="b", say_hello_to="x")
    c = hello.submit(workdir="c", say_hello_to="x", parent_ids=[a.id, b.id])
    d = hello.submit(workdir="d", say_hello_to="x", parent_ids=[a.id])
    advance(a, *FINISH)
    assert (state(c), state(d)) == ("AWAITING_PARENTS", "STAGED_IN")
    advance(b, *FINISH)
    assert state(c) == "STAGED_IN"
    assert [(e.from_state, e.to_state) for e in c.history()] == [
        ("CREATED", "AWAITING_PARENTS"), ("AWAITING_PARENTS", "READY"), ("READY", "STAGED_IN")]


@pytest.mark.parametrize("how", ["FAILED", "USER_KILLED"])
def test_failure_cascades_to_every_descendant_waiting(hello: Any, how: str) -> None:
    a = hello.submit(workdir="a", say_hello_to="x")
    b = hello.submit(workdir="b", say_hello_to="x", parent_ids=[a.id])
    c = hello.submit(workdir="c", say_hello_to="x", parent_ids=[b.id])
    other = hello.submit(workdir="o", say_hello_to="x")
    if how == "FAILED":
        advance(a, "PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED")
    else:
        advance(a, "USER_KILLED")
    assert (state(b), state(c), state(other)) == ("FAILED", "FAILED", "STAGED_IN")
    assert b.history()[-1].data["message"] == f"parent job {a.id} is {how}"
    assert c.history()[-1].data["message"] == f"parent job {b.id} is FAILED"


def test_reset_after_failure_and_return_code_kept(hello: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x")
    advance(job, "PREPROCESSED", "RUNNING")
    with job.__dict__["_site"].store.write() as conn:  # what the launcher holding the job writes
        job_db.apply_state_changes(conn, [job_db.StateChange(int(job.id), "RUN_ERROR", data={"error": "boom"}, fields={"return_code": 3},
                                               session_id=job.__dict__["_session_id"])])
    job.refresh_from_db()
    assert job.return_code == 3 and job.state == "RUN_ERROR"
    advance(job, "FAILED", "RESTART_READY")
    assert state(job) == "RESTART_READY"
    assert job.history()[-3].data == {"error": "boom"}


def test_running_event_records_the_node_footprint(hello: Any) -> None:
    job = hello.submit(workdir="a", say_hello_to="x", num_nodes=2, node_packing_count=4)
    advance(job, "PREPROCESSED", "RUNNING")
    assert job.history()[-1].data == {"num_nodes": 0.5}


def test_delete_fails_waiting_children_and_refuses_locked_jobs(hello: Any, store: Any) -> None:
    parent = hello.submit(workdir="p", say_hello_to="x")
    child = hello.submit(workdir="c", say_hello_to="x", parent_ids=[parent.id])
    parent_id = parent.id
    parent.delete()
    assert parent.id is None  # as in Balsam, a deleted job has no id
    assert state(child) == "FAILED"
    assert child.history()[-1].data["message"] == f"parent job {parent_id} was deleted"
    assert EventLog.objects.filter(job_id=parent_id).count() == 0
    held = hello.submit(workdir="h", say_hello_to="x")
    with store.write() as conn:
        conn.execute("UPDATE job SET session_id=1 WHERE id=?", (held.id,))
    with pytest.raises(JobLockedError, match="held by a running launcher"):
        Job.objects.filter(id=[held.id, child.id]).delete()
    assert Job.objects.filter(id=[held.id, child.id]).count() == 2


def test_add_dependency_moves_a_waiting_job_back_and_refuses_cycles(hello: Any, store: Any) -> None:
    a = hello.submit(workdir="a", say_hello_to="x")
    b = hello.submit(workdir="b", say_hello_to="x")
    b.parent_ids = b.parent_ids + [a.id]
    b.save()
    assert state(b) == "AWAITING_PARENTS"
    with pytest.raises(ValidationError, match="cycle"):
        with store.write() as conn:
            job_db.add_parents(conn, a.id, [b.id])
    advance(a, *FINISH)
    assert state(b) == "STAGED_IN"
    advance(b, "PREPROCESSED", "RUNNING")
    with pytest.raises(IllegalTransition, match="only a job that has not started"):
        with store.write() as conn:
            job_db.add_parents(conn, b.id, [a.id + 100])


class _Stager(ApplicationDefinition):
    site = "test-site"
    command_template = "cat input.dat > output.dat"
    transfers = {
        "input": {"required": True, "direction": "in", "local_path": "input.dat"},
        "output": {"required": False, "direction": "out", "local_path": "output.dat"},
    }


def _with_locations(store: Any) -> None:
    with store.write() as conn:
        conn.execute("""UPDATE site SET transfer_locations='{"here":"local:/"}'""")


def test_stage_in_then_stage_out_drive_the_job(site: Any, store: Any) -> None:
    _with_locations(store)
    _Stager.sync()
    job = _Stager.submit(workdir="t", transfers={"input": "here:/data/in.dat", "output": "here:/data/out.dat"})
    assert state(job) == "READY"
    items = {t.direction: t for t in TransferItem.objects.filter(job_id=job.id)}
    assert (items["in"].state, items["out"].state) == ("pending", "awaiting_job")
    items["in"].state = "done"
    items["in"].save()
    assert state(job) == "STAGED_IN"
    advance(job, *FINISH)
    assert state(job) == "POSTPROCESSED"
    assert TransferItem.objects.get(id=items["out"].id).state == "pending"
    TransferItem.objects.filter(job_id=job.id, direction="out").update(state="done")
    assert state(job) == "JOB_FINISHED"
    assert [e.to_state for e in job.history()][-2:] == ["STAGED_OUT", "JOB_FINISHED"]


def test_failed_transfer_fails_the_job(site: Any, store: Any) -> None:
    _with_locations(store)
    _Stager.sync()
    job = _Stager.submit(workdir="t", transfers={"input": "here:/data/in.dat"})
    item = TransferItem.objects.get(job_id=job.id)
    item.state = "error"
    item.transfer_info = {"error": "no such file"}
    item.save()
    assert state(job) == "FAILED"
    assert "stage-in transfer" in job.history()[-1].data["message"]


def test_transfer_validation(site: Any, store: Any) -> None:
    _Stager.sync()
    with pytest.raises(ValidationError, match="requires transfer slot 'input'"):
        _Stager.submit(workdir="t1")
    with pytest.raises(ValidationError, match="unknown location alias 'here'"):
        _Stager.submit(workdir="t2", transfers={"input": "here:/x"})
    _with_locations(store)
    with pytest.raises(ValidationError, match="no transfer slot 'bogus'"):
        _Stager.submit(workdir="t3", transfers={"input": "here:/x", "bogus": "here:/y"})
    with pytest.raises(ValidationError, match="must be absolute"):
        _Stager.submit(workdir="t4", transfers={"input": "here:relative"})
    assert Job.objects.count() == 0


def test_bulk_creation_keeps_each_jobs_app_fields_and_tags_in_order(hello: Any, store: Any) -> None:
    """Jobs of one app at default settings, of two apps, and with their own settings go in by different staging
    forms: each job gets the next id in the order given and exactly its own columns, tags and creation event."""

    class Other(ApplicationDefinition):
        site = "test-site"
        command_template = "echo {{ x }}"

    Other.sync()
    plain = Job.objects.bulk_create([hello.submit(workdir=f"p{i}", say_hello_to=f"n{i}", tags={"k": str(i % 2)}, save=False)
                                     for i in range(5)])
    mixed = Job.objects.bulk_create([
        hello.submit(workdir="m0", say_hello_to="a", save=False),
        Other.submit(workdir="m1", x="b", tags={"k": "1"}, save=False),
        hello.submit(workdir="m2", say_hello_to="c", num_nodes=3, wall_time_min=7, data={"d": 1}, save=False),
    ])
    ids = [j.id for j in plain + mixed]
    assert ids == list(range(ids[0], ids[0] + 8))
    rows = {r[0]: r[1:] for r in store.execute("SELECT id, workdir, app_id, num_nodes, wall_time_min, data, parameters FROM job")}
    assert rows[plain[3].id] == ("p3", hello.__app_id__, 1, 0, "{}", '{"say_hello_to":"n3"}')
    assert rows[mixed[1].id] == ("m1", Other.__app_id__, 1, 0, "{}", '{"x":"b"}')
    assert rows[mixed[2].id] == ("m2", hello.__app_id__, 3, 7, '{"d":1}', '{"say_hello_to":"c"}')
    assert sorted(str(j.workdir) for j in Job.objects.filter(tags={"k": "1"})) == ["m1", "p1", "p3"]
    assert store.execute("SELECT count(*) FROM event WHERE from_state='CREATED' AND to_state='STAGED_IN'")[0][0] == 8


def test_a_refused_bulk_creation_writes_nothing_and_the_next_one_goes_through(hello: Any, store: Any) -> None:
    hello.submit(workdir="taken", say_hello_to="x")
    with pytest.raises(ValidationError, match="workdir 'taken' is already used by job"):
        Job.objects.bulk_create([hello.submit(workdir=w, say_hello_to="x", tags={"t": "1"}, save=False) for w in ("a", "taken", "b")])
    assert store.execute("SELECT count(*), (SELECT count(*) FROM job_tag), (SELECT count(*) FROM event) FROM job")[0] == (1, 0, 1)
    again = Job.objects.bulk_create([hello.submit(workdir=w, say_hello_to="x", save=False) for w in ("a", "b")])
    assert [str(j.workdir) for j in Job.objects.filter(id=[j.id for j in again]).order_by("id")] == ["a", "b"]
