"""Paged listings over the /v1 API use keyset cursors: a page resumes after the last row given, so a page deep in
a 100,000-job listing is the right one (and costs SQLite what the first page costs), rows added or removed
before the cursor never shift it, a cursor is checked against its query, and the Python API's iteration walks
big results with them."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from tests.conftest import FOREIGN_HOST

N = 100_000


@pytest.fixture(scope="module")
def big_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Any, List[int]]]:
    """A site of 100,000 jobs (a third of them finished), served by its agent's API: (site ref, ids in order)."""
    import os

    from balsam._api import sites as _sites
    from balsam.api import ApplicationDefinition, Job
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings
    from balsam.site import init_site

    root = tmp_path_factory.mktemp("paging")
    old_home = os.environ.get("BALSAM_HOME")
    os.environ["BALSAM_HOME"] = str(root / "home")
    _sites.reset()
    init_site(root / "big", name="big")
    ref = _sites.resolve("big")

    class Noop(ApplicationDefinition):
        site = "big"
        command_template = "true"

    Noop.sync()
    jobs = Job.objects.bulk_create([Job(f"w/{i:06d}", Noop, tags={"half": str(i % 2)}) for i in range(N)])
    ids = [int(j.id or 0) for j in jobs]
    with ref.store.write() as conn:
        conn.execute("UPDATE job SET state='JOB_FINISHED' WHERE id % 3 = 0")
    server = start_api_server(ref.path, ref.store, ApiSettings(bind="127.0.0.1"), host=ref.host)
    try:
        yield ref, ids
    finally:
        server.stop()
        ref.store.close()
        _sites.reset()
        if old_home is None:
            os.environ.pop("BALSAM_HOME", None)
        else:
            os.environ["BALSAM_HOME"] = old_home


@pytest.fixture
def client(big_site: Tuple[Any, List[int]], monkeypatch: pytest.MonkeyPatch) -> Any:
    from balsam.http.client import HttpClient

    monkeypatch.setenv("BALSAM_HOME", str(big_site[0].path.parent / "home"))
    return HttpClient(big_site[0].path / ".balsam", retry_s=5)


def _walk(client: Any, query: str, limit: int) -> Tuple[List[int], List[str]]:
    """Every id of a listing, page by page: (ids, the cursor given after each page)."""
    ids: List[int] = []
    cursors: List[str] = []
    cursor = None
    while True:
        page = client.request("GET", f"/v1/jobs?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        ids.extend(int(r["id"]) for r in page["results"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, cursors
        cursors.append(cursor)


def test_a_deep_page_of_a_100k_job_listing_is_the_right_page(big_site: Tuple[Any, List[int]], client: Any) -> None:
    _ref, ids = big_site
    walked, cursors = _walk(client, "ordering=id", 5000)
    assert walked == sorted(ids), "every job once, in order"
    deep = client.request("GET", f"/v1/jobs?ordering=id&limit=100&cursor={cursors[18]}")  # after 95,000 rows
    assert [int(r["id"]) for r in deep["results"]] == sorted(ids)[95_000:95_100]
    newest_first, _ = _walk(client, "ordering=-id&state=JOB_FINISHED", 10_000)
    assert newest_first == sorted((i for i in ids if i % 3 == 0), reverse=True)


def test_orderings_with_ties_page_through_every_job_once(big_site: Tuple[Any, List[int]], client: Any) -> None:
    _ref, ids = big_site
    by_state, _ = _walk(client, "ordering=-state&tags=half:1", 7000)
    assert sorted(by_state) == sorted(ids[1::2]) and len(set(by_state)) == len(by_state)
    finished = {i for i in ids if i % 3 == 0}
    first_finished = next(n for n, i in enumerate(by_state) if i in finished)  # descending: STAGED_IN before JOB_FINISHED
    assert not finished & set(by_state[:first_finished]) and all(i in finished for i in by_state[first_finished:])
    assert by_state[:first_finished] == sorted(by_state[:first_finished], reverse=True), "ties broken by id, descending"


def test_a_cursor_is_checked_against_its_query(big_site: Tuple[Any, List[int]], client: Any) -> None:
    from balsam.exceptions import ValidationError

    page = client.request("GET", "/v1/jobs?ordering=id&limit=10")
    with pytest.raises(ValidationError, match="cursor"):
        client.request("GET", f"/v1/jobs?ordering=-workdir&limit=10&cursor={page['next_cursor']}")
    for forged in ("kx", "k" + "A" * 40, page["next_cursor"][:-3], "o" + page["next_cursor"][1:], "'; DROP TABLE job"):
        with pytest.raises(ValidationError, match="cursor"):
            client.request("GET", "/v1/jobs?ordering=id&limit=10&cursor=" + forged.replace(" ", "%20").replace(";", "%3B"))


def test_a_listing_starts_at_its_offset_and_a_bad_offset_is_refused(big_site: Tuple[Any, List[int]], client: Any) -> None:
    """``GET /v1/jobs?offset=N`` was accepted and ignored: every caller got the first page whatever N it asked for."""
    from balsam.exceptions import ValidationError

    _ref, ids = big_site
    page = client.request("GET", "/v1/jobs?ordering=id&limit=5&offset=99990")
    assert [int(r["id"]) for r in page["results"]] == sorted(ids)[99_990:99_995]
    rest = client.request("GET", f"/v1/jobs?ordering=id&limit=100&cursor={page['next_cursor']}")
    assert [int(r["id"]) for r in rest["results"]] == sorted(ids)[99_995:] and rest["next_cursor"] is None
    for bad in ("-1", "x", str(2**70)):
        with pytest.raises(ValidationError, match="offset"):
            client.request("GET", f"/v1/jobs?ordering=id&limit=5&offset={bad}")


def test_the_python_api_on_a_foreign_host_iterates_with_cursors(big_site: Tuple[Any, List[int]], client: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from balsam._api import sites as _sites
    from balsam.api import Job
    from balsam.http import client as http_client

    ref, ids = big_site
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    _sites.reset()
    assert _sites.resolve("big").backend.kind == "http"
    sent: List[Dict[str, Any]] = []
    real = http_client.HttpClient.request

    def spy(self: Any, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
        sent.append(dict(payload or {}) if isinstance(payload, dict) else {})
        return real(self, method, path, payload, **kw)

    monkeypatch.setattr(http_client.HttpClient, "request", spy)
    every = [int(j.id or 0) for j in Job.objects.filter(site_name="big").order_by("id")]
    assert every == sorted(ids)
    pages = [p for p in sent if p.get("page")]
    first, rest = http_client.FIRST_PAGE_ROWS, N - http_client.FIRST_PAGE_ROWS
    assert len(pages) == 1 + -(-rest // http_client.PAGE_ROWS) and all("cursor" in p for p in pages[1:]), "one keyset page per request"
    assert pages[0]["limit"] == first and {p["limit"] for p in pages[1:-1]} == {http_client.PAGE_ROWS}
    sent.clear()
    rows = _sites.resolve("big").backend.iterate("job", {}, columns=["id"], order_by=["id"])
    assert next(rows) == (min(ids),)
    deadline = time.monotonic() + 30
    while len(sent) < 2 and time.monotonic() < deadline:  # the caller holds the first row: the next page is on its way
        time.sleep(0.01)
    assert len(sent) == 2 and sent[1]["cursor"], "the second page is asked for while the caller takes the first"
    rows.close()  # a caller that stops early: nothing more is asked for
    time.sleep(0.2)
    assert len(sent) == 2
    assert [int(j.id or 0) for j in Job.objects.filter(site_name="big").order_by("id")[95_000:95_003]] == sorted(ids)[95_000:95_003]
    _sites.reset()


def test_a_deep_keyset_page_costs_sqlite_what_the_first_costs(big_site: Tuple[Any, List[int]]) -> None:
    """SQLite's own count of virtual-machine steps (deterministic, unlike a timing) for the first and a deep page."""
    from balsam.db import query as q

    ref, ids = big_site
    conn = sqlite3.connect(str(ref.store.db_path))
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        costs = []
        for after in (None, [sorted(ids)[95_000]]):
            steps[0] = 0
            rows, _ = q.page(conn, q.JOB, {"state": ["STAGED_IN"]}, columns=("id", "workdir"), order_by=("id",), limit=100, after=after)
            assert len(rows) == 100
            costs.append(steps[0])
        steps[0] = 0
        conn.execute("SELECT id, workdir FROM job WHERE state = 'STAGED_IN' ORDER BY id LIMIT 100 OFFSET 63000").fetchall()
        offset_cost = steps[0]
    finally:
        conn.close()
    assert costs[1] <= 2 * costs[0] + 5, f"a deep page took {costs[1]} steps, the first {costs[0]}"
    assert offset_cost > 50 * costs[1], "an offset that deep walks every row before it"


def test_rows_removed_before_a_cursor_do_not_shift_the_next_page(big_site: Tuple[Any, List[int]], client: Any) -> None:
    ref, ids = big_site
    first = client.request("GET", "/v1/jobs?ordering=id&tags=half:0&limit=1000")
    last_seen = int(first["results"][-1]["id"])
    gone = [int(r["id"]) for r in first["results"][:500]]
    from balsam.db import jobs as job_db

    with ref.store.write() as conn:  # another user deletes half the page already read (with offsets, 500 jobs would be skipped)
        job_db.delete_jobs(conn, gone)
    nxt = client.request("GET", f"/v1/jobs?ordering=id&tags=half:0&limit=10&cursor={first['next_cursor']}")
    expected = sorted(i for i in ids[0::2] if i > last_seen)[:10]
    assert [int(r["id"]) for r in nxt["results"]] == expected
