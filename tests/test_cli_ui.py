"""`balsam ui`: serves one site's dashboard and /v1 API on 127.0.0.1 behind a token, and says how to reach it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest

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
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "ui", "--site", "test-site"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(extra))
    assert proc.stdout is not None
    printed = ""
    try:
        for _ in range(10):
            line = proc.stdout.readline()
            printed += line
            if line.startswith("Ctrl-C") or not line:
                break
        m = re.search(r"(http://127\.0\.0\.1:\d+)/#/login\?token=(\S+)", printed)
        assert m, printed
        yield m.group(1), m.group(2), printed
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


def test_ui_needs_one_site(tmp_path: Path) -> None:
    from balsam.site import init_site

    init_site(tmp_path / "a", name="a")
    init_site(tmp_path / "b", name="b")
    out = subprocess.run([sys.executable, "-m", "balsam", "ui"], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode != 0 and "choose one with --site" in out.stderr
