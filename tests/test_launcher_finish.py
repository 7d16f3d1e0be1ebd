"""A launcher finishes the jobs of apps without a postprocess hook itself (RUN_DONE -> POSTPROCESSED -> JOB_FINISHED
in its own status batch, through the one state machine), and leaves jobs of apps with a hook to the site agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from balsam.db import sessions
from balsam.db.jobs import StateChange, apply_state_changes
from tests.launcher_support import configure, events, run, runnable, start, states, wait_for

MODES = ["mpi", "serial"]


@pytest.mark.parametrize("mode", MODES)
def test_hookless_job_finishes_in_the_launcher_with_its_history_and_children(site: Any, hello: Any, mode: str) -> None:
    # No site agent runs here: nothing but the launcher moves these jobs on.
    parents = [hello.submit(f"p/{i}", say_hello_to=f"p{i}", node_packing_count=4) for i in range(3)]
    child = hello.submit("child", say_hello_to="c", parent_ids=[int(p.id) for p in parents])
    ids = runnable(site.store, parents)
    assert states(site.store, [int(child.id)]) == {int(child.id): "AWAITING_PARENTS"}
    assert run(site, mode) == 0
    assert set(states(site.store, ids).values()) == {"JOB_FINISHED"}
    history = [(e["from"], e["to"]) for e in events(site.store, ids[0])]
    assert history[-4:] == [("PREPROCESSED", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "POSTPROCESSED"),
                            ("POSTPROCESSED", "JOB_FINISHED")]
    assert "launcher" in events(site.store, ids[0])[-2]["data"]["message"]
    # every parent finished, so the cascade released the child (no stage-in pending: STAGED_IN)
    assert states(site.store, [int(child.id)])[int(child.id)] == "STAGED_IN"
    rc = site.store.execute("SELECT return_code, session_id FROM job WHERE id=?", (ids[0],))[0]
    assert tuple(rc) == (0, None)


@pytest.mark.parametrize("mode", MODES)
def test_a_launcher_with_nothing_left_to_run_reports_its_last_job_at_once(site: Any, hello: Any, mode: str) -> None:
    """The status updater batches changes for up to its period (here an hour): a launcher whose last job ended
    has nothing to batch it with, so it is written at once (its children, or a user, need not wait)."""
    configure(site.path, status_flush_period_s=3600)
    (job_id,) = runnable(site.store, [hello.submit("last", say_hello_to="x")])
    proc = start(site.path, mode, wall_time_min=10.0, idle_ttl_s=120.0)
    try:
        wait_for(lambda: states(site.store, [job_id])[job_id] == "JOB_FINISHED", timeout=60.0, what="JOB_FINISHED")
        assert proc.poll() is None, "reported by the running launcher, not by its exit"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("mode", MODES)
def test_job_with_a_postprocess_hook_still_goes_through_the_agent(site: Any, mode: str) -> None:
    from balsam.api import ApplicationDefinition
    from balsam.services.processing import ProcessingService
    from balsam.settings import ProcessingSettings, SessionSettings

    class Checked(ApplicationDefinition):
        """Marks its result in postprocess."""

        site = "test-site"
        command_template = "true"

        def postprocess(self) -> None:
            self.job.data = {**self.job.data, "checked": True}
            self.job.state = "POSTPROCESSED"

    Checked.sync()
    (job_id,) = runnable(site.store, [Checked.submit("checked")])
    assert run(site, mode) == 0
    assert states(site.store, [job_id])[job_id] == "RUN_DONE", "the launcher leaves a hooked job to the agent"
    service = ProcessingService(site, ProcessingSettings(num_workers=1), SessionSettings(), host=site.host)
    try:
        service.run_cycle()
    finally:
        service.cleanup()
    assert states(site.store, [job_id])[job_id] == "JOB_FINISHED"
    data = site.store.execute("SELECT data FROM job WHERE id=?", (job_id,))[0][0]
    assert json.loads(data) == {"checked": True}, "the hook ran"


@pytest.mark.parametrize("mode", MODES)
def test_failed_run_of_a_hookless_app_is_left_to_the_agent(site: Any, mode: str) -> None:
    from balsam.api import ApplicationDefinition

    class Fails(ApplicationDefinition):
        """Exits 3."""

        site = "test-site"
        command_template = "exit 3"

    Fails.sync()
    (job_id,) = runnable(site.store, [Fails.submit("fails")])
    assert run(site, mode) == 0
    assert states(site.store, [job_id])[job_id] == "RUN_ERROR", "handle_error is the agent's, not the launcher's"


def _running(site: Any, job_id: int) -> int:
    with site.store.write() as conn:
        sid = sessions.create_session(conn, host="h", label="launcher")
        assert [r["id"] for r in sessions.acquire(conn, sid, max_num_jobs=1)] == [job_id]
        apply_state_changes(conn, [StateChange(job_id, "RUNNING", session_id=sid)])
    return sid


def test_a_lease_moves_its_job_past_run_done_only_within_one_batch(site: Any, hello: Any) -> None:
    # What a launcher's status batch over HTTP looks like: every change names the lease.
    (a,) = runnable(site.store, [hello.submit("a", say_hello_to="a")])
    sid = _running(site, a)
    with site.store.write() as conn:
        result = apply_state_changes(conn, [StateChange(a, "RUN_DONE", session_id=sid),
                                            StateChange(a, "POSTPROCESSED", session_id=sid)], strict=False)
    assert result.rejected == []
    assert states(site.store, [a])[a] == "JOB_FINISHED"

    (b,) = runnable(site.store, [hello.submit("b", say_hello_to="b")])
    sid = _running(site, b)
    with site.store.write() as conn:
        apply_state_changes(conn, [StateChange(b, "RUN_DONE", session_id=sid)], strict=False)
        later = apply_state_changes(conn, [StateChange(b, "POSTPROCESSED", session_id=sid)], strict=False)
    assert [why for _, why in later.rejected] == [f"job {b} is not held by session {sid} (its lease expired or it was released)"]
    assert states(site.store, [b])[b] == "RUN_DONE"

    # Only RUN_DONE -> POSTPROCESSED carries: a lease cannot decide a failed run's fate (handle_error's).
    (c,) = runnable(site.store, [hello.submit("c", say_hello_to="c")])
    sid = _running(site, c)
    with site.store.write() as conn:
        result = apply_state_changes(conn, [StateChange(c, "RUN_ERROR", session_id=sid),
                                            StateChange(c, "FAILED", session_id=sid)], strict=False)
    assert len(result.rejected) == 1 and states(site.store, [c])[c] == "RUN_ERROR"


def test_journal_replay_finishes_a_hookless_job_of_a_dead_launcher(site: Any, hello: Any) -> None:
    from balsam.db import journal

    (job_id,) = runnable(site.store, [hello.submit("j", say_hello_to="j")])
    sid = _running(site, job_id)
    writer = journal.JournalWriter(site.path / ".balsam", sid)
    writer.append(job_id, "RUNNING", 1.0)
    writer.append(job_id, "RUN_DONE", 2.0, {"returncode": 0}, {"return_code": 0})
    writer.append(job_id, "POSTPROCESSED", 2.0, {"message": "no postprocess hook: moved on by the launcher"})
    writer.close()
    with site.store.write() as conn:
        journal.replay(conn, sid, site.path / ".balsam")
    assert states(site.store, [job_id])[job_id] == "JOB_FINISHED"


def test_acquiring_a_few_jobs_does_not_read_the_whole_backlog(site: Any, hello: Any) -> None:
    """A launcher with one free slot asks for what fits; the cost must not grow with the jobs waiting."""
    from balsam.api import Job

    def steps_to_acquire_two() -> int:
        count = [0]
        with site.store.write() as conn:
            sid = sessions.create_session(conn, host="h", label="launcher")
            conn.set_progress_handler(lambda: count.__setitem__(0, count[0] + 1) or 0, 100)
            try:
                got = sessions.acquire(conn, sid, max_num_jobs=256, max_aggregate_nodes=1.0)
            finally:
                conn.set_progress_handler(None, 100)
            sessions.release(conn, sid)
        assert len(got) == 2  # node_packing_count=2: two jobs fill one node
        return count[0]

    def add(n: int, prefix: str) -> None:
        jobs = Job.objects.bulk_create([hello.submit(f"{prefix}/{i}", say_hello_to="x", node_packing_count=2, save=False)
                                        for i in range(n)])
        runnable(site.store, jobs)

    add(100, "few")
    few = steps_to_acquire_two()
    add(5000, "many")
    many = steps_to_acquire_two()
    assert many < 3 * few + 50, f"acquiring 2 of 5,100 jobs took {many} steps, of 100: {few}"


def test_a_start_only_a_node_worker_journaled_is_on_record_when_the_lease_ends(site: Any, hello: Any) -> None:
    """A serial-mode node worker journals each RUNNING itself before the spawn: a launcher stopped or killed before
    it heard of the start leaves the run on record (a re-run, never a second silent start), and a start the launcher
    did record (the same time in both journals) is applied once, in the launcher's order."""
    from balsam.db import journal

    a, b = runnable(site.store, [hello.submit("a", say_hello_to="a"), hello.submit("b", say_hello_to="b")])
    with site.store.write() as conn:
        sid = sessions.create_session(conn, host="h", label="launcher")
        assert sorted(r["id"] for r in sessions.acquire(conn, sid, max_num_jobs=2)) == sorted([a, b])
    state = site.path / ".balsam"
    master = journal.JournalWriter(state, sid)
    master.append(a, "RUNNING", 1.5)
    master.append(a, "RUN_DONE", 2.0, {"returncode": 0}, {"return_code": 0})
    master.close()
    worker = journal.JournalWriter(state, sid, "w0")
    worker.append(a, "RUNNING", 1.5)  # the launcher heard of this one
    worker.append(b, "RUNNING", 3.0)  # and not of this one
    worker.close()
    with site.store.write() as conn:
        sessions.release(conn, sid, "the launcher died")
    got = states(site.store, [a, b])
    assert got[a] in ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
    assert got[b] in ("RUN_TIMEOUT", "RESTART_READY")  # it ran (perhaps still runs): timed out, re-run as a re-run
    assert [e["to"] for e in events(site.store, b)].count("RUNNING") == 1
    assert [e["to"] for e in events(site.store, a)].count("RUNNING") == 1
    assert not list(journal.journal_dir(state).glob(f"{sid}.*"))  # both journals removed with the lease


def test_a_journal_part_name_cannot_leave_the_journal_folder(tmp_path: Path) -> None:
    from balsam.db import journal

    with pytest.raises(ValueError):
        journal.journal_path(tmp_path, 1, "../x")
    assert journal.journal_path(tmp_path, 1, "w3").name == "1.w3.jsonl"
