"""Who may write what over /v1 (DESIGN.md section 7), against real servers: only the site's owner (the site secret)
may run a launcher's lease or write run() results and exceptions, which the Python API unpickles. A dashboard token
of `balsam ui` (kind "ui") reads and manages jobs, and nothing it sends is ever unpickled."""

from __future__ import annotations

import base64
import json
import os
import pickle
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

from tests.cli_helpers import start_ui

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("starlette", reason="balsam ui needs starlette and uvicorn")
pytest.importorskip("uvicorn", reason="balsam ui needs starlette and uvicorn")


class _Touch:
    """A pickle that, once loaded, creates a file (what an attacker's payload would do instead)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def _call(method: str, url: str, token: str, body: Any = None) -> Tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def ui_session(site: Any, adder: Any) -> Iterator[Tuple[str, str]]:
    """`balsam ui --site test-site` running, logged in as its dashboard does: (base URL, session token)."""
    proc, base, link_token, _printed = start_ui({**os.environ, "PYTHONPATH": str(REPO)}, "--site", "test-site")
    try:
        req = urllib.request.Request(base + "/v1/ui/session", data=json.dumps({"token": link_token}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            yield base, json.loads(resp.read())["token"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("field", ["serialized_return_value", "serialized_exception"])
def test_a_dashboard_token_cannot_plant_a_pickle_the_owners_result_would_load(ui_session: Tuple[str, str], adder: Any,
                                                                               tmp_path: Path, field: str) -> None:
    from balsam.api import Job

    base, token = ui_session
    job = Job("w/1", adder, parameters={"x": 1})
    job.save()
    payload = base64.b64encode(pickle.dumps((_Touch(tmp_path / "pwned"), ""))).decode()
    status, out = _call("PATCH", f"{base}/v1/jobs/{job.id}", token, {field: payload})
    assert status == 400 and "cannot be written" in out["error"]["message"], out
    status, out = _call("PUT", f"{base}/v1/jobs?id={job.id}", token, {field: payload})
    assert status == 400 and "cannot be written" in out["error"]["message"], out
    status, out = _call("PATCH", f"{base}/v1/jobs", token, [{"id": job.id, field: payload}])
    assert status == 400, out
    job.refresh_from_db()
    assert getattr(job, field) is None
    with pytest.raises(Job.NoResult):
        job.result_nowait()
    assert not (tmp_path / "pwned").exists()
    # The dashboard still does what it is for: tags, and a kill.
    status, out = _call("PATCH", f"{base}/v1/jobs/{job.id}", token, {"tags": {"k": "v"}, "state": "USER_KILLED"})
    assert status == 200 and out["state"] == "USER_KILLED" and out["tags"] == {"k": "v"}, out


def test_a_dashboard_token_cannot_act_as_a_launcher(ui_session: Tuple[str, str], adder: Any, tmp_path: Path) -> None:
    """A lease would let it acquire a runnable Python job and report it done with a pickled "result" of its own,
    which the owner's result() loads once the agent finishes the job."""
    from balsam._api import sites
    from balsam.api import Job

    base, token = ui_session
    job = Job("w/2", adder, parameters={"x": 1})
    job.save()
    job.state = "PREPROCESSED"  # what the agent's processing does: the job waits for a launcher
    job.save()
    status, out = _call("POST", f"{base}/v1/sessions", token, {"label": "not a launcher"})
    assert status == 401 and "site's owner" in out["error"]["message"], out
    # A real launcher's lease, named by its (guessable) id, is refused too.
    lease = sites.resolve("test-site").backend.create_session(host="h", pid=1, batch_job_id=None, label="launcher")
    payload = base64.b64encode(pickle.dumps(_Touch(tmp_path / "pwned"))).decode()
    for method, path, body in (("POST", f"/v1/sessions/{lease}/acquire", {"max_num_jobs": 5}),
                               ("PUT", f"/v1/sessions/{lease}", None),
                               ("POST", "/v1/status-batches", {"session_id": lease, "changes": [{"job_id": job.id, "state": "RUNNING"}]}),
                               ("POST", "/v1/status-batches", {"session_id": lease, "changes": [
                                   {"job_id": job.id, "state": "RUN_DONE", "fields": {"serialized_return_value": payload}}]}),
                               ("DELETE", f"/v1/sessions/{lease}", None)):
        status, out = _call(method, base + path, token, body)
        assert status == 401 and "site's owner" in out["error"]["message"], (path, out)
    job.refresh_from_db()
    assert job.state == "PREPROCESSED" and job.serialized_return_value is None
    with pytest.raises(Job.NoResult):
        job.result_nowait()
    assert not (tmp_path / "pwned").exists()


def test_job_output_shows_only_the_jobs_own_file(ui_session: Tuple[str, str], adder: Any, site: Any, tmp_path: Path) -> None:
    """A job (its app, given hostile parameters) can make its job.out anything: a link to a private file, a second
    name (hard link) of the site's API secret, which the dashboard then served to whoever held a dashboard token, or a
    FIFO, whose read held the request forever. Only a plain file of the job's own is shown."""
    import threading

    from balsam.api import Job

    base, token = ui_session
    jobs = {name: Job(f"out/{name}", adder, parameters={"x": 1}) for name in ("plain", "symlink", "hardlink", "fifo")}
    for job in jobs.values():
        job.save()
    folder = {name: site.path / "data" / "out" / name for name in jobs}
    for f in folder.values():
        f.mkdir(parents=True)
    (folder["plain"] / "job.out").write_text("hello from the job\n")
    private = tmp_path / "id_rsa"
    private.write_text("PRIVATE KEY\n")
    (folder["symlink"] / "job.out").symlink_to(private)
    from balsam.http.auth import ensure_secret

    secret = site.path / ".balsam" / "api.secret"
    ensure_secret(secret)  # as the site's agent makes it
    os.link(secret, folder["hardlink"] / "job.out")
    os.mkfifo(folder["fifo"] / "job.out")
    answers: Dict[str, Tuple[int, Any]] = {}

    def ask(name: str) -> None:
        answers[name] = _call("GET", f"{base}/v1/jobs/{jobs[name].id}/output", token)

    threads = [threading.Thread(target=ask, args=(name,), daemon=True) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(answers) == set(jobs), f"no answer for {set(jobs) - set(answers)} (a FIFO's read never ended)"
    assert answers["plain"] == (200, {"text": "hello from the job\n", "truncated": False})
    for name in ("symlink", "hardlink", "fifo"):
        status, out = answers[name]
        assert status == 404 and "no output" in out["error"]["message"], (name, out)
    shown = json.dumps(answers)
    assert "PRIVATE KEY" not in shown and secret.read_text().strip() not in shown
