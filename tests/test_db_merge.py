"""A read-modify-save of a job the site moved since the read (balsam.db.merge), on the site's home host and from
another host through its agent: Balsam 0.7's jobs guide saves a job right after creating it while the site moves
it on, and that save goes through; a change that conflicts with the move is refused with StaleVersion and writes
nothing. The moves are the site's own writers: the state machine (as the agent's processing does) and a launcher's
lease (acquire, then RUNNING under it)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from balsam import exceptions as exc
from balsam.db.backend import LocalBackend
from balsam.db.jobs import StateChange

BACKENDS = ("local", "http")


def _moved(home: Any, job_id: int, state: str) -> None:
    """The site moves the job (its processing service's write: the state machine, strict)."""
    LocalBackend(home).update_jobs([], (), [StateChange(job_id, state)])


def _launcher_runs(home: Any, job_id: int) -> None:
    """A launcher takes the job under its lease and starts it."""
    backend = LocalBackend(home)
    sid = backend.create_session(host=home.host, pid=os.getpid(), batch_job_id=None, label="test launcher")
    assert [j["id"] for j in backend.acquire(sid, 10)] == [job_id]
    assert backend.apply_changes([StateChange(job_id, "RUNNING")], session_id=sid) == []


def _at_site(home: Any, job_id: int) -> Any:
    row = home.execute("SELECT state, tags, data, num_nodes, wall_time_min, parameters FROM job WHERE id = ?", (job_id,))[0]
    return (row[0], json.loads(row[1]), json.loads(row[2]), row[3], row[4], json.loads(row[5]))


def test_the_guides_save_right_after_creation_merges_with_the_sites_move(site: Any, hello: Any, home: Any) -> None:
    from balsam.api import Job

    job = Job("guide/1", hello, parameters={"say_hello_to": "guide"}, tags={"step": "new"})
    job.save()
    assert job.state == "STAGED_IN"
    _moved(home, job.id, "PREPROCESSED")  # the agent's preprocess, after the user's copy was made
    job.tags["step"] = "tagged"
    job.num_nodes = 2
    job.data = {"note": "mine"}
    job.save()
    assert (job.state, job.tags, job.num_nodes, job.data) == ("PREPROCESSED", {"step": "tagged"}, 2, {"note": "mine"})
    assert _at_site(home, job.id)[:4] == ("PREPROCESSED", {"step": "tagged"}, {"note": "mine"}, 2)
    # Read again, the same: Job.objects.get(...), change, save, while the site moves it.
    again = Job.objects.get(id=job.id)
    _moved(home, job.id, "USER_KILLED")
    _moved(home, job.id, "RESTART_READY")
    again.wall_time_min = 7
    again.tags = {**again.tags, "x": "1"}
    again.save()
    assert _at_site(home, job.id)[:5] == ("RESTART_READY", {"step": "tagged", "x": "1"}, {"note": "mine"}, 2, 7)


def test_a_change_the_move_makes_moot_is_refused_and_writes_nothing(site: Any, hello: Any, home: Any) -> None:
    from balsam.api import Job

    job = Job("late/1", hello, parameters={"say_hello_to": "first"})
    job.save()
    _moved(home, job.id, "PREPROCESSED")
    params, state, tags, kill = (Job.objects.get(id=job.id) for _ in range(4))
    _launcher_runs(home, job.id)  # the run starts with the parameters it had
    params.parameters = {"say_hello_to": "too late"}
    with pytest.raises(exc.StaleVersion, match=r"a launcher took it \(RUNNING\) with the parameters it had.*nothing was saved"):
        params.save()
    state.state = "RESTART_READY"
    with pytest.raises(exc.StaleVersion, match="moved it from PREPROCESSED to RUNNING, so its change to RESTART_READY no longer applies"):
        state.save()
    assert _at_site(home, job.id)[0] == "RUNNING" and _at_site(home, job.id)[5] == {"say_hello_to": "first"}
    # Tags are the user's alone: they merge with the run; a kill stops the job whatever state it reached.
    tags.tags = {"reviewed": "yes"}
    tags.save()
    kill.state = "USER_KILLED"
    kill.save()
    assert _at_site(home, job.id)[:2] == ("USER_KILLED", {"reviewed": "yes"})
    # Reloaded, the refused change goes through (the job no longer runs).
    params.refresh_from_db()
    params.parameters = {"say_hello_to": "second"}
    params.save()
    assert _at_site(home, job.id)[5] == {"say_hello_to": "second"}


def test_two_users_changing_the_same_field_the_second_is_refused(site: Any, hello: Any, home: Any) -> None:
    from balsam.api import Job

    job = Job("both/1", hello, parameters={"say_hello_to": "x"}, tags={"owner": "none"})
    job.save()
    alice, bob = Job.objects.get(id=job.id), Job.objects.get(id=job.id)
    alice.tags = {"owner": "alice"}
    alice.save()
    bob.tags = {"owner": "bob"}
    with pytest.raises(exc.StaleVersion, match="tags was changed by someone else"):
        bob.save()
    bob.refresh_from_db()  # a field alice did not touch merges
    bob.data = {"bob": 1}
    bob.save()
    assert _at_site(home, job.id)[1:3] == ({"owner": "alice"}, {"bob": 1})
    # The same value written twice is no conflict.
    carol = Job.objects.get(id=job.id)
    Job.objects.filter(id=job.id).update(num_nodes=3)
    carol.num_nodes = 3
    carol.save()
    assert _at_site(home, job.id)[3] == 3
