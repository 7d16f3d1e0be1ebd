"""Dashboard benchmark: the jobs view on a 1,000,000-job site, served by the site agent's API server and by
the relay (the same rows mirrored, as the site's sync pushes them).

Measured in one run:
- time to first render of the jobs view in headless Chromium (Debian's, via Playwright): a full page load of
  ``/#/jobs`` (HTML, scripts, login check, first page and count) and an in-app switch from Sites to Jobs, until the
  first row is drawn; by the agent and by the relay;
- p50/p99 of the requests the view makes (first page, next pages, a filter by state, by tag, by workdir substring,
  a sort by last update, and the count that goes with a filter), over HTTP, each beside the same query run
  in-process on the store (the baseline: what the HTTP layer adds); by the agent and by the relay;
- the dashboard indexes (schema 8: jobs by last update, workdir trigrams): the sort and the substring filter
  with them and with them dropped, and what they cost writers (inserting jobs, changing states) on a fresh site.

    python bench/bench_dashboard.py [--jobs 1000000] [--repeat 50] [--relay-url postgresql+psycopg://...]
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


def index_workdirs(site: Any) -> float:
    """Seconds to fill the workdir index (what the agent's server does in the background, in steps)."""
    from balsam.db.backend import LocalBackend

    t = time.perf_counter()
    backend = LocalBackend(site.store)
    while backend.index_step():
        pass
    return time.perf_counter() - t


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


Case = Tuple[str, str, Callable[[], Any]]


def cases(backend: Any, base: str, token: str) -> List[Case]:
    """(name, HTTP path, the same query in-process on ``backend``) for each request the jobs view makes."""
    from balsam.http.schemas import COLUMNS

    cols = COLUMNS["job"]
    first = http_get(base, token, "/v1/jobs?ordering=-id&limit=50")
    cursor = first["next_cursor"]
    return [
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


INDEXED = ("filter workdir contains 'w/99999'", "sort by -last_update")
"""The cases the dashboard indexes serve."""


def requests_p99(todo: List[Case], base: str, token: str, repeat: int, budget_s: float = 30.0) -> List[Tuple[str, float, float, float]]:
    """(name, p50 ms, p99 ms, in-process p50 ms) for each case (at least 3 samples; no new one after ``budget_s``)."""
    out = []
    for name, path, local in todo:
        http_ms, local_ms = [], []
        deadline = time.monotonic() + budget_s
        for n in range(repeat):
            if n >= 3 and time.monotonic() > deadline:
                break  # a slow case: fewer samples (its p99 is then the largest of them)
            t = time.perf_counter()
            http_get(base, token, path)
            http_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            local()
            local_ms.append((time.perf_counter() - t) * 1000)
        out.append((name, statistics.median(http_ms), pct(http_ms, 99), statistics.median(local_ms)))
    return out


def relay_of(site: Any, url: str) -> Tuple[Any, Any, str, str, Any]:
    """A relay at ``url`` holding the site's rows (pushed as its sync pushes them, 50,000 a batch), served:
    (store, server, base URL, a user's token, the user's backend for in-process baselines)."""
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.relay.backend import RelayBackend
    from balsam.relay.server import build_relay_app
    from balsam.relay.store import RelayStore

    store = RelayStore(url)
    if not url.startswith("sqlite"):
        import sqlalchemy as sa

        with store.begin() as c:
            c.execute(sa.text("DROP SCHEMA public CASCADE"))
            c.execute(sa.text("CREATE SCHEMA public"))
    store.migrate()
    store.add_user("bench", "bench-password")
    token, caller = store.login("bench", "bench-password")
    agent = store.verify(store.link_site(caller, int(site.id), "big", "h", str(site.path)))
    conn = site.store.conn
    seq = 0
    for table in ("app", "job"):
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[2].upper() != "BLOB"]
        cur = conn.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY id")
        while True:
            rows = cur.fetchmany(50_000)
            if not rows:
                break
            seq += 1
            items = [{"entity": table, "op": "upsert", "id": r[0], "row": dict(zip(names, r))} for r in rows]
            store.ingest(agent, f"bench-push-{seq:06d}", seq, items, {"row": {"name": "big"}, "backlog": {}})
    server = ApiServer(build_relay_app(store), ServeOptions(bind="127.0.0.1", port=0)).start()
    return store, server, f"http://127.0.0.1:{server.port}", token, RelayBackend(store, caller)


def drop_indexes(store: Any) -> None:
    """The site as it was before schema 8's dashboard indexes (the sort sorts, the substring filter scans)."""
    from balsam.db import search

    with store.write() as conn:
        conn.execute("DROP INDEX IF EXISTS job_last_update")
        conn.execute(f"DROP TRIGGER IF EXISTS {search.TRIGGER}")


def drop_relay_indexes(store: Any) -> List[str]:
    """The relay as it was before revision 0004's dashboard indexes; the names of those dropped."""
    import sqlalchemy as sa

    names = ["relay_job_site_last_update", "relay_job_workdir", "relay_job_workdir_trgm"]
    with store.begin() as c:
        present = {str(i["name"]) for i in sa.inspect(c).get_indexes("relay_job")}
        for name in names:
            if name in present:
                c.execute(sa.text(f"DROP INDEX {name}"))
    return [n for n in names if n in present]


def add_indexes(store: Any) -> None:
    from balsam.db import search

    with store.write() as conn:
        conn.execute("CREATE INDEX IF NOT EXISTS job_last_update ON job(last_update)")
        conn.execute(search.TRIGGER_SQL)


def write_cost(tmp: Path, n: int) -> Dict[str, Tuple[float, float]]:
    """Seconds to insert ``n`` jobs and to change all their states, (with the dashboard indexes, without): the
    best of two runs each, alternated; and the background indexing of those jobs' workdirs (with)."""
    from balsam._api import sites
    from balsam.api import ApplicationDefinition
    from balsam.db import jobs as job_db
    from balsam.db.backend import LocalBackend
    from balsam.db.jobs import StateChange
    from balsam.site import init_site

    out: Dict[str, Dict[bool, float]] = {"insert": {}, "state change": {}, "indexing": {False: 0.0}}

    def keep(what: str, with_indexes: bool, seconds: float) -> None:
        out[what][with_indexes] = min(seconds, out[what].get(with_indexes, seconds))

    for run, with_indexes in enumerate((False, True, False, True)):
        name = f"writes{run}"
        init_site(tmp / name, name=name)
        site = sites.resolve(name)
        ns: Dict[str, Any] = {"ApplicationDefinition": ApplicationDefinition}
        exec(f"class Hello(ApplicationDefinition):\n    site = '{name}'\n    command_template = 'echo {{{{ x }}}}'\n", ns)
        ns["Hello"].sync()
        if not with_indexes:
            drop_indexes(site.store)
        rows = [job_db.new_job_row(f"runs/r{i // 1000}/w{i}", ns["Hello"].__app_id__, tags={"run": str(i % 1000)}, parameters={"x": "1"})
                for i in range(n)]
        t = time.perf_counter()
        with site.store.write() as conn:
            job_db.insert_jobs(conn, rows)
        keep("insert", with_indexes, time.perf_counter() - t)
        if with_indexes:
            t = time.perf_counter()
            while LocalBackend(site.store).index_step():
                pass
            keep("indexing", True, time.perf_counter() - t)
        ids = [r[0] for r in site.store.conn.execute("SELECT id FROM job")]
        t = time.perf_counter()
        with site.store.write() as conn:
            job_db.apply_state_changes(conn, [StateChange(i, "USER_KILLED") for i in ids], strict=True)
        keep("state change", with_indexes, time.perf_counter() - t)
    return {k: (v[True], v[False]) for k, v in out.items()}


def print_cases(title: str, rows: List[Tuple[str, float, float, float]]) -> None:
    print(f"\n{title}")
    print(f"{'request':40} {'p50 ms':>8} {'p99 ms':>8} {'in-process p50':>15} {'ratio':>6}")
    for name, p50, p99, local in rows:
        print(f"{name:40} {p50:8.1f} {p99:8.1f} {local:15.1f} {p50 / max(local, 1e-3):6.1f}")


FIRST_ROW = "() => document.querySelectorAll('[data-testid=jobs-table] tbody tr a').length > 0"


def first_render(base: str, token: str, repeat: int) -> Dict[str, List[float]]:
    """Milliseconds to the first drawn row of the jobs view: full load of /#/jobs, and Sites -> Jobs in the app."""
    from playwright.sync_api import sync_playwright

    out: Dict[str, List[float]] = {"load": [], "switch": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/#/login?token={token}")
        page.wait_for_function("() => location.hash.startsWith('#/sites')")
        for _ in range(repeat):
            page.goto(f"{base}/#/jobs")
            page.reload()  # a cold start of the app (the browser cache holds the hashed assets, as it would)
            page.wait_for_function(FIRST_ROW, timeout=120_000)
            out["load"].append(page.evaluate("performance.now()"))
            page.evaluate("location.hash = '#/sites'")
            page.wait_for_function("() => document.querySelector('h1')?.textContent === 'Sites'")
            t0 = page.evaluate("performance.now()")
            page.get_by_role("navigation", name="Main navigation").get_by_text("Jobs", exact=True).click()
            page.wait_for_function(FIRST_ROW, timeout=120_000)
            out["switch"].append(page.evaluate("performance.now()") - t0)
        browser.close()
    return out


def render(label: str, base: str, token: str, renders: int) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        print(f"{label}: jobs view render skipped (no /usr/bin/chromium: bash .ci/chromium.sh)")
        return
    r = first_render(base, token, renders)
    print(f"{label}: jobs view, first row drawn: full load {statistics.median(r['load']):.0f} ms (max {max(r['load']):.0f}); "
          f"Sites -> Jobs {statistics.median(r['switch']):.0f} ms (max {max(r['switch']):.0f}); median of {renders}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50, help="requests per case (p99 needs many)")
    parser.add_argument("--renders", type=int, default=5)
    parser.add_argument("--relay-url", default="", help="the relay's database (default: SQLite in a scratch directory)")
    parser.add_argument("--writes", type=int, default=100_000, help="jobs in the write-cost comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        site = fill_site(Path(d), args.jobs)
        print(f"{args.jobs:,}-job site filled in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        print(f"workdir index filled in {index_workdirs(site):.1f} s (in the background, by the agent's server)", flush=True)
        from balsam.db import search
        from balsam.db.backend import LocalBackend

        server, base, token = serve(site)
        try:
            print(f"workdir trigram index: {'in use' if search.contains_clause(site.store.conn, 'w/99999') else 'not used'}")
            todo = cases(LocalBackend(site.store), base, token)
            with_idx = requests_p99(todo, base, token, args.repeat)
            print_cases("served by the site agent", with_idx)
            drop_indexes(site.store)
            without = requests_p99([c for c in todo if c[0] in INDEXED], base, token, max(3, args.repeat // 10))
            add_indexes(site.store)
            print_cases("the same, without the dashboard indexes (schema 7)", without)
            for (name, p50, _, local), (_, p50_0, _, local_0) in zip([r for r in with_idx if r[0] in INDEXED], without):
                print(f"  {name}: {p50_0 / max(p50, 1e-3):.0f}x faster over HTTP with the index ({p50_0:.0f} -> {p50:.1f} ms), "
                      f"{local_0 / max(local, 1e-3):.0f}x in-process")
            render("agent", base, token, args.renders)
        finally:
            server.stop()
        t0 = time.perf_counter()
        relay_url = args.relay_url or f"sqlite:///{Path(d) / 'relay.db'}"
        store, rserver, rbase, rtoken, rbackend = relay_of(site, relay_url)
        print(f"\nrelay ({relay_url.split(':', 1)[0]}) filled with the site's rows in {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            rtodo = cases(rbackend, rbase, rtoken)
            r_with = requests_p99(rtodo, rbase, rtoken, args.repeat)
            print_cases("served by the relay", r_with)
            dropped = drop_relay_indexes(store)
            r_without = requests_p99([c for c in rtodo if c[0] in INDEXED], rbase, rtoken, max(3, args.repeat // 10))
            print_cases(f"the same, without the relay's dashboard indexes (revision 0003; dropped {', '.join(dropped)})", r_without)
            for (name, p50, _, local), (_, p50_0, _, local_0) in zip([r for r in r_with if r[0] in INDEXED], r_without):
                print(f"  {name}: {p50_0 / max(p50, 1e-3):.0f}x faster over HTTP with the index ({p50_0:.0f} -> {p50:.1f} ms), "
                      f"{local_0 / max(local, 1e-3):.0f}x in-process")
            render("relay", rbase, rtoken, args.renders)
        finally:
            rserver.stop()
            store.close()
        cost = write_cost(Path(d), args.writes)
        print(f"\nwhat the dashboard indexes cost writers ({args.writes:,} jobs, one transaction each, best of 2):")
        for what in ("insert", "state change"):
            with_s, without_s = cost[what]
            print(f"  {what:13} {with_s:6.2f} s with, {without_s:6.2f} s without: {with_s / max(without_s, 1e-9):.2f}x")
        print(f"  and the workdir index filled behind them in {cost['indexing'][0]:.2f} s (the agent's server, in steps)")
        print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
