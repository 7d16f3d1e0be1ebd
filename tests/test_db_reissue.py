"""A site DB put back from a backup, the site's side (balsam.db.reissue): its id counters move past the ids the relay
has seen from it, and the rows the relay refused get new ids with every reference to them rewritten, so the site's
own view (parents, children, events, BatchJobs, DAG instances) is unchanged but for the ids, and the outbox tells the
relay to drop the rows it held under the old ids."""

from __future__ import annotations

from typing import Any, Dict

from balsam.api import DAG, ApplicationDefinition, BatchJob, EventLog, Job
from balsam.db import outbox, reissue
from balsam.db.ids import base


def _linked(store: Any) -> None:
    """The site's outbox on, as a site linked to a relay has it, with nothing waiting."""
    with store.write() as conn:
        outbox.enable(conn)
        outbox.trim(conn, 1 << 62)


def _pending(store: Any) -> Dict[int, str]:
    """The job items the next push would carry: {id: upsert or delete}."""
    with store.read() as conn:
        _, items = outbox.pending(conn, 0)
    return {i["id"]: i["op"] for i in items if i["entity"] == "job"}


def test_counters_move_past_what_the_relay_has_seen_and_never_back(site: Any, hello: Any) -> None:
    first = hello.submit(workdir="a", say_hello_to="a")
    top = base(site.id) + 1000
    with site.store.write() as conn:
        assert reissue.fence(conn, {"job": top, "event": top, "app": base(site.id) + 1}) == {"job": top, "event": top}
        assert reissue.fence(conn, {"job": top - 10}) == {}  # never back
        # Values that are not ids of this site, and kinds the relay does not mirror, are ignored.
        assert reissue.fence(conn, {"job": base(site.id + 1) + 5000, "session": top, "nonsense": "x"}) == {}
        assert reissue.sequences(conn)["job"] == top
    later = hello.submit(workdir="b", say_hello_to="b")
    assert later.id == top + 1 > first.id
    assert all(e.id > top for e in EventLog.objects.filter(job_id=[later.id]))


def test_renumbered_jobs_keep_parents_children_events_and_batch_jobs(site: Any, hello: Any) -> None:
    _linked(site.store)
    kept = hello.submit(workdir="kept", say_hello_to="k")
    parent = hello.submit(workdir="parent", say_hello_to="p")
    child = hello.submit(workdir="child", say_hello_to="c", parent_ids=[parent.id, kept.id])
    batch = BatchJob.objects.create(num_nodes=1, wall_time_min=5, job_mode="mpi", queue="local", project="local")
    parent.batch_job_id = batch.id
    parent.save()
    old_events = sorted(e.id for e in EventLog.objects.filter(job_id=[parent.id]))
    with site.store.write() as conn:
        outbox.trim(conn, 1 << 62)  # as if pushed
        top = base(site.id) + 500
        reissue.fence(conn, {"job": top, "batch_job": top})
        moved = reissue.renumber(conn, {"job": [parent.id, child.id, base(site.id) + 499, base(site.id + 1) + 3],
                                        "batch_job": [batch.id], "app": "not a list"})
    assert moved == {"job": {parent.id: top + 1, child.id: top + 2}, "batch_job": {batch.id: top + 1}}
    jobs = {j.workdir: j for j in Job.objects.all()}
    assert (jobs["kept"].id, jobs["parent"].id, jobs["child"].id) == (kept.id, top + 1, top + 2)
    assert sorted(jobs["child"].parent_ids) == sorted([top + 1, kept.id])
    assert sorted(p.workdir for p in jobs["child"].parent_query()) == ["kept", "parent"]
    assert [c.workdir for c in Job.objects.filter(parent_id=[top + 1])] == ["child"]
    assert jobs["parent"].batch_job_id == top + 1 and BatchJob.objects.get(id=top + 1).num_nodes == 1
    assert sorted(e.id for e in EventLog.objects.filter(job_id=[top + 1])) == old_events  # the same events, now of the new id
    assert not list(EventLog.objects.filter(job_id=[parent.id]))
    # The next push drops the rows under the old ids at the relay and carries them under the new ones.
    assert _pending(site.store) == {parent.id: "delete", child.id: "delete", top + 1: "upsert", top + 2: "upsert"}
    assert hello.submit(workdir="next", say_hello_to="n").id == top + 3


def test_a_renumbered_dag_instance_keeps_its_jobs(site: Any) -> None:
    class Step(ApplicationDefinition):
        site = "test-site"
        command_template = "echo {{ x }}"

    Step.sync()
    d = DAG("pipe", site="test-site")
    one = d.node("one", app=Step, workdir="{run}/one", params={"x": "{run}"})
    d.node("two", app=Step, workdir="{run}/two", params={"x": 2}, parents=[one])
    d.save()
    first, second = d.instantiate([{"run": "r1"}, {"run": "r2"}])
    with site.store.write() as conn:
        top = base(site.id) + 70
        reissue.fence(conn, {"dag_instance": top})
        assert reissue.renumber(conn, {"dag_instance": [first.id]}) == {"dag_instance": {first.id: top + 1}}
    assert sorted(j.workdir for j in Job.objects.filter(tags={"dag_instance": str(top + 1)})) == ["r1/one", "r1/two"]
    assert Job.objects.filter(tags={"dag_instance": str(first.id)}).count() == 0
    assert Job.objects.filter(tags={"dag_instance": str(second.id)}).count() == 2
    assert {j.tags["dag_instance"] for j in Job.objects.filter(workdir__contains="r1/")} == {str(top + 1)}
