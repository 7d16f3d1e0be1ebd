"""`balsam ui`: serves the dashboard and /v1 API of this host's sites (or one, --site) on 127.0.0.1 behind a token, and says
how to reach it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.cli_helpers import start_ui

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("starlette", reason="balsam ui needs starlette and uvicorn")
pytest.importorskip("uvicorn", reason="balsam ui needs starlette and uvicorn")


def _env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def _post(url: str, body: Any) -> Tuple[int, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _session(base: str, token: str) -> str:
    """What the login page does with the link's token: exchange it for a session token."""
    status, out = _post(base + "/v1/ui/session", {"token": token})
    assert status == 201, out
    return str(out["token"])


def _get(url: str, token: Optional[str] = None) -> Tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("content-type", "")


@pytest.fixture
def ui(site: Any, hello: Any, request: Any) -> Iterator[Tuple[str, str, str]]:
    """`balsam ui --site test-site` running: (base URL, the link's token, everything it printed before serving)."""
    extra = getattr(request, "param", None)
    proc, base, token, printed = start_ui(_env(extra), "--site", "test-site")
    try:
        yield base, token, printed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_serves_the_dashboard_and_the_api_behind_its_token(ui: Tuple[str, str, str]) -> None:
    base, token, printed = ui
    assert re.search(r"ssh -N -L (\d+):127\.0\.0\.1:\1 \S+@\S+", printed)
    status, body, ctype = _get(base + "/")
    assert status == 200 and ctype.startswith("text/html") and b'<div id="app">' in body
    asset = re.search(rb'src="(/assets/[^"]+\.js)"', body)
    assert asset and _get(base + asset.group(1).decode())[0] == 200
    session = _session(base, token)
    status, body, _ = _get(base + "/v1/whoami", session)
    assert status == 200 and json.loads(body)["kind"] == "ui"
    status, body, _ = _get(base + "/v1/apps", session)
    assert [a["name"] for a in json.loads(body)["results"]] == ["Hello"]
    for wrong in (None, "x" * 43, token[:-1], session[:-1]):
        status, body, _ = _get(base + "/v1/jobs", wrong)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"


def test_the_login_link_works_once(ui: Tuple[str, str, str]) -> None:
    base, token, _ = ui
    status, body, _ = _get(base + "/v1/whoami", token)  # the link's token is for the login page, not a bearer token
    assert status == 401 and "login link" in json.loads(body)["error"]["message"]
    session = _session(base, token)
    assert session != token and _get(base + "/v1/whoami", session)[0] == 200
    status, out = _post(base + "/v1/ui/session", {"token": token})  # the link again (a copy in the scrollback)
    assert status == 401
    message = out["error"]["message"]
    assert "already used" in message and "balsam ui" in message and "BALSAM_UI_TOKEN" in message
    status, body, _ = _get(base + "/v1/jobs", token)
    assert status == 401 and "already used" in json.loads(body)["error"]["message"]
    assert _get(base + "/v1/whoami", session)[0] == 200  # the session it opened goes on
    assert _post(base + "/v1/ui/session", {"token": "x" * 43})[0] == 401


REUSABLE = "a-reusable-token-for-scripts-0123456789"


@pytest.mark.parametrize("ui", [{"BALSAM_UI_TOKEN": REUSABLE}], indirect=True)
def test_balsam_ui_token_stays_reusable(ui: Tuple[str, str, str]) -> None:
    base, token, _ = ui
    assert token != REUSABLE  # the printed link still logs in once
    for _ in range(2):
        status, body, _ = _get(base + "/v1/whoami", REUSABLE)
        assert status == 200 and json.loads(body)["kind"] == "ui"
        assert _get(base + "/v1/whoami", _session(base, REUSABLE))[0] == 200
    _session(base, token)
    assert _post(base + "/v1/ui/session", {"token": token})[0] == 401


def test_ui_site_rows_report_the_agent(ui: Tuple[str, str, str]) -> None:
    base, token, _ = ui
    site = json.loads(_get(base + "/v1/sites", _session(base, token))[1])["results"][0]
    assert site["name"] == "test-site" and site["preset"] == "local"
    assert site["agent"]["running"] is False  # no agent was started for this site, and the page says so


def test_ui_refuses_a_short_token_with_one_line(site: Any) -> None:
    out = subprocess.run([sys.executable, "-m", "balsam", "ui", "--site", "test-site"], capture_output=True, text=True,
                         env=_env({"BALSAM_UI_TOKEN": "short"}), timeout=60)
    assert out.returncode != 0
    assert out.stderr.strip().startswith("Error:") and len(out.stderr.strip().splitlines()) == 1
    assert "at least 24" in out.stderr


@pytest.mark.parametrize("bind", ["", " 127.0.0.1"])
def test_ui_refuses_an_empty_bind_address_instead_of_listening_everywhere(site: Any, bind: str) -> None:
    """``--bind ''`` listened on every interface (0.0.0.0) while the link it printed said 127.0.0.1."""
    out = subprocess.run([sys.executable, "-m", "balsam", "ui", "--site", "test-site", "--bind", bind], capture_output=True,
                         text=True, env=_env({}), timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"Error: bind address {bind!r}: give an address of this host (127.0.0.1: "
                                               "this host alone; 0.0.0.0: every interface)"]


def _jobs_at(name: str, root: Path, n: int) -> List[int]:
    from balsam.api import ApplicationDefinition, Job

    class Echo(ApplicationDefinition):
        """Echoes."""

        site = name
        command_template = "echo {{ x }}"

    Echo.sync()
    jobs = Job.objects.bulk_create([Echo.submit(workdir=f"{name}/{i}", x=i, save=False) for i in range(n)])
    return [int(j.id) for j in jobs]  # type: ignore[arg-type]


def test_ui_serves_every_site_of_the_host_and_sites_created_later(tmp_path: Path) -> None:
    from balsam.site import init_site

    init_site(tmp_path / "a", name="a")
    init_site(tmp_path / "b", name="b")
    a_jobs, b_jobs = _jobs_at("a", tmp_path / "a", 3), _jobs_at("b", tmp_path / "b", 2)
    (tmp_path / "b" / "data" / "b" / "1").mkdir(parents=True)
    (tmp_path / "b" / "data" / "b" / "1" / "job.out").write_text("output of b/1\n")
    proc, base, _token, printed = start_ui(_env({"BALSAM_UI_TOKEN": REUSABLE}))
    try:
        assert "this host's sites (a, b" in printed

        def get(path: str) -> Any:
            status, body, _ = _get(base + path, REUSABLE)
            assert status == 200, body
            return json.loads(body)

        sites = {s["name"]: s for s in get("/v1/sites")["results"]}
        assert sorted(sites) == ["a", "b"] and sites["b"]["agent"]["running"] is False and sites["b"]["preset"] == "local"
        assert sorted(get("/v1/whoami")["sites"]) == sorted(s["id"] for s in sites.values())
        page = get("/v1/jobs?ordering=-id&count=true&limit=4")
        assert page["count"] == 5 and [j["id"] for j in page["results"]] == sorted(a_jobs + b_jobs, reverse=True)[:4]
        rest = get(f"/v1/jobs?ordering=-id&limit=4&cursor={page['next_cursor']}")
        assert [j["id"] for j in rest["results"]] == [min(a_jobs + b_jobs)] and rest["next_cursor"] is None
        assert sorted(j["workdir"] for j in get(f"/v1/jobs?site_id={sites['b']['id']}")["results"]) == ["b/0", "b/1"]
        assert get(f"/v1/jobs/count?site_id={sites['a']['id']}")["count"] == 3
        assert get(f"/v1/jobs/{b_jobs[1]}")["workdir"] == "b/1"
        assert get(f"/v1/jobs/{b_jobs[1]}/output")["text"] == "output of b/1\n"  # read from site b's own directory
        status, body, _ = _get(base + f"/v1/jobs/{(4242 << 32) | 1}/output", REUSABLE)
        assert status == 404
        init_site(tmp_path / "c", name="c")  # created while it runs
        deadline = time.monotonic() + 30
        while sorted(s["name"] for s in get("/v1/sites")["results"]) != ["a", "b", "c"]:
            assert time.monotonic() < deadline, "site c never appeared"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_site_limits_to_one(tmp_path: Path) -> None:
    from balsam.site import init_site

    init_site(tmp_path / "a", name="a")
    init_site(tmp_path / "b", name="b")
    _jobs_at("a", tmp_path / "a", 1)
    _jobs_at("b", tmp_path / "b", 2)
    proc, base, _token, printed = start_ui(_env({"BALSAM_UI_TOKEN": REUSABLE}), "--site", "b")
    try:
        assert "of site 'b'" in printed
        status, body, _ = _get(base + "/v1/sites", REUSABLE)
        assert status == 200 and [s["name"] for s in json.loads(body)["results"]] == ["b"]
        status, body, _ = _get(base + "/v1/jobs", REUSABLE)
        assert sorted(j["workdir"] for j in json.loads(body)["results"]) == ["b/0", "b/1"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
