"""Doorbells: a commit that makes work wakes the process waiting for it (a launcher for runnable jobs, the agent's
processing for jobs to process) instead of leaving it to its poll. The launcher and agent tests here set their
poll periods to a minute: only the doorbell can start the work within the tests' waits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from balsam.db.doorbell import DIR_NAME, FINISHED, PROCESS, RUNNABLE, Doorbell, ring
from balsam.db.jobs import StateChange, apply_state_changes
from tests.launcher_support import configure, runnable, start, states, wait_for


def _state_dir(site: Any) -> Path:
    return Path(site.store.db_path).parent


def test_creation_rings_processing_and_preprocessing_rings_launchers_after_the_commit(site: Any, hello: Any) -> None:
    with Doorbell(_state_dir(site), RUNNABLE) as launchers, Doorbell(_state_dir(site), PROCESS) as processing:
        job = hello.submit("a", say_hello_to="a")  # STAGED_IN: the agent's processing has work
        assert processing.wait(5.0)
        assert not launchers.wait(0.0)
        with site.store.write() as conn:
            apply_state_changes(conn, [StateChange(int(job.id), "PREPROCESSED")])
            assert not launchers.wait(0.0), "rung before the commit: a waker would find nothing yet"
        assert launchers.wait(5.0), "a runnable job rings the launchers' doorbell"
        assert not processing.wait(0.0)


def test_a_job_reaching_a_final_state_rings_the_finished_bell_after_the_commit(site: Any, hello: Any) -> None:
    """A linked site's sync waits on ``finished``: a job that ends (finished, failed or killed) is pushed to the
    relay at once, not at the sync's next period."""
    job = hello.submit("a", say_hello_to="a")
    with Doorbell(_state_dir(site), FINISHED) as finished:
        with site.store.write() as conn:
            apply_state_changes(conn, [StateChange(int(job.id), "PREPROCESSED")])
        assert not finished.wait(0.2), "a job made runnable is not a finished one"
        with site.store.write() as conn:
            apply_state_changes(conn, [StateChange(int(job.id), "USER_KILLED")])
            assert not finished.wait(0.0), "rung before the commit: the push would not find it yet"
        assert finished.wait(5.0), "a killed job rings the finished bell"


def test_a_rolled_back_change_rings_nothing(site: Any, hello: Any) -> None:
    job = hello.submit("a", say_hello_to="a")
    with Doorbell(_state_dir(site), RUNNABLE) as launchers:
        with pytest.raises(RuntimeError):
            with site.store.write() as conn:
                apply_state_changes(conn, [StateChange(int(job.id), "PREPROCESSED")])
                raise RuntimeError("changed my mind")
        assert not launchers.wait(0.2)
        assert states(site.store, [int(job.id)])[int(job.id)] == "STAGED_IN"
        with site.store.write() as conn:  # the next transaction does not ring for the rolled-back one
            conn.execute("UPDATE site SET name=name")
        assert not launchers.wait(0.2)


def test_a_dead_waiters_doorbell_is_removed_by_the_next_ring(site: Any, hello: Any) -> None:
    directory = _state_dir(site) / DIR_NAME
    directory.mkdir(exist_ok=True)
    dead = directory / f"{RUNNABLE}.999999.0"
    os.mkfifo(dead)  # what a launcher killed with SIGKILL leaves: nobody reads it
    with Doorbell(_state_dir(site), RUNNABLE) as alive:
        assert ring(_state_dir(site), [RUNNABLE]) == 1
        assert not dead.exists()
        assert alive.path.exists() and alive.wait(1.0)
    assert not alive.path.exists(), "closing removes the FIFO"


def _bell(site: Any, topic: str) -> bool:
    directory = _state_dir(site) / DIR_NAME
    return directory.is_dir() and any(p.name.startswith(f"{topic}.") for p in directory.iterdir())


@pytest.mark.parametrize("mode", ["mpi", "serial"])
def test_an_idle_launcher_starts_a_job_made_runnable_at_once_not_at_its_next_poll(site: Any, hello: Any, mode: str) -> None:
    configure(site.path, poll_period_s=60.0)
    proc = start(site.path, mode, wall_time_min=5.0, idle_ttl_s=120.0)
    try:
        wait_for(lambda: _bell(site, RUNNABLE), timeout=60.0, what="the launcher's doorbell")
        (job_id,) = runnable(site.store, [hello.submit("now", say_hello_to="you")])
        wait_for(lambda: states(site.store, [job_id])[job_id] == "JOB_FINISHED", timeout=40.0, what="the job to run")
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) in (0, 143, -15)
    assert not _bell(site, RUNNABLE), "the launcher removes its doorbell when it stops"


def test_the_agent_processes_new_jobs_at_once_not_at_its_next_period(site: Any, hello: Any) -> None:
    from balsam.services.agent import start_agent, stop_agent

    path = site.path / "settings.yml"
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("processing", {})["period_s"] = 600.0
    path.write_text(yaml.safe_dump(data))
    start_agent(site.path)
    try:
        wait_for(lambda: _bell(site, PROCESS), timeout=60.0, what="the processing doorbell")
        job = hello.submit("new", say_hello_to="agent")
        wait_for(lambda: states(site.store, [int(job.id)])[int(job.id)] == "PREPROCESSED", timeout=40.0,
                 what="processing to preprocess the new job")
    finally:
        stop_agent(site.path)


def test_a_stream_of_rings_is_taken_in_batches_not_a_cycle_per_commit(tmp_path: Any) -> None:
    import threading
    import time

    from balsam.services.base import Service, ServiceThread

    class Counting(Service):
        name = "counting"

        def __init__(self) -> None:
            super().__init__(period_s=600.0)
            self.cycles = 0

        def run_cycle(self) -> None:
            self.cycles += 1

        def doorbell(self) -> Any:
            return Doorbell(tmp_path, PROCESS).open()

    service, stop = Counting(), threading.Event()
    thread = ServiceThread(service, stop)
    thread.start()
    try:
        wait_for(lambda: service.cycles == 1 and list(tmp_path.glob("doorbell/process.*")), timeout=30.0, what="the first cycle")
        started = time.monotonic()
        while time.monotonic() - started < 0.5:  # 500 commits in half a second, as launchers' status batches come
            ring(tmp_path, [PROCESS])
            time.sleep(0.001)
        wait_for(lambda: service.cycles > 1, timeout=30.0, what="a cycle after the rings")
        time.sleep(0.2)
        # each ring is answered within Service.wake_gap_s, but rings close together share a cycle
        assert 2 <= service.cycles <= 1 + 0.5 / Service.wake_gap_s + 3, service.cycles
    finally:
        stop.set()
        thread.join(timeout=10)
