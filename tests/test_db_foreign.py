"""Parents at another site in the site store (balsam.db.foreign): accepted only on a site linked to a relay; the
child waits for them as for its own site's parents, a local parent finishing does not release it alone, and the
states the relay reports release or fail it through the state machine (the relay end to end:
tests/test_relay_parents.py)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from balsam import exceptions as exc
from balsam.db import foreign, outbox
from balsam.db.backend import LocalBackend
from balsam.db.jobs import StateChange


def _away(site: Any, n: int) -> int:
    """A job id of another site."""
    return ((int(site.id) % 1000 + 1) << 32) | n


def _linked(site: Any) -> None:
    with site.store.write() as conn:
        outbox.enable(conn)


def _finish(site: Any, job_id: int) -> None:
    backend = LocalBackend(site.store)
    for state in ("PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED"):  # no stage-out: on to JOB_FINISHED
        if state == "RUNNING":
            sid = backend.create_session(host=site.store.host, pid=os.getpid(), batch_job_id=None, label="test")
            backend.acquire(sid, 10)
            backend.apply_changes([StateChange(job_id, state)], session_id=sid)
        else:
            backend.update_jobs([], (), [StateChange(job_id, state)])


def _report(site: Any, states: Any) -> Any:
    with site.store.write() as conn:
        return foreign.report(conn, states)


def _state(site: Any, job_id: int) -> str:
    return str(site.store.execute("SELECT state FROM job WHERE id = ?", (job_id,))[0][0])


def test_a_parent_at_another_site_needs_a_relay_link(site: Any, hello: Any) -> None:
    from balsam.api import Job

    with pytest.raises(exc.ValidationError, match=r"is at another site .*only when this site is linked to a relay"):
        Job("child/1", hello, parameters={"say_hello_to": "x"}, parent_ids=[_away(site, 7)]).save()
    with pytest.raises(exc.ValidationError, match="does not exist at this site"):  # this site's own ids are checked as before
        Job("child/2", hello, parameters={"say_hello_to": "x"}, parent_ids=[(int(site.id) << 32) | 99999]).save()
    assert Job.objects.count() == 0


def test_the_child_waits_for_every_parent_here_and_away(site: Any, hello: Any) -> None:
    from balsam.api import Job

    _linked(site)
    local = Job("parent/here", hello, parameters={"say_hello_to": "x"})
    local.save()
    away = _away(site, 7)
    child = Job("child/both", hello, parameters={"say_hello_to": "x"}, parent_ids=[local.id, away])
    child.save()
    assert child.state == "AWAITING_PARENTS"
    with site.store.read() as conn:
        assert foreign.waiting(conn) == [away]
    _finish(site, local.id)  # its own site's parent alone does not release it
    assert _state(site, local.id) == "JOB_FINISHED"
    assert child.why() == [f"waits for parent job {away} at another site (site {away >> 32}; the relay has not reported its state "
                           "yet): its state comes through the relay when both sites sync"]
    assert _state(site, child.id) == "AWAITING_PARENTS"
    assert _report(site, {away: "RUNNING"}) == []
    assert _state(site, child.id) == "AWAITING_PARENTS"
    moved = _report(site, {away: "JOB_FINISHED"})
    assert [(c.job_id, c.state) for c in moved] == [(child.id, "READY")]
    assert _state(site, child.id) == "STAGED_IN"  # no stage-in: on at once, as for a parent here
    assert _report(site, {away: "JOB_FINISHED"}) == []  # told again: nothing more happens
    with site.store.read() as conn:
        assert foreign.waiting(conn) == []
    # A job created after its parent away finished starts as if the parent were here.
    late = Job("child/late", hello, parameters={"say_hello_to": "x"}, parent_ids=[away])
    late.save()
    assert late.state == "STAGED_IN"


def test_a_failed_parent_away_fails_its_children_saying_why(site: Any, hello: Any) -> None:
    from balsam.api import Job

    _linked(site)
    away, other = _away(site, 8), _away(site, 9)
    children = [Job(f"child/{i}", hello, parameters={"say_hello_to": "x"}, parent_ids=[away]) for i in range(2)]
    Job.objects.bulk_create(children)
    gains = Job("child/gains", hello, parameters={"say_hello_to": "x"})
    gains.save()
    gains.add_parent(other)  # a parent away added later: back to waiting
    assert _state(site, gains.id) == "AWAITING_PARENTS"
    _report(site, {away: "FAILED", other: "USER_KILLED"})
    for job in children:
        assert _state(site, job.id) == "FAILED"
        data = site.store.execute("SELECT data FROM event WHERE job_id = ? AND to_state = 'FAILED'", (job.id,))[0][0]
        assert json.loads(data)["message"] == f"parent job {away} (at another site) is FAILED"
    assert _state(site, gains.id) == "FAILED"
