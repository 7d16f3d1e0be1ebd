"""An idle launcher on another host long-polls the site agent for jobs: the agent answers as soon as jobs become
runnable or are freed by another launcher's lease, not at the end of the wait."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest

from tests.launcher_support import runnable


@pytest.fixture
def channel(site: Any) -> Iterator[Any]:
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import this_host

    server = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    yield server
    server.stop()


def _source(site: Any) -> Any:
    from balsam.http.client import HttpBackend
    from balsam.launcher.remote import RemoteJobSource

    backend = HttpBackend.for_site(site.path, retry_s=5)
    return RemoteJobSource(backend, host="some-compute-node", batch_job_id=None, label="test", heartbeat_period_s=60).start()


def _later(delay: float, action: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()), daemon=True)
    thread.start()
    return thread


def test_a_job_made_runnable_answers_a_waiting_launcher(site: Any, channel: Any, hello: Any) -> None:
    source = _source(site)
    job = hello.submit("wake/1", say_hello_to="x")
    _later(0.5, lambda: runnable(site.store, [job]))
    t0 = time.monotonic()
    jobs = source.acquire(10, wait_s=5.0)
    assert [j["id"] for j in jobs] == [int(job.id)]
    assert time.monotonic() - t0 < 4.5, "answered when the job became runnable, not at the end of the wait"
    source.release()


def test_jobs_another_launcher_lets_go_answer_a_waiting_launcher(site: Any, channel: Any, hello: Any) -> None:
    ids = runnable(site.store, [hello.submit(f"free/{i}", say_hello_to="x") for i in range(3)])
    holder, waiter = _source(site), _source(site)
    assert sorted(j["id"] for j in holder.acquire(10)) == sorted(ids)
    _later(0.5, holder.release)  # it stops before starting them: they are free for others
    t0 = time.monotonic()
    jobs = waiter.acquire(10, wait_s=5.0)
    assert sorted(j["id"] for j in jobs) == sorted(ids)
    assert time.monotonic() - t0 < 4.5
    waiter.release()


def test_stopping_the_agent_under_a_waiting_launcher_logs_no_error(site: Any, channel: Any, caplog: Any) -> None:
    """An agent stopped while a launcher long-polls it cuts the wait off, as a stop should: no error and no
    traceback in the agent's log (the launcher retries against the next agent)."""
    import logging

    source = _source(site)
    waiting = threading.Thread(target=lambda: _quietly(lambda: source.acquire(10, wait_s=5.0)), daemon=True)
    waiting.start()
    time.sleep(0.5)
    server_log = logging.getLogger("uvicorn.error")  # uvicorn's own (it does not propagate to the root)
    server_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.DEBUG):
            channel.stop()
    finally:
        server_log.removeHandler(caplog.handler)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


def _quietly(action: Any) -> None:
    try:
        action()
    except Exception:  # the agent went away under it: this test looks at the agent's side
        pass
