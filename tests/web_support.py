"""A real site for the dashboard's browser tests: `balsam site init/start`, an app, a running BatchJob (the
local scheduler runs a real launcher), and `balsam ui` serving it, all as subprocesses of the `balsam` command.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
AXE = REPO / "web" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = Path(os.environ.get("BALSAM_SCREENSHOTS", REPO / "artifacts" / "screenshots"))
APPS = '''
from balsam.api import ApplicationDefinition

class Hello(ApplicationDefinition):
    """Greets someone, in job.out."""
    site = "dash-site"
    command_template = "echo Hello, {{ who }}! {{ times }}"
    parameters = {"who": {"required": True, "help": "who to greet"}, "times": {"required": False, "default": 1, "help": "a number"}}


class Show(ApplicationDefinition):
    """Prints a staged-in file."""
    site = "dash-site"
    command_template = "cat input/deck.txt"
    transfers = {"deck": {"required": True, "direction": "in", "local_path": "input/deck.txt"}}
'''


DAG_SCRIPT = '''
import sys
from balsam.api import DAG, use_site
use_site(sys.argv[1])
d = DAG(sys.argv[2], site="dash-site")
prep = d.node("prep", app="Hello", workdir="{run}/prep", params={"who": "prep"}, tags={"lane": "web"})
left = d.node("left", app="Hello", workdir="{run}/left", params={"who": "left"}, parents=[prep], tags={"lane": "web"})
right = d.node("right", app="Hello", workdir="{run}/right", params={"who": "right"}, parents=[prep])
d.node("join", app="Hello", workdir="{run}/join", params={"who": "join"}, parents=[left, right], tags={"lane": "web"})
d.save()
print(d.instantiate([{"run": "dag-" + sys.argv[2]}])[0].id)
'''


CSP_WATCH = """
window.addEventListener('securitypolicyviolation', e => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline code'} at ${e.sourceFile || document.URL}:${e.lineNumber}`)
}, true)
"""
"""Run in every page before its own scripts (Playwright's init scripts are not subject to the page's policy): each
content security policy violation becomes a console error."""


def watch_csp(context: Any, seen: List[str]) -> None:
    """Put every content security policy violation in the pages of the browser ``context`` into ``seen``: the
    page's own ``securitypolicyviolation`` events and Chromium's "Refused to ..." console errors."""
    context.add_init_script(CSP_WATCH)

    def on_console(message: Any) -> None:
        text = str(message.text)
        if message.type == "error" and ("CSP violation" in text or "Content Security Policy" in text):
            seen.append(text)

    context.on("console", on_console)


@dataclass
class DashSite:
    """The running site and its dashboard."""

    root: Path
    env: Dict[str, str]
    base: str
    token: str
    ui: "subprocess.Popen[str]"
    batch_job_id: int
    printed_link: str = ""
    """The one-time link `balsam ui` printed."""

    @property
    def link(self) -> str:
        return f"{self.base}/#/login?token={self.token}"

    def balsam(self, *args: str, check: bool = True) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, env=self.env, check=check,
                              timeout=120)

    def stop_ui(self) -> None:
        """Stop `balsam ui` (as Ctrl-C or a reboot of the login node would)."""
        self.ui.terminate()
        self.ui.wait(timeout=30)

    def start_ui(self) -> None:
        """Start `balsam ui` again on the same port, with the same token."""
        port = int(self.base.rsplit(":", 1)[1])
        self.ui, link = _launch_ui(self.env, self.root, port)
        assert link.startswith(self.base)
        self.printed_link = link

    def make_dag(self, name: str = "diamond") -> int:
        """A diamond DAG (prep -> left, right -> join) with one instance; "right" lacks the lane tag, so it waits."""
        out = subprocess.run([sys.executable, "-c", DAG_SCRIPT, str(self.root), name], capture_output=True, text=True, env=self.env,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip().splitlines()[-1])

    def api(self, method: str, path: str, body: Any = None, token: Optional[str] = None) -> Any:
        """Call the dashboard's /v1 API with a bearer token (BALSAM_UI_TOKEN's, as a script would)."""
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}/v1{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {token or self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return {"status": e.code, **json.loads(e.read() or b"{}")}

    def wait_jobs(self, ids: List[int], state: str, timeout_s: float = 120.0) -> None:
        """Until every job in ``ids`` is in ``state``."""
        deadline = time.monotonic() + timeout_s
        query = "&".join(f"id={i}" for i in ids)
        while True:
            rows = self.api("GET", f"/jobs?{query}&limit={len(ids)}")["results"]
            if len(rows) == len(ids) and all(r["state"] == state for r in rows):
                return
            assert time.monotonic() < deadline, f"jobs {ids} did not all reach {state}: {[(r['id'], r['state']) for r in rows]}"
            time.sleep(0.3)


def _balsam(env: Dict[str, str], *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, env=env, check=True, timeout=120)


def start_dash_site(tmp: Path) -> DashSite:
    """Create and start everything; the caller must call :func:`stop_dash_site`."""
    env = {**os.environ, "BALSAM_HOME": str(tmp / "home"), "PYTHONPATH": str(REPO)}
    env.pop("BALSAM_SITE_PATH", None)
    root = tmp / "dash-site"
    _balsam(env, "site", "init", str(root), "-n", "dash-site", "--preset", "local")
    settings = root / "settings.yml"
    text = re.sub(r"idle_ttl_s: \d+", "idle_ttl_s: 900", settings.read_text())
    settings.write_text(text + "transfers:\n  transfer_locations: {store: 'rsync://'}\n  period_s: 0.5\n  max_retries: 0\n")
    (tmp / "remote").mkdir()
    (tmp / "remote" / "deck.txt").write_text("the deck\n")
    (root / "dash_apps.py").write_text(APPS)
    _balsam(env, "app", "sync", str(root / "dash_apps.py"), "--site", str(root))
    _balsam(env, "site", "start", "--site", str(root))
    # The launcher runs only jobs tagged lane=web, so a test can keep a job waiting by leaving the tag off.
    sub = _balsam(env, "queue", "submit", "-n", "1", "-t", "30", "--tag", "lane=web", "--site", str(root), "--json")
    batch_job_id = int(json.loads(sub.stdout)["id"])
    env["BALSAM_UI_TOKEN"] = secrets.token_urlsafe(32)  # reusable (each test logs in with it); a restart keeps sessions
    ui, link = _launch_ui(env, root, 0)
    base, _, once = link.partition("/#/login?token=")
    assert once != env["BALSAM_UI_TOKEN"]  # the printed link's token is a new, one-time one
    return DashSite(root=root, env=env, base=base, token=env["BALSAM_UI_TOKEN"], ui=ui, batch_job_id=batch_job_id, printed_link=link)


def _launch_ui(env: Dict[str, str], root: Path, port: int) -> "Tuple[subprocess.Popen[str], str]":
    # In the site's folder, not the calling test's (a restart mid-test keeps serving the module's later tests).
    ui = subprocess.Popen([sys.executable, "-m", "balsam", "ui", "--site", str(root), "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, cwd=str(root))
    return ui, _read_link(ui)


def _read_link(ui: "subprocess.Popen[str]", timeout_s: float = 60.0) -> str:
    assert ui.stdout is not None
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        line = ui.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://127\.0\.0\.1:\d+/#/login\?token=\S+)", line)
        if m:
            return m.group(1)
    ui.kill()
    raise AssertionError("balsam ui printed no login link:\n" + "".join(lines))


def stop_dash_site(site: Optional[DashSite]) -> None:
    """Stop the UI, cancel the BatchJob (the agent stops its launcher), stop the agent."""
    if site is None:
        return
    site.ui.terminate()
    try:
        site.ui.wait(timeout=15)
    except subprocess.TimeoutExpired:
        site.ui.kill()
    site.balsam("queue", "term", str(site.batch_job_id), "--site", str(site.root), check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = site.balsam("queue", "ls", "--history", "--json", "--site", str(site.root), check=False)
        try:
            rows = json.loads(out.stdout)
        except ValueError:
            break
        if all(r.get("state") not in ("pending_submission", "queued", "running", "pending_deletion") for r in rows):
            break
        time.sleep(0.5)
    site.balsam("site", "stop", "--site", str(site.root), check=False)


# ------------------------------------------------------------------ the servers that serve the dashboard, in-process
@dataclass
class Served:
    """A running server that serves the dashboard, and the credentials of a caller of its API."""

    port: int
    stop: Callable[[], None]
    auth: Callable[[str, str], Dict[str, str]]
    """The headers that authenticate a request (method, target)."""
    kind: str = ""
    """"agent", "ui" or "relay"."""


def _agent(tmp_path: Path) -> Served:
    from balsam._api import sites
    from balsam.http.auth import sign_request
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import init_site, this_host

    init_site(tmp_path / "csp-site", name="csp-site")
    ref = sites.resolve("csp-site")
    server = start_api_server(ref.path, ref.store, ApiSettings(bind="127.0.0.1"), host=this_host())
    secret = (ref.path / ".balsam" / "api.secret").read_bytes().strip()
    return Served(server.port, server.stop, lambda method, target: sign_request(secret, method, target, b""))


def _ui(tmp_path: Path) -> Served:
    from balsam.http.ui import start_ui

    token = "a-reusable-token-for-the-doors-0123456789"
    server = start_ui(lambda: [], token=token, home=Path(os.environ["BALSAM_HOME"]))
    return Served(server.port, server.stop, lambda method, target: {"Authorization": f"Bearer {token}"})


def _relay(tmp_path: Path) -> Served:
    pytest.importorskip("sqlalchemy")
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.relay.server import build_relay_app
    from tests.relay_support import relay_store
    from tests.test_relay_server import login

    store = next(iter(relay_store("sqlite", tmp_path)))
    store.add_user("alice", "alice-password")
    server = ApiServer(build_relay_app(store, wait_s=0.5), ServeOptions(bind="127.0.0.1", port=0)).start()
    token = login(f"http://127.0.0.1:{server.port}", "alice", "alice-password").token
    return Served(server.port, server.stop, lambda method, target: {"Authorization": f"Bearer {token}"})


SERVER_KINDS = ("agent", "ui", "relay")


def serving(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A running server of the kind ``request.param`` names (a fixture body: ``pytest.fixture(params=SERVER_KINDS)``)."""
    server = {"agent": _agent, "ui": _ui, "relay": _relay}[request.param](tmp_path)
    server.kind = request.param
    try:
        yield server
    finally:
        server.stop()
