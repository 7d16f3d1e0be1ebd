"""The dashboard against hostile job data, in Chromium, and its HTTP doors against another origin: `<script>`,
`"><img onerror>`, right-to-left and zero-width characters and 5,000-character values in tags, parameters,
workdirs, event messages and job.out are shown as text, nothing of them runs, and the page keeps its layout; a
page on another origin can neither read the API (no CORS grant) nor change anything (bearer tokens only, never a
cookie); the answers forbid framing and sniffing; and no static path reaches a file outside the dashboard.

Run: bash .ci/chromium.sh && pytest -m browser tests/test_web_hostile.py
"""

from __future__ import annotations

import http.client
import importlib.util
import os
from typing import Any, Dict, Iterator, List, Tuple
from urllib.parse import urlsplit

import pytest

from tests.test_web_host import Host
from tests.web_support import CHROMIUM, SCREENSHOTS, watch_csp

XSS = [
    "<script>window.__xss = 'script'</script>",
    '"><img src=x onerror="window.__xss=\'img\'">',
    "<svg onload=\"window.__xss='svg'\"></svg>",
    "javascript:window.__xss='href'",
    "{{ constructor.constructor('window.__xss=\"template\"')() }}",
]
ODD = "\u202eevil\u202c \u200b\u200d\u2066rtl\u2069"
LONG = "L" * 5000


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Host, List[int]]]:
    """A site whose jobs carry hostile text everywhere the dashboard shows job data, and `balsam ui` serving it."""
    h = Host(tmp_path_factory.mktemp("hostile"))
    try:
        h.add_site("north")
        h.start_ui()
        app_id = h.api("GET", "/apps")["results"][0]["id"]
        jobs: List[Dict[str, Any]] = [{"app_id": app_id, "workdir": f"x{i}/{text[:60]}", "parameters": {"who": text + ODD},
                                       "tags": {"note": text[:200], "odd": ODD}} for i, text in enumerate(XSS)]
        jobs.append({"app_id": app_id, "workdir": "long", "parameters": {"who": LONG}, "tags": {"long": "T" * 1000}})
        ids = [int(j["id"]) for j in h.api("POST", "/jobs", jobs)]
        h.api("PUT", f"/jobs?id={ids[1]}", {"state": "USER_KILLED", "state_data": {"message": XSS[1] + XSS[0]}})
        root = h.tmp / "north" / "data"
        for i, text in enumerate(XSS):
            (root / jobs[i]["workdir"] / "job.out").parent.mkdir(parents=True, exist_ok=True)
            (root / jobs[i]["workdir"] / "job.out").write_text(f"Error: {text}\n{ODD}\n")
        yield h, ids
    finally:
        h.stop()


def in_chromium(test: Any) -> Any:
    """The marks of a test that drives Chromium."""
    for mark in (pytest.mark.browser,
                 pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium (bash .ci/chromium.sh)"),
                 pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (bash .ci/chromium.sh)")):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def page(hostile: Tuple[Host, List[int]]) -> Iterator[Tuple[Any, List[str]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        tab = context.new_page()
        seen: List[str] = []
        watch_csp(context, seen)  # a violation means something in the job data tried to run or load
        tab.on("dialog", lambda d: (seen.append(f"dialog: {d.message}"), d.dismiss()))
        tab.on("pageerror", lambda e: seen.append(f"page error: {e}"))
        tab.on("request", lambda r: seen.append(f"request to {r.url}") if not r.url.startswith(hostile[0].base) else None)
        tab.goto(f"{hostile[0].link}")
        tab.wait_for_function("() => location.hash.startsWith('#/sites')")
        yield tab, seen
        browser.close()


def _nothing_ran(tab: Any, seen: List[str]) -> None:
    assert tab.evaluate("window.__xss") is None
    assert tab.evaluate("document.querySelectorAll('img[onerror], svg[onload], script:not([src])').length") == 0
    assert not seen, seen  # no dialog, no page error, no request to another address (an <img src=x> would fetch)


@in_chromium
def test_the_jobs_table_shows_hostile_values_as_text(page: Tuple[Any, List[str]], hostile: Tuple[Host, List[int]]) -> None:
    tab, seen = page
    tab.goto(hostile[0].base + "/#/jobs")
    tab.wait_for_function("() => document.querySelectorAll('[data-testid=jobs-table] tbody tr').length >= 6")
    text = tab.inner_text("[data-testid=jobs-table]")
    for payload in XSS:
        assert payload[:60].split("/")[0] in text or payload[:30] in text  # the workdirs, as text
    _nothing_ran(tab, seen)
    # The 5,000-character value does not push the page sideways: the window does not scroll horizontally.
    assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / "hostile-jobs.png"), full_page=True)


@in_chromium
@pytest.mark.parametrize("index", range(len(XSS)))
def test_the_job_page_shows_fields_events_and_job_out_as_text(page: Tuple[Any, List[str]], hostile: Tuple[Host, List[int]],
                                                              index: int) -> None:
    tab, seen = page
    job_id = hostile[1][index]
    tab.goto(f"{hostile[0].base}/#/jobs/{job_id}")
    tab.wait_for_function("t => { const e = document.querySelector('[data-testid=job-out]'); return e && e.textContent.includes(t) }",
                          arg=XSS[index])  # the job.out of this job, shown as text
    assert XSS[index] in tab.inner_text("[data-testid=job-out]")
    assert XSS[index][:200] in tab.inner_text("[data-testid=job-fields]")
    if index == 1:
        tab.wait_for_function("t => document.querySelector('[data-testid=timeline]').textContent.includes(t)", arg="onerror")
    _nothing_ran(tab, seen)
    assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def _raw(base: str, method: str, path: str, headers: Dict[str, str], body: bytes = b"") -> Tuple[int, Dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_another_origin_can_neither_read_nor_change_anything(hostile: Tuple[Host, List[int]]) -> None:
    h, ids = hostile
    evil = {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
    token = h.env["BALSAM_UI_TOKEN"]
    # A form or fetch from another page, without the tab's bearer token (browsers send no Authorization header
    # across origins, and the dashboard keeps its token in sessionStorage, never a cookie): refused, nothing changed.
    for method, path, body in (("DELETE", f"/v1/jobs/{ids[0]}", b""), ("PUT", f"/v1/jobs?id={ids[0]}", b"state=USER_KILLED"),
                               ("POST", "/v1/jobs", b'[{"app_id": 1, "workdir": "csrf"}]'), ("GET", "/v1/jobs", b"")):
        status, headers, _ = _raw(h.base, method, path, evil, body)
        assert status == 401, (method, path, status)
        assert "access-control-allow-origin" not in headers and "set-cookie" not in headers
    # Even with a token, an answer grants no other origin the right to read it, and a preflight is not approved.
    status, headers, _ = _raw(h.base, "GET", "/v1/jobs", {**evil, "Authorization": f"Bearer {token}"})
    assert status == 200 and "access-control-allow-origin" not in headers and "access-control-allow-credentials" not in headers
    status, headers, _ = _raw(h.base, "OPTIONS", "/v1/jobs", {**evil, "Access-Control-Request-Method": "DELETE",
                                                               "Access-Control-Request-Headers": "authorization"})
    assert status >= 400 and "access-control-allow-origin" not in headers and "access-control-allow-methods" not in headers
    assert h.api("GET", f"/jobs/{ids[0]}")["state"] != "USER_KILLED"
    assert h.api("GET", "/jobs?workdir=csrf")["results"] == []


def test_the_page_cannot_be_framed_or_sniffed(hostile: Tuple[Host, List[int]]) -> None:
    h, _ = hostile
    status, headers, body = _raw(h.base, "GET", "/", {})
    assert status == 200 and b"<div id=\"app\"" in body
    assert headers.get("x-frame-options") == "DENY"
    assert "frame-ancestors 'none'" in headers.get("content-security-policy", "")
    assert "object-src 'none'" in headers.get("content-security-policy", "")
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") == "no-referrer"  # the login link's token never leaves in a Referer


@pytest.mark.parametrize("path", ["/assets/../../../../etc/passwd", "/assets/%2e%2e/%2e%2e/settings.py", "/assets/..%2f__init__.py",
                                  "/assets/%2e%2e%2f%2e%2e%2fhttp%2fauth.py", "/assets/.%2e/__init__.py", "/assets/%00",
                                  "/assets//etc/passwd", "/assets/\\..\\__init__.py", "/assets/index.html%00.js",
                                  "/assets/../index.html", "/..%2f..%2f..%2fetc%2fpasswd"])
def test_no_static_path_reaches_a_file_outside_the_dashboard(hostile: Tuple[Host, List[int]], path: str) -> None:
    h, _ = hostile
    status, _, body = _raw(h.base, "GET", path, {})
    assert status == 404, (path, status, body[:200])
    assert b"root:" not in body and b"import" not in body and b"secret" not in body.lower()

