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


def _get(url: str, token: Optional[str] = None) -> Tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("content-type", "")


@pytest.fixture
def ui(site: Any, hello: Any) -> Iterator[Tuple[str, str, str]]:
    """`balsam ui --site test-site` running: (base URL, token, everything it printed before serving)."""
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "ui", "--site", "test-site"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
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
    status, body, _ = _get(base + "/v1/whoami", token)
    assert status == 200 and json.loads(body)["kind"] == "ui"
    status, body, _ = _get(base + "/v1/apps", token)
    assert [a["name"] for a in json.loads(body)["results"]] == ["Hello"]
    for wrong in (None, "x" * 43, token[:-1]):
        status, body, _ = _get(base + "/v1/jobs", wrong)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"


def test_ui_site_rows_report_the_agent(ui: Tuple[str, str, str]) -> None:
    base, token, _ = ui
    site = json.loads(_get(base + "/v1/sites", token)[1])["results"][0]
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
