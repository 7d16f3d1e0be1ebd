"""`balsam ui` without --site serves every site of this host, in Chromium: a card per site, one jobs table over
both with a site filter, a job of each site opened from it, and a site created while the page is open joining the
Sites view and the filter without a reload.

Run: bash .ci/chromium.sh && pytest -m browser tests/test_web_host.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.web_support import CHROMIUM, REPO, SCREENSHOTS, _read_link, watch_csp

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium (bash .ci/chromium.sh)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (bash .ci/chromium.sh)"),
]

APP = '''
from balsam.api import ApplicationDefinition

class Greet(ApplicationDefinition):
    """Greets someone."""
    site = "{site}"
    command_template = "echo Hello, {{{{ who }}}}!"
    parameters = {{"who": {{"required": True, "help": "who to greet"}}}}
'''


class Host:
    """Sites on one host and `balsam ui` serving them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {**os.environ, "BALSAM_HOME": str(tmp / "home"), "PYTHONPATH": str(REPO), "BALSAM_UI_TOKEN": secrets.token_urlsafe(32)}
        self.env.pop("BALSAM_SITE_PATH", None)
        self.ui: "subprocess.Popen[str] | None" = None
        self.link = ""

    def balsam(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, env=self.env, check=True,
                              timeout=120, cwd=self.tmp)

    def add_site(self, name: str) -> None:
        root = self.tmp / name
        self.balsam("site", "init", str(root), "-n", name, "--preset", "local")
        (self.tmp / f"{name}_apps.py").write_text(APP.format(site=name))
        self.balsam("app", "sync", str(self.tmp / f"{name}_apps.py"), "--site", str(root))

    @property
    def base(self) -> str:
        return self.link.partition("/#/")[0]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}/v1{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.env['BALSAM_UI_TOKEN']}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def start_ui(self) -> None:
        self.ui = subprocess.Popen([sys.executable, "-m", "balsam", "ui"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=self.env, cwd=self.tmp)
        self.link = _read_link(self.ui)

    def stop(self) -> None:
        if self.ui is not None:
            self.ui.terminate()
            self.ui.wait(timeout=30)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """Sites "north" (3 jobs) and "south" (2 jobs) made with the CLI, and `balsam ui` serving both."""
    h = Host(tmp_path)
    try:
        h.add_site("north")
        h.add_site("south")
        h.start_ui()
        by_site: Dict[int, int] = {a["site_id"]: a["id"] for a in h.api("GET", "/apps")["results"]}
        sites = {s["name"]: s["id"] for s in h.api("GET", "/sites")["results"]}
        jobs: List[Dict[str, Any]] = [{"app_id": by_site[sites["north"]], "workdir": f"north/{i}", "parameters": {"who": "n"}} for i in range(3)]
        jobs += [{"app_id": by_site[sites["south"]], "workdir": f"south/{i}", "parameters": {"who": "s"}} for i in range(2)]
        made = h.api("POST", "/jobs", jobs)  # one request, two sites: each job goes to its app's site
        assert [j["workdir"] for j in made] == [j["workdir"] for j in jobs]
        yield h
    finally:
        h.stop()


def _wait_workdirs(page: Any, want: List[str]) -> None:
    page.wait_for_function(
        """want => JSON.stringify([...document.querySelectorAll('[data-testid=jobs-table] tbody tr td:nth-child(5)')]
                 .map(td => td.textContent.trim()).sort()) === JSON.stringify(want)""", arg=sorted(want))


def test_one_dashboard_for_every_site_of_the_host(host: Host) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.set_default_timeout(30_000)
            errors: List[str] = []
            watch_csp(context, errors)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(host.link)
            page.wait_for_function("() => location.hash.startsWith('#/sites')")
            for name, n in (("north", 3), ("south", 2)):
                card = page.locator(".site-card", has_text=name)
                card.locator("[data-testid=backlog]", has_text=str(n)).wait_for()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "host-sites.png"), full_page=True)

            page.get_by_role("navigation", name="Main navigation").get_by_text("Jobs", exact=True).click()
            everything = [f"north/{i}" for i in range(3)] + [f"south/{i}" for i in range(2)]
            _wait_workdirs(page, everything)
            page.wait_for_function(  # each row names its site
                """() => JSON.stringify([...document.querySelectorAll('[data-testid=jobs-table] tbody tr td:nth-child(3)')]
                       .map(td => td.textContent.trim()).sort()) === JSON.stringify(['north', 'north', 'north', 'south', 'south'])""")
            page.screenshot(path=str(SCREENSHOTS / "host-jobs.png"), full_page=True)
            page.get_by_label("Site", exact=True).click(force=True)
            page.get_by_role("option", name="south", exact=True).click()
            page.keyboard.press("Escape")
            _wait_workdirs(page, ["south/0", "south/1"])
            page.locator("[data-testid=jobs-table] tbody tr", has_text="south/1").locator("a").first.click()
            page.wait_for_function("() => location.hash.startsWith('#/jobs/')")
            page.get_by_text("south/1").first.wait_for()  # the job page of a job of the second site

            page.evaluate("window.__sameDocument = 'yes'")
            page.get_by_role("navigation", name="Main navigation").get_by_text("Sites", exact=True).click()
            page.locator(".site-card", has_text="north").wait_for()
            host.add_site("east")  # created while the dashboard is open
            page.locator(".site-card", has_text="east").wait_for(timeout=60_000)
            assert page.evaluate("window.__sameDocument") == "yes"  # it joined without a reload
            page.screenshot(path=str(SCREENSHOTS / "host-site-joined.png"), full_page=True)
            page.get_by_role("navigation", name="Main navigation").get_by_text("Jobs", exact=True).click()
            page.get_by_label("Site", exact=True).click(force=True)
            page.get_by_role("option", name="east", exact=True).wait_for()  # the new site is in the filter
            assert sorted(page.get_by_role("option").all_inner_texts()) == ["east", "north", "south"]
            page.keyboard.press("Escape")
            assert not errors, f"JavaScript errors or content security policy violations in the page: {errors}"
        finally:
            browser.close()
