"""Site store benchmark: bulk create, bulk state changes, queries on 1M jobs, concurrent writers.

Every figure is printed beside a baseline measured in the same run (raw ``sqlite3`` doing the same work),
as a ratio: the machine is noisy, so a ratio within one run is the number to read.

    python bench/bench_store.py [--jobs 100000] [--big 1000000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _setup_site(root: Path, name: str) -> Any:
    os.environ["BALSAM_HOME"] = str(root / "home")
    from balsam._api import sites
    from balsam.site import init_site

    sites.reset()
    init_site(root / name, name=name)
    return sites.resolve(name)


def _define_app(site_name: str) -> Any:
    from balsam.api import ApplicationDefinition

    ns: Dict[str, Any] = {"ApplicationDefinition": ApplicationDefinition}
    exec(
        "class Hello(ApplicationDefinition):\n"
        f"    site = {site_name!r}\n"
        "    command_template = 'echo Hello, {{ say_hello_to }}!'\n",
        ns,
    )
    app = ns["Hello"]
    app.sync()
    return app


RAW_DDL = """CREATE TABLE job (id INTEGER PRIMARY KEY, workdir TEXT, app_id INTEGER, tags TEXT, parameters TEXT, data TEXT,
 num_nodes INTEGER, ranks_per_node INTEGER, threads_per_rank INTEGER, threads_per_core INTEGER, gpus_per_rank REAL,
 node_packing_count INTEGER, launch_params TEXT, wall_time_min INTEGER, parent_ids TEXT, state TEXT, last_update REAL,
 created REAL, pending_file_cleanup INTEGER)"""


def _raw_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(RAW_DDL)
    return conn


def bench_bulk_create(tmp: Path, n: int) -> Tuple[float, float, float]:
    """(ours, raw, build) seconds for n jobs; raw = json.dumps + executemany of the same rows into a bare table."""
    site = _setup_site(tmp, "create")
    app = _define_app("create")
    from balsam.api import Job

    specs = [(f"demo/{i}", {"experiment": "xyz", "n": str(i % 10)}, {"say_hello_to": f"n{i}"}) for i in range(n)]
    t0 = time.perf_counter()
    jobs = [app.submit(workdir=w, tags=t, save=False, **p) for w, t, p in specs]
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    Job.objects.bulk_create(jobs)
    ours = time.perf_counter() - t0
    assert site.store.conn.execute("SELECT count(*) FROM job").fetchone()[0] == n

    conn = _raw_db(tmp / "raw_create.db")
    t0 = time.perf_counter()
    now = time.time()
    rows = [(i + 1, w, 1, json.dumps(t), json.dumps(p), "{}", 1, 1, 1, 1, 0.0, 1, "{}", 0, "[]", "STAGED_IN", now, now, 1)
            for i, (w, t, p) in enumerate(specs)]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(f"INSERT INTO job VALUES ({','.join('?' * 19)})", rows)
    conn.execute("COMMIT")
    raw = time.perf_counter() - t0
    conn.close()
    return ours, raw, build


def bench_updater(tmp: Path, n: int) -> Tuple[float, float]:
    """(ours, raw) seconds for n state changes STAGED_IN -> PREPROCESSED; raw = executemany UPDATE + INSERT event."""
    from balsam.db.updater import StatusUpdater, store_sink

    site = _setup_site(tmp, "update")
    app = _define_app("update")
    from balsam.api import Job

    Job.objects.bulk_create([app.submit(workdir=f"u/{i}", save=False, say_hello_to="x") for i in range(n)])
    ids = [r[0] for r in site.store.conn.execute("SELECT id FROM job ORDER BY id")]
    updater = StatusUpdater(store_sink(site.store), period_s=0.05, max_batch=20_000).start()
    t0 = time.perf_counter()
    for i in ids:
        updater.put(i, "PREPROCESSED")
    updater.close()
    ours = time.perf_counter() - t0
    assert site.store.conn.execute("SELECT count(*) FROM job WHERE state='PREPROCESSED'").fetchone()[0] == n

    conn = _raw_db(tmp / "raw_update.db")
    conn.execute("CREATE TABLE event (id INTEGER PRIMARY KEY, job_id INTEGER, timestamp REAL, from_state TEXT, to_state TEXT, data TEXT)")
    conn.execute("CREATE INDEX event_job ON event(job_id)")
    conn.execute("CREATE INDEX job_state ON job(state)")
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO job VALUES ({','.join('?' * 19)})",
                     [(i, f"u/{i}", 1, "{}", "{}", "{}", 1, 1, 1, 1, 0.0, 1, "{}", 0, "[]", "STAGED_IN", now, now, 1) for i in ids])
    conn.execute("COMMIT")
    t0 = time.perf_counter()
    changes = [(i, time.time()) for i in ids]
    for start in range(0, n, 20_000):
        chunk = changes[start : start + 20_000]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE job SET state='PREPROCESSED', last_update=? WHERE id=?", [(ts, i) for i, ts in chunk])
        conn.executemany("INSERT INTO event(job_id, timestamp, from_state, to_state) VALUES (?,?,?,?)",
                         [(i, ts, "STAGED_IN", "PREPROCESSED") for i, ts in chunk])
        conn.execute("COMMIT")
    raw = time.perf_counter() - t0
    conn.close()
    return ours, raw


def bench_big(tmp: Path, n: int) -> Dict[str, float]:
    """Milliseconds for a tag+state count, a state count, and acquiring 1,000 jobs on an n-job site."""
    from balsam.db import jobs as job_db
    from balsam.db import sessions

    site = _setup_site(tmp, "big")
    app = _define_app("big")
    app_id = app.__app_id__
    store = site.store
    t0 = time.perf_counter()
    batch = 100_000
    for start in range(0, n, batch):
        rows = [job_db.new_job_row(f"w/{i}", app_id, tags={"experiment": "xyz" if i % 10 == 0 else "abc", "run": str(i % 1000)},
                                   parameters={"say_hello_to": "x"}) for i in range(start, min(n, start + batch))]
        with store.write() as conn:
            job_db.insert_jobs(conn, rows)
    with store.write() as conn:
        conn.execute("UPDATE job SET state = CASE WHEN id % 1000 = 1 THEN 'RUNNING' WHEN id % 3 = 0 THEN 'JOB_FINISHED' "
                     "ELSE 'PREPROCESSED' END")
    fill = time.perf_counter() - t0
    store.conn.execute("ANALYZE")
    from balsam.api import Job

    out: Dict[str, float] = {"fill_s": fill}

    def timed(fn: Any, repeat: int = 5) -> float:
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1000)
        return statistics.median(samples)

    out["count_tag_state_ms"] = timed(lambda: Job.objects.filter(tags={"experiment": "xyz"}, state="PREPROCESSED").count())
    out["count_broad_tag_rare_state_ms"] = timed(lambda: Job.objects.filter(tags={"experiment": "abc"}, state="RUNNING").count())
    out["count_state_ne_ms"] = timed(lambda: Job.objects.filter(state__ne="JOB_FINISHED").count())
    out["filter_tag_order_slice_ms"] = timed(lambda: list(Job.objects.filter(tags={"experiment": "xyz"}, state="PREPROCESSED").order_by("-id")[:10]))

    def acquire() -> None:
        with store.write() as conn:
            sid = sessions.create_session(conn, host="bench")
            got = sessions.acquire(conn, sid, max_num_jobs=1000)
            assert len(got) == 1000
            sessions.release(conn, sid)

    out["acquire_1000_ms"] = timed(acquire)
    raw = sqlite3.connect(str(site.layout.db_path))
    out["raw_count_state_ms"] = timed(lambda: raw.execute("SELECT count(*) FROM job WHERE state='PREPROCESSED'").fetchone())
    raw.close()
    return out


def _writer(args: Tuple[str, str, List[int], int]) -> Tuple[int, int, float]:
    home, site_name, ids, per_txn = args
    os.environ["BALSAM_HOME"] = home
    from balsam._api import sites
    from balsam.db.jobs import StateChange, apply_state_changes

    sites.reset()
    store = sites.resolve(site_name).store
    errors = 0
    done = 0
    t0 = time.perf_counter()
    from balsam.db.sessions import create_session

    sid = None
    for state in ("PREPROCESSED", "RUNNING", "RUN_DONE"):
        if state == "RUNNING":  # acquired first, as a launcher does: only a lease holder marks jobs RUNNING
            with store.write() as conn:
                sid = create_session(conn, host="bench")
                conn.execute("UPDATE job SET session_id=? WHERE id IN (SELECT value FROM json_each(?))", (sid, str(ids)))
        for start in range(0, len(ids), per_txn):
            chunk = ids[start : start + per_txn]
            try:
                with store.write() as conn:
                    apply_state_changes(conn, [StateChange(i, state, session_id=sid) for i in chunk], strict=True)
                done += len(chunk)
            except Exception:
                errors += 1
    return done, errors, time.perf_counter() - t0


def bench_concurrent(tmp: Path, n: int, procs: int = 4, per_txn: int = 10) -> Dict[str, float]:
    """Four processes changing states in small transactions: errors seen, and throughput vs one process."""
    site = _setup_site(tmp, "conc")
    app = _define_app("conc")
    from balsam.api import Job

    Job.objects.bulk_create([app.submit(workdir=f"c/{i}", save=False, say_hello_to="x") for i in range(n)])
    ids = [r[0] for r in site.store.conn.execute("SELECT id FROM job ORDER BY id")]
    home = os.environ["BALSAM_HOME"]
    half = len(ids) // 2
    t0 = time.perf_counter()
    one = _writer((home, "conc", ids[:half], per_txn))
    single_rate = one[0] / (time.perf_counter() - t0)
    rest = ids[half:]
    parts = [rest[k::procs] for k in range(procs)]
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(procs) as pool:
        results = pool.map(_writer, [(home, "conc", p, per_txn) for p in parts])
    elapsed = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    return {"errors": float(sum(r[1] for r in results) + one[1]), "single_changes_per_s": single_rate,
            "four_changes_per_s": total / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--concurrent-jobs", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="balsam-bench-") as d:
        tmp = Path(d)
        ours, raw, build = bench_bulk_create(tmp, args.jobs)
        print(f"bulk_create {args.jobs:,} jobs: balsam {ours:.2f} s ({args.jobs / ours:,.0f}/s), raw executemany {raw:.2f} s "
              f"-> ratio {raw / ours:.2f} (aim >= 0.5); building them with App.submit(save=False): {build:.2f} s")
        ours, raw = bench_updater(tmp, args.jobs)
        print(f"StatusUpdater {args.jobs:,} state changes: balsam {ours:.2f} s ({args.jobs / ours:,.0f}/s), "
              f"raw UPDATE+event executemany {raw:.2f} s -> ratio {raw / ours:.2f} (aim >= 0.5)")
        big = bench_big(tmp, args.big)
        print(f"{args.big:,}-job site (filled in {big['fill_s']:.1f} s): "
              f"count(tags, state) {big['count_tag_state_ms']:.1f} ms (tag 10%, state 66%); "
              f"count(tags, state) {big['count_broad_tag_rare_state_ms']:.1f} ms (tag 90%, state 0.1%); "
              f"count(state__ne) {big['count_state_ne_ms']:.1f} ms; "
              f"filter(tags, state).order_by('-id')[:10] {big['filter_tag_order_slice_ms']:.1f} ms; "
              f"acquire 1,000 {big['acquire_1000_ms']:.1f} ms (aim < 50 ms each); raw count(state) {big['raw_count_state_ms']:.1f} ms")
        conc = bench_concurrent(tmp, args.concurrent_jobs)
        print(f"4 writer processes, 10 changes per transaction: {conc['errors']:.0f} errors; "
              f"{conc['four_changes_per_s']:,.0f} changes/s vs one process {conc['single_changes_per_s']:,.0f}/s "
              f"-> ratio {conc['four_changes_per_s'] / conc['single_changes_per_s']:.2f}")


if __name__ == "__main__":
    main()
