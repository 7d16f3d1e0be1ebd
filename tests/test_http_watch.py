"""Waiting on jobs from a foreign host follows the agent's change stream (the /v1/ws WebSocket) instead of polling:
while nothing changes the client sends no requests, a finished job is yielded as soon as the stream names it,
and an agent restart in the middle of the wait is ridden through (a new stream, or polling when none opens)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List

import pytest

from tests.launcher_support import set_state

BACKENDS = ("http",)


def _until(what: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """Every request the HTTP client sends from now on ("METHOD path"): the real client, counted."""
    from balsam.http.client import HttpClient

    sent: List[str] = []
    real = HttpClient.request

    def counted(self: Any, method: str, path: str, *args: Any, **kw: Any) -> Any:
        sent.append(f"{method} {path}")
        return real(self, method, path, *args, **kw)

    monkeypatch.setattr(HttpClient, "request", counted)
    return sent


class Waiter(threading.Thread):
    """``Job.objects.as_completed`` on a thread, recording what it yields and when."""

    def __init__(self, jobs: List[Any]) -> None:
        super().__init__(daemon=True)
        self.jobs = jobs
        self.got: List[Any] = []
        self.error: BaseException = None  # type: ignore[assignment]

    def run(self) -> None:
        from balsam.api import Job

        try:
            for job in Job.objects.as_completed(self.jobs, timeout=120):
                self.got.append(job)
        except BaseException as e:  # reported by the test
            self.error = e


def test_as_completed_waits_on_the_websocket_without_polling(site: Any, hello: Any, requests: List[str]) -> None:
    from balsam.api import Job

    jobs = [Job(f"ws/{i}", hello, parameters={"say_hello_to": str(i)}) for i in range(3)]
    Job.objects.bulk_create(jobs)
    requests.clear()
    waiter = Waiter(jobs)
    waiter.start()
    _until(lambda: len(requests) >= 1)
    time.sleep(3.0)  # nothing changes: a polling client would have asked several times by now
    idle = list(requests)
    assert len(idle) == 1, f"the client kept asking while nothing changed: {idle}"
    set_state(site.store, int(jobs[1].id), "USER_KILLED")
    _until(lambda: len(waiter.got) == 1)
    assert waiter.got[0].id == jobs[1].id and waiter.got[0].state == "USER_KILLED"
    for job in (jobs[0], jobs[2]):
        set_state(site.store, int(job.id), "USER_KILLED")
    waiter.join(timeout=60)
    assert waiter.error is None and sorted(j.id for j in waiter.got) == sorted(j.id for j in jobs)
    assert len(requests) <= 1 + 2 * 3, f"one read per change named by the stream, not polling: {requests}"


def test_a_wait_rides_through_an_agent_restart(site: Any, hello: Any) -> None:
    from balsam.api import Job
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from tests.conftest import _running_servers

    jobs = [Job(f"restart/{i}", hello, parameters={"say_hello_to": str(i)}) for i in range(2)]
    Job.objects.bulk_create(jobs)
    waiter = Waiter(jobs)
    waiter.start()
    time.sleep(1.0)
    server = _running_servers[site.path]
    server.stop()  # the stream ends; the wait goes on
    set_state(site.store, int(jobs[0].id), "USER_KILLED")
    time.sleep(1.0)
    _running_servers[site.path] = start_api_server(site.path, site.store, ApiSettings(bind="127.0.0.1"), host=site.host)
    _until(lambda: len(waiter.got) == 1)
    set_state(site.store, int(jobs[1].id), "USER_KILLED")
    waiter.join(timeout=60)
    assert waiter.error is None and [j.id for j in waiter.got] == [jobs[0].id, jobs[1].id]


def test_a_stream_whose_client_hung_up_is_dropped_at_once(site: Any) -> None:
    """A watcher that closes its stream (a finished wait, a closed dashboard tab) is forgotten by the agent at once,
    not at the next change: nothing is read for it any more, and stopping the agent does not wait on it."""
    from balsam._api import sites
    from tests.conftest import _running_servers

    hub = _running_servers[site.path].app.state.api.hub
    stream = sites.resolve("test-site").backend.watch()
    assert stream is not None, "the agent offers its change stream"
    _until(lambda: len(hub.subscribers) == 1, 30)
    stream.close()
    _until(lambda: len(hub.subscribers) == 0, 10)  # nothing changed at the site since: only the hang-up ended it
