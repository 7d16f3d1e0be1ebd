"""Dashboard benchmark: the jobs view on a 1,000,000-job site, served by the site agent's API server.

Measured in one run, on one site:
- time to first render of the jobs view in headless Chromium (Debian's, via Playwright): a full page load of
  ``/#/jobs`` (HTML, scripts, login check, first page and count) and an in-app switch from Sites to Jobs, until the
  first row is drawn;
- p50/p99 of the requests the view makes (first page, next pages, a filter by state, by tag, by workdir substring,
  a sort by last update, and the count that goes with a filter), over HTTP, each beside the same query run
  in-process on the store (the baseline: what the HTTP layer adds).

    python bench/bench_dashboard.py [--jobs 1000000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHROMIUM = "/usr/bin/chromium"


def fill_site(tmp: Path, n: int) -> Any:
    """A site with n jobs: a third JOB_FINISHED, 0.1% RUNNING, the rest PREPROCESSED; tags experiment and run."""
    os.environ["BALSAM_HOME"] = str(tmp / "home")
    from balsam._api import sites
    from balsam.api import ApplicationDefinition
    from balsam.db import jobs as job_db
    from balsam.site import init_site

    sites.reset()
    init_site(tmp / "big", name="big")
    site = sites.resolve("big")
    ns: Dict[str, Any] = {"ApplicationDefinition": ApplicationDefinition}
    exec("class Hello(ApplicationDefinition):\n    site = 'big'\n    command_template = 'echo {{ x }}'\n", ns)
    ns["Hello"].sync()
    app_id = ns["Hello"].__app_id__
    for start in range(0, n, 100_000):
        rows = [job_db.new_job_row(f"w/{i}", app_id, tags={"experiment": "xyz" if i % 10 == 0 else "abc", "run": str(i % 1000)},
                                   parameters={"x": "1"}) for i in range(start, min(n, start + 100_000))]
        with site.store.write() as conn:
            job_db.insert_jobs(conn, rows)
    with site.store.write() as conn:
        conn.execute("UPDATE job SET state = CASE WHEN id % 1000 = 1 THEN 'RUNNING' WHEN id % 3 = 0 THEN 'JOB_FINISHED' "
                     "ELSE 'PREPROCESSED' END")
    site.store.conn.execute("ANALYZE")
    return site


def serve(site: Any) -> Tuple[Any, str, str]:
    """The agent's API server for the site, with a browser token: (server, base URL, token)."""
    import getpass

    from balsam.http.auth import Principal, TokenSet
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    tokens = TokenSet()
    token = tokens.issue(Principal(kind="ui", name=getpass.getuser()))
    server = start_api_server(Path(site.path), site.store, ApiSettings(bind="127.0.0.1"), host=site.host, tokens=tokens)
    return server, f"http://127.0.0.1:{server.port}", token


def pct(samples: List[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def http_get(base: str, token: str, path: str) -> Any:
    import json

    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def requests_p99(site: Any, base: str, token: str, repeat: int) -> List[Tuple[str, float, float, float]]:
    """(name, p50 ms, p99 ms, in-process p50 ms) for each request the jobs view makes."""
    from balsam.db import query as q
    from balsam.db.backend import LocalBackend
    from balsam.http.schemas import COLUMNS

    backend = LocalBackend(site.store)
    cols = COLUMNS["job"]
    first = http_get(base, token, "/v1/jobs?ordering=-id&limit=50")
    cursor = first["next_cursor"]
    cases: List[Tuple[str, str, Callable[[], Any]]] = [
        ("first page (50, -id)", "/v1/jobs?ordering=-id&limit=50",
         lambda: backend.select("job", {}, columns=cols, order_by=["-id"], limit=51)),
        ("next page", f"/v1/jobs?ordering=-id&limit=50&cursor={cursor}",
         lambda: backend.select("job", {}, columns=cols, order_by=["-id"], limit=51, offset=50)),
        ("filter state=RUNNING", "/v1/jobs?ordering=-id&limit=50&state=RUNNING",
         lambda: backend.select("job", {"state": ["RUNNING"]}, columns=cols, order_by=["-id"], limit=51)),
        ("filter tag experiment=xyz + state", "/v1/jobs?ordering=-id&limit=50&tags=experiment:xyz&state=PREPROCESSED",
         lambda: backend.select("job", {"tags": {"experiment": "xyz"}, "state": ["PREPROCESSED"]}, columns=cols, order_by=["-id"], limit=51)),
        ("filter workdir contains 'w/99999'", "/v1/jobs?ordering=-id&limit=50&workdir__contains=w/99999",
         lambda: backend.select("job", {"workdir__contains": "w/99999"}, columns=cols, order_by=["-id"], limit=51)),
        ("sort by -last_update", "/v1/jobs?ordering=-last_update&limit=50",
         lambda: backend.select("job", {}, columns=cols, order_by=["-last_update"], limit=51)),
        ("count, no filter", "/v1/jobs/count", lambda: backend.count("job", {})),
        ("count tag + state", "/v1/jobs/count?tags=experiment:xyz&state=PREPROCESSED",
         lambda: backend.count("job", {"tags": {"experiment": "xyz"}, "state": ["PREPROCESSED"]})),
    ]
    del q
    out = []
    for name, path, local in cases:
        http_ms, local_ms = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            http_get(base, token, path)
            http_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            local()
            local_ms.append((time.perf_counter() - t) * 1000)
        out.append((name, statistics.median(http_ms), pct(http_ms, 99), statistics.median(local_ms)))
    return out


FIRST_ROW = "() => document.querySelectorAll('[data-testid=jobs-table] tbody tr a').length > 0"


def first_render(base: str, token: str, repeat: int) -> Dict[str, List[float]]:
    """Milliseconds to the first drawn row of the jobs view: full load of /#/jobs, and Sites -> Jobs in the app."""
    from playwright.sync_api import sync_playwright

    out: Dict[str, List[float]] = {"load": [], "switch": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/#/login?token={token}")
        page.wait_for_function("location.hash.startsWith('#/sites')")
        for _ in range(repeat):
            page.goto(f"{base}/#/jobs")
            page.reload()  # a cold start of the app (the browser cache holds the hashed assets, as it would)
            page.wait_for_function(FIRST_ROW, timeout=120_000)
            out["load"].append(page.evaluate("performance.now()"))
            page.evaluate("location.hash = '#/sites'")
            page.wait_for_function("document.querySelector('h1')?.textContent === 'Sites'")
            t0 = page.evaluate("performance.now()")
            page.get_by_role("navigation", name="Main navigation").get_by_text("Jobs", exact=True).click()
            page.wait_for_function(FIRST_ROW, timeout=120_000)
            out["switch"].append(page.evaluate("performance.now()") - t0)
        browser.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50, help="requests per case (p99 needs many)")
    parser.add_argument("--renders", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        site = fill_site(Path(d), args.jobs)
        print(f"{args.jobs:,}-job site filled in {time.perf_counter() - t0:.1f} s", flush=True)
        server, base, token = serve(site)
        try:
            print(f"{'request':40} {'p50 ms':>8} {'p99 ms':>8} {'in-process p50':>15} {'ratio':>6}")
            for name, p50, p99, local in requests_p99(site, base, token, args.repeat):
                print(f"{name:40} {p50:8.1f} {p99:8.1f} {local:15.1f} {p50 / max(local, 1e-3):6.1f}")
            if os.access(CHROMIUM, os.X_OK):
                r = first_render(base, token, args.renders)
                print(f"jobs view, first row drawn: full load {statistics.median(r['load']):.0f} ms (max {max(r['load']):.0f}); "
                      f"Sites -> Jobs {statistics.median(r['switch']):.0f} ms (max {max(r['switch']):.0f}); median of {args.renders}")
            else:
                print("jobs view render: skipped (no /usr/bin/chromium: bash .ci/chromium.sh)")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
