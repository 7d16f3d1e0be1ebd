"""Balsam 0.7's Python apps (the app guide's "Python Applications" and the jobs guide's "Python App Futures") with
the values its docs promise: ``run()``'s arguments, return values and exceptions are serialized by value, as 0.7's
dill did, so a lambda, a function or a class defined in the user's script (or notebook) crosses to the launcher,
and what ``run()`` builds from the app's own code comes back to ``result()``. Each test runs on the site's home host
and from another host through the agent, with a real launcher.

What differed and is now fixed: such arguments were refused when the job was created ("Can't pickle <function
<lambda>>"), an object of a class defined in the user's script failed in the launcher ("Can't get attribute 'P'"),
and an exception class of the app's own code raised ``ModuleNotFoundError`` from ``result()`` instead of itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest

from balsam.api import ApplicationDefinition, Job
from tests.launcher_support import run, runnable

BACKENDS = ("local", "http")


@dataclasses.dataclass
class Point:
    """A class of the user's script: the launcher has no module to import it from."""

    x: float
    y: float


class NotConverged(Exception):
    """An exception of the app's own code (shipped with the app, as its helpers are)."""


class Summary:
    """A result type of the app's own code."""

    def __init__(self, total: float) -> None:
        self.total = total


class Adder(ApplicationDefinition):
    site = "test-site"

    def run(self, x: Any, y: Any) -> Any:
        return x + y


class Apply(ApplicationDefinition):
    site = "test-site"

    def run(self, func: Callable[[Any], Any], value: Any) -> Any:
        return func(value)


class Solver(ApplicationDefinition):
    site = "test-site"

    def run(self, what: str) -> Any:
        if what == "summary":
            return Summary(3.5)
        if what == "scaler":
            def scale(v: float) -> float:
                return v * 10

            return scale
        raise NotConverged(f"{what}: residual too large")


def _run_all(site: Any, jobs: Any) -> None:
    runnable(site.store, jobs)
    assert run(site, "mpi", idle_ttl_s=1.0) == 0


def test_the_futures_examples_with_arguments_of_any_python_type(site: Any) -> None:
    for app in (Adder, Apply):
        app.sync()
    # The jobs guide: job = Adder.submit("test/123", x=3, y=7); assert job.result() == 3 + 7
    job = Adder.submit("test/123", x=3, y=7)
    square = Apply.submit(workdir="apply/lambda", func=lambda x: x**2, value=3)
    offset = 100

    def shift(p: Point) -> Point:  # a closure over the script's own variable and class
        return Point(p.x + offset, p.y)

    moved = Apply.submit(workdir="apply/closure", func=shift, value=Point(1, 2))
    pair = Adder.submit(workdir="add/tuples", x=(1, 2), y=(3,))
    assert isinstance(Job.objects.get(id=square.id).get_parameters()["func"], type(lambda: 0))
    _run_all(site, [job, square, moved, pair])
    assert job.result(timeout=30) == 3 + 7
    assert square.result(timeout=30) == 9
    assert moved.result(timeout=30) == Point(101, 2) and pair.result(timeout=30) == (1, 2, 3)
    for j in Job.objects.as_completed([job, square, moved, pair], timeout=30):
        assert str(j.state) == "JOB_FINISHED"


def test_what_run_builds_from_the_apps_own_code_comes_back(site: Any) -> None:
    Solver.sync()
    summary = Solver.submit(workdir="solve/summary", what="summary")
    scaler = Solver.submit(workdir="solve/scaler", what="scaler")
    failing = Solver.submit(workdir="solve/fail", what="solve/fail")
    _run_all(site, [summary, scaler, failing])
    assert summary.result(timeout=30).total == 3.5
    assert scaler.result(timeout=30)(2) == 20
    # "If the function raised an Exception, the Exception is re-raised": its own class, message and traceback (the
    # launcher records it with RUN_ERROR; no agent runs handle_error here, so result() would wait for FAILED).
    failing.refresh_from_db()
    with pytest.raises(Exception) as caught:
        failing.result_nowait()
    assert type(caught.value).__name__ == "NotConverged" and str(caught.value) == "solve/fail: residual too large"
    assert "raise NotConverged" in str(caught.value.__cause__)


def test_the_app_guides_numpy_vecnorm(site: Any) -> None:
    np = pytest.importorskip("numpy")

    class VecNorm(ApplicationDefinition):
        site = "test-site"

        def run(self, vec: Any) -> Any:
            import numpy as np

            return np.linalg.norm(vec)

    norm = VecNorm.submit(workdir="demo/norm", vec=np.array([3.0, 4.0]))
    _run_all(site, [norm])
    assert norm.result(timeout=30) == 5.0


def test_only_the_sites_owner_may_send_pickled_arguments(tmp_path: Any) -> None:
    """Pickled arguments are code to the launcher that loads them, so over HTTP only the site's own principal (the
    site secret, which alone may sync apps) may send them; a browser's token gets a 400 naming the field."""
    import base64
    import http.client
    import json
    import pickle

    from balsam._api.sites import resolve
    from balsam.http.auth import Principal, TokenSet, sign_request
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import init_site, this_host

    init_site(tmp_path / "test-site", name="test-site")
    Adder.sync()
    ref = resolve("test-site")
    server = start_api_server(ref.path, ref.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    tokens = TokenSet()
    server.app.state.api.auth.tokens = tokens
    item = {"workdir": "p/1", "app_id": Adder.__app_id__, "parameters": {"x": "<pickled builtins.tuple>", "y": 1},
            "parameters_pickled": base64.b64encode(pickle.dumps({"x": (1, 2)})).decode()}
    body = json.dumps([item]).encode()

    def post(headers: Any) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/jobs", body=body, headers=dict(headers, **{"Content-Type": "application/json"}))
        resp = conn.getresponse()
        out = resp.status, json.loads(resp.read())
        conn.close()
        return out

    try:
        status, answer = post({"Authorization": f"Bearer {tokens.issue(Principal(kind='ui', name='browser'))}"})
        assert status == 400 and "site's owner" in json.dumps(answer) and Job.objects.count() == 0
        secret = (ref.path / ".balsam" / "api.secret").read_bytes().strip()
        status, answer = post(sign_request(secret, "POST", "/v1/jobs", body))
        assert status == 201 and Job.objects.get(workdir="p/1").get_parameters() == {"x": (1, 2), "y": 1}
    finally:
        server.stop()


def test_a_bulk_create_with_python_arguments_in_parts(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The app guide's bulk creation, jobs = Job.objects.bulk_create([App.submit(..., save=False) ...]), with tuples:
    # from another host a creation larger than one request goes in parts, created all at once (parts of 2 here).
    import balsam.http.client as http_client

    monkeypatch.setattr(http_client, "CREATE_CHUNK", 2)
    Adder.sync()
    jobs = Job.objects.bulk_create([Adder.submit(workdir=f"many/{i}", x=(i,), y=(i, i), save=False) for i in range(5)])
    assert [Job.objects.get(id=j.id).get_parameters() for j in jobs] == [{"x": (i,), "y": (i, i)} for i in range(5)]
    _run_all(site, jobs[:1])
    assert jobs[0].result(timeout=30) == (0, 0, 0)
