"""The transition table: every legal change is accepted and writes an event; illegal ones are refused."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.states import LEGAL, STORED_STATES, JobState, check_transition, to_state
from balsam.exceptions import IllegalTransition, ValidationError

ALL = sorted(s.value for s in STORED_STATES)


def test_names_and_sets() -> None:
    assert JobState.RUNNING == "RUNNING"
    assert to_state("running") is JobState.RUNNING
    with pytest.raises(ValidationError, match="unknown job state 'RUNNIN'"):
        to_state("RUNNIN")
    assert len(ALL) == 14  # Balsam 0.7: 14 states; CREATED is never stored; USER_KILLED comes from Balsam 0.x


@pytest.mark.parametrize("src,dst", [(s, d) for s in ALL for d in sorted(LEGAL[s])])
def test_every_legal_transition_is_applied_with_an_event(store: Any, hello: Any, src: str, dst: str) -> None:
    from balsam.db.sessions import create_session

    job = hello.submit(workdir="j", say_hello_to="x")
    with store.write() as conn:
        sid = create_session(conn, host="test") if dst == "RUNNING" else None  # only a lease holder starts a job
        conn.execute("UPDATE job SET state=?, session_id=? WHERE id=?", (src, sid, job.id))
        result = apply_state_changes(conn, [StateChange(job.id, dst, data={"why": "test"}, session_id=sid)])
    assert result.applied >= 1 and not result.rejected
    events = store.execute("SELECT from_state, to_state, data FROM event WHERE job_id=? ORDER BY id", (job.id,))
    matching = [e for e in events if e[0] == src and e[1] == dst]
    assert matching, events
    assert json.loads(matching[-1][2])["why"] == "test"


ILLEGAL = [(s, d) for s, d in itertools.product(ALL, ALL) if d not in LEGAL[s]]


@pytest.mark.parametrize("src,dst", ILLEGAL[::7])
def test_illegal_transitions_are_refused_and_write_nothing(store: Any, hello: Any, src: str, dst: str) -> None:
    job = hello.submit(workdir="j", say_hello_to="x")
    with store.write() as conn:
        conn.execute("UPDATE job SET state=? WHERE id=?", (src, job.id))
    before = store.execute("SELECT count(*) FROM event")[0][0]
    with pytest.raises(IllegalTransition, match=f"cannot move from {src} to {dst}"):
        with store.write() as conn:
            apply_state_changes(conn, [StateChange(job.id, dst)])
    assert store.execute("SELECT state FROM job WHERE id=?", (job.id,))[0][0] == src
    assert store.execute("SELECT count(*) FROM event")[0][0] == before


def test_non_strict_mode_reports_refusals_and_applies_the_rest(store: Any, hello: Any) -> None:
    a = hello.submit(workdir="a", say_hello_to="x")
    b = hello.submit(workdir="b", say_hello_to="x")
    with store.write() as conn:
        result = apply_state_changes(conn, [StateChange(a.id, "RUNNING"), StateChange(b.id, "PREPROCESSED"),
                                            StateChange(a.id + 999, "PREPROCESSED")], strict=False)
    assert [r[0].job_id for r in result.rejected] == [a.id, a.id + 999]
    assert "STAGED_IN -> RUNNING is not allowed" in result.rejected[0][1]
    assert store.execute("SELECT state FROM job WHERE id=?", (b.id,))[0][0] == "PREPROCESSED"


def test_only_the_lease_holding_a_job_may_mark_it_running(store: Any, hello: Any) -> None:
    from balsam.db.sessions import create_session

    job = hello.submit(workdir="r", say_hello_to="x")
    with store.write() as conn:
        conn.execute("UPDATE job SET state='PREPROCESSED' WHERE id=?", (job.id,))
    with pytest.raises(IllegalTransition, match="only a launcher holding the job can mark it RUNNING"):
        with store.write() as conn:
            apply_state_changes(conn, [StateChange(job.id, "RUNNING")])
    with store.write() as conn:
        sid = create_session(conn, host="test")
        conn.execute("UPDATE job SET session_id=? WHERE id=?", (sid, job.id))
        assert apply_state_changes(conn, [StateChange(job.id, "RUNNING", session_id=sid)]).applied == 1


def test_error_message_lists_allowed_targets() -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition("RUNNING", "JOB_FINISHED", 7)
    assert str(info.value).startswith("job 7: cannot move from RUNNING to JOB_FINISHED (allowed from RUNNING: RUN_DONE, RUN_ERROR, RUN_TIMEOUT")
    assert info.value.job_id == 7
