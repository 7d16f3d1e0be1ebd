"""The dashboard served by the relay, in Chromium: a user logs in with a password, sees only their sites and jobs,
and logging out revokes the token. (The site side is a pushed mirror, as a linked agent sends it.)"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.test_relay_server import _finish, client, login, site_rows
from tests.web_support import CHROMIUM, SCREENSHOTS, watch_csp

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium (bash .ci/chromium.sh)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (bash .ci/chromium.sh)"),
]


AGENT_TOKENS: Dict[str, str] = {}
"""The token of alice's site agent, by relay URL (to push changes while the dashboard is open)."""


@pytest.fixture
def relay_url(tmp_path: Path) -> Iterator[str]:
    """A relay on SQLite where alice's site 'alice-site' (3 jobs) is linked and pushed, and bob has none."""
    pytest.importorskip("sqlalchemy")
    from tests.relay_support import relay_store, served

    for store in relay_store("sqlite", tmp_path):
        store.add_user("alice", "alice-password")
        store.add_user("bob", "bob-password")
        with served(store, wait_s=0.5) as (server, url):
            alice = login(url, "alice", "alice-password")
            link = alice.request("POST", "/v1/sites", {"site_id": 7, "name": "alice-site", "hostname": "login1", "path": "/p"})
            AGENT_TOKENS[url] = link["token"]
            client(url, link["token"]).request("POST", "/v1/sync/push", {
                "submission_id": "web-first", "last_seq": 10, "items": site_rows(7, 3),
                "site": {"backlog": {"RUNNING": 2, "JOB_FINISHED": 1}, "row": {"name": "alice-site"}}})
            yield url


def _status(url: str, token: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _password_login(page: Any, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/")
    page.get_by_role("tab", name="User and password").click()
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def test_password_login_at_the_relay_shows_only_your_sites_and_logout_revokes(relay_url: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            violations: List[str] = []
            watch_csp(context, violations)
            page = context.new_page()
            _password_login(page, relay_url, "alice", "not-her-password")
            page.get_by_text("Wrong user name or password.").wait_for()
            _password_login(page, relay_url, "alice", "alice-password")
            page.wait_for_function("() => location.hash.startsWith('#/sites')")
            page.locator(".site-card", has_text="alice-site").wait_for()
            token = page.evaluate("sessionStorage.getItem('balsam.token')")
            assert _status(f"{relay_url}/v1/whoami", token) == 200
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "relay-sites.png"), full_page=True)
            page.goto(f"{relay_url}/#/jobs")
            page.wait_for_function("() => document.querySelectorAll('[data-testid=jobs-table] tbody tr a').length === 3")
            assert sorted(page.locator("[data-testid=jobs-table] tbody tr td:nth-child(5)").all_inner_texts()) == ["w/1", "w/2", "w/3"]
            # The site's agent pushes job w/1 finishing: the open page shows it live (the relay's WebSocket), no reload.
            row_w1 = "[...document.querySelectorAll('[data-testid=jobs-table] tbody tr')].find(r => r.innerText.includes('w/1'))"
            assert "JOB_FINISHED" not in page.evaluate(f"({row_w1} || {{}}).innerText || ''")
            origin = page.evaluate("performance.timeOrigin")
            _finish(client(relay_url, AGENT_TOKENS[relay_url]), 7, 1, "web-live-1")
            page.wait_for_function(f"() => (({row_w1}) || {{innerText: ''}}).innerText.includes('JOB_FINISHED')", timeout=60_000)
            assert page.evaluate("performance.timeOrigin") == origin  # the same page: not reloaded
            page.get_by_role("button", name="Log out").click()
            page.wait_for_function("() => location.hash.startsWith('#/login')")
            assert _status(f"{relay_url}/v1/whoami", token) == 401  # revoked at the relay, not just forgotten

            bobs = browser.new_context()
            watch_csp(bobs, violations)
            other = bobs.new_page()
            _password_login(other, relay_url, "bob", "bob-password")
            other.wait_for_function("() => location.hash.startsWith('#/sites')")
            other.get_by_text("No sites yet").wait_for()
            bob_token = other.evaluate("sessionStorage.getItem('balsam.token')")
            with urllib.request.urlopen(urllib.request.Request(f"{relay_url}/v1/jobs", headers={"Authorization": f"Bearer {bob_token}"})) as r:
                assert json.loads(r.read())["results"] == []
            assert not violations, f"content security policy violations: {violations}"
        finally:
            browser.close()
