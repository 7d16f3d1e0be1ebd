"""The web dashboard in a real browser: Debian's Chromium driven by Playwright, against `balsam ui` serving a
real site whose agent and launcher run the jobs. Every view is saved as a screenshot (artifacts/screenshots/).

Run: bash .ci/chromium.sh && pytest -m browser tests/test_web_dashboard.py
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from tests.web_support import AXE, CHROMIUM, SCREENSHOTS, DashSite, start_dash_site, stop_dash_site, watch_csp

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="needs Debian's chromium (bash .ci/chromium.sh)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="needs playwright (bash .ci/chromium.sh)"),
]

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashSite]:
    site = None
    try:
        site = start_dash_site(tmp_path_factory.mktemp("dash"))
        yield site
    finally:
        stop_dash_site(site)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def tab(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (no token kept) and its page; the test fails on a JavaScript error or a content
    security policy violation in it."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    violations: List[str] = []
    watch_csp(context, violations)
    pg = context.new_page()
    errors: List[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
    assert not violations, f"content security policy violations: {violations}"


def login(page: Any, dash: DashSite) -> None:
    page.goto(dash.link)
    page.wait_for_function("() => location.hash.startsWith('#/sites')")


def go(page: Any, title: str) -> None:
    """Follow the navigation drawer's link (no reload)."""
    page.get_by_role("navigation", name="Main navigation").get_by_text(title, exact=True).click()
    page.wait_for_function("t => document.querySelector('h1') && document.querySelector('h1').textContent.includes(t)", arg=title)


def shot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def create_jobs(dash: DashSite, jobs: List[dict], app_name: str = "Hello") -> List[int]:
    app = dash.api("GET", f"/apps?name={app_name}")["results"][0]
    made = dash.api("POST", "/jobs", [{"app_id": app["id"], **j} for j in jobs])
    assert isinstance(made, list), made
    return [int(j["id"]) for j in made]


def wait_workdirs(page: Any, expected: List[str]) -> None:
    """Until the jobs table shows exactly these workdirs (in any order), and the count agrees."""
    page.wait_for_function(
        """want => {
            const got = [...document.querySelectorAll('[data-testid=jobs-table] tbody tr td:nth-child(5)')].map(td => td.textContent.trim())
            const range = document.querySelector('[data-testid=page-range]').textContent.trim()
            return JSON.stringify(got.sort()) === JSON.stringify([...want].sort()) && range.endsWith(`of ${want.length}`)
        }""",
        arg=expected,
    )


def select_option(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in the Vuetify select labelled ``label``."""
    page.get_by_label(label, exact=True).click(force=True)  # Vuetify's field wrapper takes the click
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_login_link_shows_the_site_card_with_a_healthy_agent(tab: Any, dash: DashSite) -> None:
    page = tab
    login(page, dash)
    assert dash.token not in page.url  # the one-time link's token leaves the address bar at once
    card = page.locator(".site-card", has_text="dash-site")
    card.get_by_text("agent healthy").wait_for()
    assert "local" in card.inner_text()  # the preset
    page.locator("[data-testid=live-status]", has_text="live").wait_for()
    shot(page, "sites")


def test_log_out_ends_the_session_at_the_server(tab: Any, dash: DashSite) -> None:
    """The Log out button makes `balsam ui` forget the session token: a copy of it (another tab, a stolen
    sessionStorage) gets 401 at once, as a wrong token does."""
    import json
    import urllib.error
    import urllib.request

    def whoami(token: str) -> int:
        req = urllib.request.Request(f"{dash.base}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            assert json.loads(e.read())["error"]["code"] == "unauthorized"
            return int(e.code)

    page = tab
    login(page, dash)
    session = page.evaluate("sessionStorage.getItem('balsam.token')")
    assert session and whoami(session) == 200
    page.get_by_role("button", name="Log out").click()
    page.wait_for_function("() => location.hash.startsWith('#/login')")
    assert page.evaluate("sessionStorage.getItem('balsam.token')") is None
    assert whoami(session) == 401
    assert whoami(dash.token) == 200  # BALSAM_UI_TOKEN, and other sessions, go on


def test_the_printed_link_logs_in_once(tab: Any, dash: DashSite) -> None:
    page = tab
    link = dash.printed_link
    page.goto(link)
    page.wait_for_function("() => location.hash.startsWith('#/sites')")
    session = page.evaluate("sessionStorage.getItem('balsam.token')")
    assert session and session != dash.token and session not in link  # a session token of its own, not the link's
    page.locator(".site-card", has_text="dash-site").wait_for()
    page.evaluate("sessionStorage.clear()")
    page.goto("about:blank")
    page.goto(link)  # the same link again, as from the terminal's scrollback
    alert = page.locator("[data-testid=login-error]")
    alert.wait_for()
    text = alert.inner_text()
    assert "already used" in text and "balsam ui" in text and "BALSAM_UI_TOKEN" in text
    assert "dash-site" not in page.inner_text("body")
    shot(page, "login-link-used")


def test_a_wrong_token_sees_nothing(tab: Any, dash: DashSite) -> None:
    page = tab
    page.goto(f"{dash.base}/#/login?token=not-the-token")
    page.get_by_text("The server refused this token.").wait_for()
    shot(page, "login-refused")
    page.goto(f"{dash.base}/#/jobs")
    page.wait_for_function("() => location.hash.startsWith('#/login')")
    assert page.locator("[data-testid=jobs-table]").count() == 0
    assert "dash-site" not in page.inner_text("body")
    status = page.evaluate("fetch('/v1/jobs', {headers: {Authorization: 'Bearer not-the-token'}}).then(r => r.status)")
    assert status == 401


def test_create_a_job_in_the_form_and_watch_it_finish_without_reload(tab: Any, dash: DashSite) -> None:
    page = tab
    login(page, dash)
    go(page, "New job")
    select_option(page, "App", "Hello")
    page.get_by_label("who (required)").fill("browser")
    page.get_by_label("Workdir (relative to the site's data/)").fill("web/form1")
    page.get_by_label("Tags (key=value, one a line)").fill("lane=web\nrun=form1")
    shot(page, "new-job")
    page.evaluate("window.__sameDocument = 'yes'")
    page.get_by_role("button", name="Create").click()
    created = page.locator("[data-testid=created]")
    created.wait_for()
    job_id = int(created.locator("a").first.inner_text())
    go(page, "Jobs")
    page.get_by_role("textbox", name="Tags (key=value)", exact=True).fill("run=form1")
    row = page.locator("[data-testid=jobs-table] tbody tr", has_text="web/form1")
    row.locator("[data-state=JOB_FINISHED]").wait_for(timeout=TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") == "yes"  # it changed state in place: no reload
    assert row.locator("a").first.inner_text() == str(job_id)
    shot(page, "jobs")


def test_a_missing_required_parameter_is_shown_on_its_field(tab: Any, dash: DashSite) -> None:
    page = tab
    login(page, dash)
    go(page, "New job")
    select_option(page, "App", "Hello")
    page.get_by_label("Workdir (relative to the site's data/)").fill("web/bad")
    page.get_by_role("button", name="Create").click()
    field = page.locator(".v-input--error[data-testid=param-who]")
    field.wait_for()  # the API's message is on the field itself, in place of its help
    assert "needs parameter 'who'" in field.locator(".v-messages").inner_text()
    assert page.locator("[data-testid=created]").count() == 0
    page.wait_for_timeout(500)  # let the message's transition end before the picture
    shot(page, "new-job-error")


def test_a_sweep_over_a_range_and_the_rows_of_a_csv_file(tab: Any, dash: DashSite) -> None:
    page = tab
    login(page, dash)
    go(page, "New job")
    select_option(page, "App", "Hello")
    page.get_by_label("Workdir (relative to the site's data/)").fill("web/sweep")
    page.get_by_label("Tags (key=value, one a line)").fill("sweep=range")
    page.get_by_label("A parameter range").check()
    select_option(page, "Parameter", "times")
    page.get_by_label("From", exact=True).fill("2")
    page.get_by_label("To", exact=True).fill("10")
    page.get_by_label("Step", exact=True).fill("2")
    page.get_by_label("who (required)").fill("sweeper")
    page.get_by_role("button", name="Create").click()
    page.locator("[data-testid=created]", has_text="Created 5 job(s)").wait_for()
    rows = dash.api("GET", "/jobs?tags=sweep:range&ordering=id&limit=10")["results"]
    assert [(r["workdir"], r["parameters"]["times"], r["parameters"]["who"]) for r in rows] == [
        (f"web/sweep/{i}", 2 + 2 * i, "sweeper") for i in range(5)]
    shot(page, "new-job-sweep")

    page.get_by_label("Rows of a JSONL/CSV file").check()
    page.get_by_label("Tags (key=value, one a line)").fill("sweep=file")
    page.locator("input[type=file]").set_input_files(files=[{"name": "runs.csv", "mimeType": "text/csv",
                                                              "buffer": b"who,times,workdir\nann,1,web/csv/ann\n\"bob, jr\",2,web/csv/bob\n"}])
    page.get_by_text("2 job(s)").wait_for()
    page.get_by_role("button", name="Create").click()
    page.locator("[data-testid=created]", has_text="Created 2 job(s)").wait_for()
    rows = dash.api("GET", "/jobs?tags=sweep:file&ordering=id&limit=10")["results"]
    assert [(r["workdir"], r["parameters"]) for r in rows] == [("web/csv/ann", {"who": "ann", "times": 1}),
                                                                ("web/csv/bob", {"who": "bob, jr", "times": 2})]


def test_filter_by_tag_and_state_and_kill_a_selected_job(tab: Any, dash: DashSite) -> None:
    page = tab
    done = create_jobs(dash, [{"workdir": f"web/f{i}", "tags": {"grp": "x", "lane": "web"}, "parameters": {"who": "f"}} for i in range(2)])
    waiting = create_jobs(dash, [{"workdir": "web/f-wait", "tags": {"grp": "x"}, "parameters": {"who": "w"}}])
    create_jobs(dash, [{"workdir": "web/other", "tags": {"grp": "y"}, "parameters": {"who": "o"}}])
    dash.wait_jobs(done, "JOB_FINISHED")
    login(page, dash)
    go(page, "Jobs")
    rows = page.locator("[data-testid=jobs-table] tbody tr")
    page.get_by_role("textbox", name="Tags (key=value)", exact=True).fill("grp=x")
    wait_workdirs(page, ["web/f-wait", "web/f0", "web/f1"])
    select_option(page, "States", "JOB_FINISHED")
    wait_workdirs(page, ["web/f0", "web/f1"])
    page.get_by_label("Clear States").click()
    select_option(page, "States", "PREPROCESSED")
    wait_workdirs(page, ["web/f-wait"])
    shot(page, "jobs-filtered")
    rows.first.locator("input[type=checkbox]").check()
    page.get_by_role("button", name="Kill").click()
    wait_workdirs(page, [])  # killed, it leaves the PREPROCESSED view at once
    dash.wait_jobs(waiting, "USER_KILLED", timeout_s=10)


def test_live_updates_come_back_after_a_server_restart(tab: Any, dash: DashSite) -> None:
    page = tab
    login(page, dash)
    go(page, "Jobs")
    page.get_by_role("textbox", name="Tags (key=value)", exact=True).fill("run=restart")
    page.wait_for_function("() => document.querySelector('[data-testid=page-range]').textContent.trim().endsWith('of 0')")
    page.evaluate("window.__sameDocument = 'yes'")
    dash.stop_ui()
    page.locator("[data-testid=live-status]", has_text="reconnecting").wait_for()
    dash.start_ui()
    page.locator("[data-testid=live-status]", has_text="live").wait_for(timeout=TIMEOUT_MS)
    (job_id,) = create_jobs(dash, [{"workdir": "web/restart", "tags": {"lane": "web", "run": "restart"}, "parameters": {"who": "again"}}])
    row = page.locator("[data-testid=jobs-table] tbody tr", has_text="web/restart")
    row.locator("[data-state=JOB_FINISHED]").wait_for(timeout=TIMEOUT_MS)
    assert page.evaluate("window.__sameDocument") == "yes"
    assert row.locator("a").first.inner_text() == str(job_id)


def test_transfers_show_their_state_task_and_the_reason_of_a_failure(tab: Any, dash: DashSite) -> None:
    page = tab
    deck = dash.root.parent / "remote" / "deck.txt"
    good, bad = create_jobs(dash, [
        {"workdir": "web/t-good", "tags": {"lane": "web"}, "transfers": {"deck": f"store:{deck}"}},
        {"workdir": "web/t-bad", "tags": {"lane": "web"}, "transfers": {"deck": "store:/no/such/deck.txt"}}], app_name="Show")
    dash.wait_jobs([good], "JOB_FINISHED")
    login(page, dash)
    go(page, "Transfers")
    table = page.locator("table")
    good_row = table.locator("tbody tr", has=page.locator(f"a:text-is('{good}')"))
    bad_row = table.locator("tbody tr", has=page.locator(f"a:text-is('{bad}')"))
    good_row.locator("[data-state=done]").wait_for(timeout=TIMEOUT_MS)
    assert "rsync" in good_row.inner_text()  # the protocol of the location 'store'
    bad_row.locator("[data-state=error]").wait_for(timeout=TIMEOUT_MS)
    assert "No such file or directory" in bad_row.inner_text()  # rsync's own words
    shot(page, "transfers")
    select_option(page, "State", "error")
    page.wait_for_function("() => document.querySelectorAll('table tbody tr [data-state=done]').length === 0")
    assert bad_row.count() == 1
    # The protocol filter is the server's (every page, not only the one loaded): the request carries it.
    with page.expect_request(lambda r: "/v1/transfers?" in r.url and "protocol=local" in r.url):
        select_option(page, "Protocol", "local")
    page.wait_for_function("() => document.querySelectorAll('table tbody tr [data-state]').length === 0")
    with page.expect_request(lambda r: "/v1/transfers?" in r.url and "protocol=rsync" in r.url):
        page.get_by_role("combobox", name="Protocol").click(force=True)
        page.get_by_role("option", name="rsync", exact=True).click()
        page.keyboard.press("Escape")
    bad_row.locator("[data-state=error]").wait_for(timeout=TIMEOUT_MS)
    page.goto(f"{dash.base}/#/jobs/{good}")
    page.locator("[data-testid=job-out]", has_text="the deck").wait_for()


def test_the_job_page_shows_every_field_its_events_and_job_out(tab: Any, dash: DashSite) -> None:
    page = tab
    (job_id,) = create_jobs(dash, [{"workdir": "web/page", "tags": {"lane": "web"}, "parameters": {"who": "job page"}}])
    dash.wait_jobs([job_id], "JOB_FINISHED")
    login(page, dash)
    page.goto(f"{dash.base}/#/jobs/{job_id}")
    page.locator("[data-testid=job-out]", has_text="Hello, job page! 1").wait_for()
    fields = page.locator("[data-testid=job-fields]").inner_text()
    for name in ("workdir", "parameters", "num_nodes", "node_packing_count", "wall_time_min", "batch_job_id", "return_code"):
        assert name in fields
    timeline = page.locator("[data-testid=timeline]").inner_text()
    assert "RUNNING" in timeline and "JOB_FINISHED" in timeline
    shot(page, "job")


def _plotted_rows(page: Any, testid: str, rgb: List[int]) -> int:
    """How many pixel rows of the chart's canvas hold the series' colour (a flat line at 0 gives a few)."""
    return int(page.evaluate(
        """([id, rgb]) => {
            const c = document.querySelector(`[data-testid=${id}] canvas`)
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data
            const rows = new Set()
            for (let i = 0; i < d.length; i += 4) {
              if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) < 30 && Math.abs(d[i + 1] - rgb[1]) < 30 && Math.abs(d[i + 2] - rgb[2]) < 30)
                rows.add(Math.floor(i / 4 / c.width))
            }
            return rows.size
        }""",
        [testid, rgb],
    ))


def test_history_plots_render(tab: Any, dash: DashSite) -> None:
    page = tab
    ids = create_jobs(dash, [{"workdir": f"web/h{i}", "tags": {"lane": "web"}, "parameters": {"who": "h"}} for i in range(3)])
    dash.wait_jobs(ids, "JOB_FINISHED")
    login(page, dash)
    go(page, "History")
    for testid in ("chart-throughput", "chart-utilization", "chart-available"):
        page.locator(f"[data-testid={testid}] canvas").wait_for()
    assert _plotted_rows(page, "chart-throughput", [27, 127, 59]) > 10  # jobs finished: the line rises
    assert _plotted_rows(page, "chart-utilization", [26, 94, 154]) > 10  # nodes were busy
    assert _plotted_rows(page, "chart-available", [138, 90, 0]) > 10  # the BatchJob's node
    shot(page, "history")


def test_every_view_renders(tab: Any, dash: DashSite) -> None:
    page = tab
    (job_id,) = create_jobs(dash, [{"workdir": "web/views", "tags": {"lane": "web"}, "parameters": {"who": "views"}}])
    dash.wait_jobs([job_id], "JOB_FINISHED")
    login(page, dash)
    views = [("apps", "Apps"), ("batch-jobs", "BatchJobs"), (f"batch-jobs/{dash.batch_job_id}", f"BatchJob {dash.batch_job_id}")]
    for route, title in views:
        page.goto(f"{dash.base}/#/{route}")
        page.wait_for_function("t => document.querySelector('h1')?.textContent.includes(t)", arg=title)
        if route == "apps":
            page.get_by_text("Hello", exact=True).click()
            page.get_by_text("who to greet").wait_for()
            page.locator("td a", has_text=str(job_id)).wait_for()
            page.wait_for_timeout(600)  # the panel's opening transition
        if route.startswith("batch-jobs/"):
            page.locator("canvas").first.wait_for()
            page.locator("td a", has_text=str(job_id)).first.wait_for()
        if route == "batch-jobs":
            page.locator("td a", has_text=str(dash.batch_job_id)).wait_for()
        shot(page, route.replace("/", "-"))
    page.goto(f"{dash.base}/#/login")
    shot(page, "login")


def test_a_dag_instance_is_drawn_coloured_by_state(tab: Any, dash: DashSite) -> None:
    page = tab
    instance = dash.make_dag()
    login(page, dash)
    go(page, "DAGs")
    graph = page.locator("[data-testid=dag]")
    graph.get_by_text(f"instance {instance}").wait_for()
    nodes = graph.locator(".dag-node")
    assert nodes.count() == 4 and graph.locator("line").count() == 4  # prep->left, prep->right, left->join, right->join
    # left runs (it has the lane tag) while right waits, so join waits for its parents: live, without reload.
    graph.locator(".dag-node[data-state=JOB_FINISHED]", has_text="left").wait_for(timeout=TIMEOUT_MS)
    assert graph.locator(".dag-node", has_text="right").get_attribute("data-state") == "PREPROCESSED"
    assert graph.locator(".dag-node", has_text="join").get_attribute("data-state") == "AWAITING_PARENTS"
    shot(page, "dags")
    graph.locator(".dag-node", has_text="join").click()
    page.wait_for_function("() => location.hash.startsWith('#/jobs/')")


def _axe(page: Any) -> List[dict]:
    page.evaluate(AXE.read_text())  # as the test harness (a <script> tag of it would be refused by the page's policy)
    result = page.evaluate("axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})")
    return [{"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]} for v in result["violations"]]


@pytest.mark.skipif(not AXE.is_file(), reason="needs axe-core from web/node_modules (cd web && npm ci)")
def test_keyboard_navigation_and_axe_checks(tab: Any, dash: DashSite) -> None:
    page = tab
    page.goto(f"{dash.base}/#/login")
    page.get_by_label("Token").wait_for()
    assert _axe(page) == []
    page.keyboard.type(dash.token)  # the token field has the focus
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash.startsWith('#/sites')")
    # Tab reaches the drawer's Jobs link, and Enter follows it.
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Jobs":
            break
    else:
        pytest.fail("Tab never reached the Jobs link")
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash.startsWith('#/jobs')")
    page.locator("[data-testid=jobs-table] tbody tr").first.wait_for()
    dash.make_dag("axe")
    for route in ("sites", "jobs", "jobs/new", "apps", "batch-jobs", "transfers", "history", "dags?dag=axe"):
        page.goto(f"{dash.base}/#/{route}")
        page.wait_for_timeout(800)
        if route.startswith("dags"):
            page.locator("[data-testid=dag] .dag-node").first.wait_for()
        assert _axe(page) == [], route
