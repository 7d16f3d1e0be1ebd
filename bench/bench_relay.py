"""Benchmark: the relay's sync ingest, listing over many jobs, and the latency of remote work through the relay.

**Sync ingest.** ``--sites`` sites each push ``--jobs`` jobs through ``--rounds`` state changes (every change a
full job row of the site store's 25 columns, as the sync service sends them; the first round creates the jobs)
in batches of 5,000 (the sync service's size), ``--clients`` pushes at a time. Measured: changes/s through
``RelayStore.ingest`` directly and through HTTP (``balsam relay serve`` in its own process, the sites' real
``HttpClient`` in this one), against the floor: raw ``executemany`` upserts of the same rows (their mirror
columns, built before the clock starts) into the same table, with no validation, no idempotency record, no tags.
On SQLite, and on PostgreSQL when ``BALSAM_TEST_PG_URL`` is set (``bash .ci/postgres.sh start; export
BALSAM_TEST_PG_URL=$(bash .ci/postgres.sh url)``).

**Listing.** ``--listing`` jobs (100 sites of one user; states spread over Balsam's states) in the mirror, then
p50/p99 of what the dashboard and ``Job.objects`` ask over HTTP: the first page of 100 jobs, a page of 100 in one
state, one site's page, and counts by state; the same queries straight through the RelayBackend. Counts by state
read the per-site count table: measured against the GROUP BY of the jobs it replaced, in the same run.

**Remote work.** A real site (preset local) with its agent linked to the relay and a launcher running; jobs
created on a "laptop" (a process with no site, through the relay) until JOB_FINISHED is visible there; against
the same jobs created and watched on the site's own host (its SQLite DB), in the same run. Median and p99, and
each way: created on the laptop -> RUNNING at the site, and JOB_FINISHED at the site -> visible on the laptop.
The first job of each run, which waits for its launcher to start, is reported apart.

Usage::

    python bench/bench_relay.py [--sites 20] [--jobs 2500] [--rounds 4] [--clients 4] [--listing 100000] [--remote 20] [--json out.json]
    python bench/bench_relay.py --full     # the issue's sizes: 100 sites, 1,000,000 changes; listing over 1,000,000 jobs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATES = ["STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
BATCH = 5000


def job_row(site_id: int, i: int, state: str, now: float) -> Dict[str, Any]:
    """A job row as the site's outbox sends it (every column of the site store's job table)."""
    base = site_id << 32
    return {"id": base + i, "workdir": f"runs/{i}", "app_id": base + 1, "tags": '{"exp": "bench", "round": "r1"}',
            "parameters": f'{{"x": {i}, "name": "input-{i}"}}', "data": "{}", "return_code": 0 if state == "JOB_FINISHED" else None,
            "num_nodes": 1, "ranks_per_node": 1, "threads_per_rank": 1, "threads_per_core": 1, "gpus_per_rank": 0.0,
            "node_packing_count": 1, "launch_params": "{}", "wall_time_min": 0, "parent_ids": "[]", "batch_job_id": None,
            "session_id": None, "state": state, "last_update": now + i * 1e-3, "created": now, "pending_file_cleanup": 1,
            "serialized_return_value": None, "serialized_exception": None, "version": 1}


def job_items(site_id: int, first: int, n: int, state: str, now: float) -> List[Dict[str, Any]]:
    base = site_id << 32
    return [{"entity": "job", "op": "upsert", "id": base + i, "row": job_row(site_id, i, state, now)} for i in range(first, first + n)]


def site_pushes(args: argparse.Namespace, site: int) -> Iterator[Tuple[int, int]]:
    """(round, first job) of one site's pushes, in the order its sync service sends them."""
    for rnd in range(args.rounds):
        for first in range(1, args.jobs + 1, BATCH):
            yield rnd, first


def batches(args: argparse.Namespace) -> Iterator[Tuple[int, int, int]]:
    """(site, round, first job) of every push, round by round."""
    for rnd in range(args.rounds):
        for site in range(1, args.sites + 1):
            for first in range(1, args.jobs + 1, BATCH):
                yield site, rnd, first


def fresh_store(kind: str, tmp: Path) -> Any:
    from balsam.relay.store import RelayStore

    if kind == "sqlite":
        Path(tmp / "relay-bench.db").unlink(missing_ok=True)
        store = RelayStore(f"sqlite:///{tmp / 'relay-bench.db'}")
    else:
        import sqlalchemy as sa

        store = RelayStore(os.environ["BALSAM_TEST_PG_URL"])
        with store.begin() as c:
            c.execute(sa.text("DROP SCHEMA public CASCADE"))
            c.execute(sa.text("CREATE SCHEMA public"))
    store.migrate()
    return store


def with_sites(store: Any, n: int) -> Tuple[Any, Dict[int, str]]:
    """A user "bench" with ``n`` linked sites: (the user, {site id: agent token})."""
    from balsam.relay.store import Caller

    uid = store.add_user("bench", "bench-password")
    user = Caller(user_id=uid, user="bench", kind="user")
    return user, {s: store.link_site(user, s, f"site{s}") for s in range(1, n + 1)}


def serve(store: Any, tmp: Path) -> Tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    """``balsam relay serve`` over the store's database in its own process; (the process, its URL)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), BALSAM_HOME=str(tmp / "serve-home"))
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "relay", "serve", "--db", store.url, "--bind", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"balsam relay serve did not start: {line}{proc.stdout.read()}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its log
    return proc, f"http://127.0.0.1:{found.group(1)}"


def run_pushes(args: argparse.Namespace, push: Callable[[int, str, int, List[Dict[str, Any]]], None]) -> float:
    """Every push through ``push(site, submission_id, last_seq, items)``; changes/s. ``--clients`` pushes are in
    flight at a time, at most one per site (a site's sync service sends its pushes one after the other)."""
    from collections import deque

    queue = deque((site, site_pushes(args, site)) for site in range(1, args.sites + 1))
    lock = threading.Lock()
    done = [0]
    now = time.time()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                site, pushes = queue.popleft()
                step = next(pushes, None)
            if step is None:
                continue
            rnd, first = step
            items = job_items(site, first, min(BATCH, args.jobs - first + 1), STATES[rnd % len(STATES)], now)
            push(site, f"bench-{site}-{rnd}-{first}", rnd + 1, items)
            with lock:
                done[0] += len(items)
                queue.append((site, pushes))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - t0)


def check_mirror(store: Any, args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    from balsam.relay import schema as t_

    with store.connect() as c:
        n = c.execute(sa.select(sa.func.count()).select_from(t_.job)).scalar_one()
        last = STATES[(args.rounds - 1) % len(STATES)]
        moved = c.execute(sa.select(sa.func.count()).select_from(t_.job).where(t_.job.c.state == last)).scalar_one()
    assert n == moved == args.sites * args.jobs, (n, moved)


def ingest_direct(kind: str, tmp: Path, args: argparse.Namespace) -> float:
    """Changes/s of every site's pushes straight into ``RelayStore.ingest``."""
    store = fresh_store(kind, tmp)
    _, tokens = with_sites(store, args.sites)
    callers = {s: store.verify(tok) for s, tok in tokens.items()}
    rate = run_pushes(args, lambda site, sub, seq, items: store.ingest(callers[site], sub, seq, items))
    check_mirror(store, args)
    store.close()
    return rate


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ingest_http(kind: str, tmp: Path, args: argparse.Namespace) -> Tuple[float, float]:
    """Changes/s of every site's pushes over HTTP to ``balsam relay serve`` (another process), and the relay
    process's CPU microseconds per change (what a relay on a machine of its own spends: the pushing sites, here on
    the same two cores, are not counted)."""
    from balsam.http.client import HttpClient

    store = fresh_store(kind, tmp)
    _, tokens = with_sites(store, args.sites)
    proc, url = serve(store, tmp)
    clients = {s: HttpClient(url=url, token=tok, retry_s=60) for s, tok in tokens.items()}
    try:
        cpu0 = cpu_s(proc.pid)
        rate = run_pushes(args, lambda site, sub, seq, items: clients[site].request(
            "POST", "/v1/sync/push", {"submission_id": sub, "last_seq": seq, "items": items}))
        cpu_us = (cpu_s(proc.pid) - cpu0) / (args.sites * args.jobs * args.rounds) * 1e6
    finally:
        proc.terminate()
        proc.wait(30)
    check_mirror(store, args)
    store.close()
    return rate, cpu_us


def raw_executemany(kind: str, tmp: Path, args: argparse.Namespace) -> float:
    """Changes/s of plain upserts of the same rows' mirror columns (built beforehand, one round at a time)."""
    from balsam.relay import bulk, mirror

    store = fresh_store(kind, tmp)
    columns = list(mirror.job_columns(job_row(1, 1, "READY", 0.0)))
    sql = None
    now = time.time()
    total, elapsed = 0, 0.0
    for rnd in range(args.rounds):
        rows = [[tuple(mirror.job_columns(it["row"]).values()) for it in job_items(site, first, min(BATCH, args.jobs - first + 1),
                                                                                   STATES[rnd % len(STATES)], now)]
                for site, r, first in batches(args) if r == rnd]
        t0 = time.perf_counter()
        for batch in rows:
            with store.begin() as c:
                sql = sql or bulk.upsert_sql(c, mirror.t.job, columns)
                c.exec_driver_sql(sql, batch)
        elapsed += time.perf_counter() - t0
        total += sum(len(b) for b in rows)
    store.close()
    return total / elapsed


def raw_bulk(kind: str, tmp: Path, args: argparse.Namespace) -> float:
    """Changes/s of the relay's own bulk upsert (:func:`balsam.relay.bulk.upsert`) of the same prepared tuples:
    the floor of the ingest path itself, without validation, JSON, links or the idempotency record."""
    from balsam.relay import bulk, mirror

    store = fresh_store(kind, tmp)
    columns = mirror.COLUMNS["job"]
    now = time.time()
    total, elapsed = 0, 0.0
    for rnd in range(args.rounds):
        rows = [[tuple(mirror.job_columns(it["row"]).values()) for it in job_items(site, first, min(BATCH, args.jobs - first + 1),
                                                                                   STATES[rnd % len(STATES)], now)]
                for site, r, first in batches(args) if r == rnd]
        t0 = time.perf_counter()
        for batch in rows:
            with store.begin() as c:
                bulk.upsert(c, mirror.t.job, columns, batch)
        elapsed += time.perf_counter() - t0
        total += sum(len(b) for b in rows)
    store.close()
    return total / elapsed


# ------------------------------------------------------------------------------------------ listing
ALL_STATES = ["CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE", "RUN_ERROR",
              "RUN_TIMEOUT", "RESTART_READY", "POSTPROCESSED", "STAGED_OUT", "JOB_FINISHED", "FAILED"]


def listing(kind: str, tmp: Path, n_jobs: int, repeat: int) -> Dict[str, Any]:
    """p50/p99 (ms) of listing queries over ``n_jobs`` jobs of 100 sites, over HTTP and through the RelayBackend."""
    from balsam.http.client import HttpClient
    from balsam.relay.backend import RelayBackend
    from balsam.relay.store import Caller

    sites = 100
    per_site = max(1, n_jobs // sites)
    store = fresh_store(kind, tmp)
    user, tokens = with_sites(store, sites)
    now = time.time()
    t0 = time.perf_counter()
    for site, token in tokens.items():
        caller = store.verify(token)
        for first in range(1, per_site + 1, BATCH):
            items = job_items(site, first, min(BATCH, per_site - first + 1), "READY", now)
            for it in items:
                i = it["id"] & 0xFFFFFFFF
                it["row"]["state"] = ALL_STATES[i % len(ALL_STATES)]
                it["row"]["tags"] = f'{{"exp": "bench", "batch": "b{i % 1000}"}}'
            store.ingest(caller, f"fill-{site}-{first}", first, items)
    fill_s = time.perf_counter() - t0
    if kind == "postgresql":
        with store.connect() as c:  # what autovacuum does after a bulk load
            c.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    queries = {
        "page of 100 (all sites)": ("/v1/jobs?limit=100", {}, None),
        "page of 100 in one state": ("/v1/jobs?limit=100&state=RUNNING", {"state": ["RUNNING"]}, None),
        "page of 100 of one site": ("/v1/jobs?limit=100&site_id=42", {}, [42]),
        "page of 100 by tag": ("/v1/jobs?limit=100&tags=batch:b7", {"tags": {"batch": "b7"}}, None),
        "counts by state": ("/v1/jobs/count?group_by=state", None, None),
    }
    from balsam.http.schemas import COLUMNS

    proc, url = serve(store, tmp)
    token, _ = store.login("bench", "bench-password")
    client = HttpClient(url=url, token=token, retry_s=60)
    out: Dict[str, Any] = {"jobs": per_site * sites, "fill_per_s": per_site * sites / fill_s}
    try:
        for name, (path, filters, narrow) in queries.items():
            backend = RelayBackend(store, Caller(user_id=user.user_id, user="bench", kind="user"))
            if narrow:
                backend = backend.narrow(narrow)
            times: Dict[str, List[float]] = {"http": [], "backend": []}
            for _ in range(repeat):
                t1 = time.perf_counter()
                answer = client.request("GET", path)
                times["http"].append(time.perf_counter() - t1)
                t1 = time.perf_counter()
                if filters is None:
                    direct: Any = backend.count_by("job", {}, "state")
                else:
                    direct = backend.select("job", filters, columns=COLUMNS["job"], limit=101)
                times["backend"].append(time.perf_counter() - t1)
            got = sum(answer["counts"].values()) if filters is None else len(answer["results"])
            want = per_site * sites if filters is None else min(100, len(direct))
            assert got == want, (name, got, want)
            out[name] = {side: {"p50_ms": 1e3 * pct(v, 0.5), "p99_ms": 1e3 * pct(v, 0.99)} for side, v in times.items()}
        # The baseline, in the same run: counts by state as a GROUP BY of the job mirror (how they were read before
        # the per-site count table of revision 0005), one index entry per job.
        import sqlalchemy as sa

        from balsam.relay import schema as t

        site_ids = sorted(tokens)
        grouped = sa.select(t.job.c.state, sa.func.count()).where(t.job.c.site_id.in_(site_ids)).group_by(t.job.c.site_id, t.job.c.state)
        base: List[float] = []
        for _ in range(repeat):
            t1 = time.perf_counter()
            with store.connect() as c:
                total = sum(int(n) for _, n in c.execute(grouped))
            base.append(time.perf_counter() - t1)
        assert total == per_site * sites
        out["counts_group_by_baseline"] = {"p50_ms": 1e3 * pct(base, 0.5), "p99_ms": 1e3 * pct(base, 0.99)}
    finally:
        proc.terminate()
        proc.wait(30)
        store.close()
    return out


# ------------------------------------------------------------------------------------------ remote latency
def sh(env: Dict[str, str], *args: str, stdin: str = "") -> str:
    out = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{args}: {out.stderr.strip()}")
    return out.stdout


def remote_latency(tmp: Path, n: int) -> Dict[str, List[List[float]]]:
    """Per job, seconds from creation to JOB_FINISHED visible, from creation to RUNNING at the site (the site's
    event), and from JOB_FINISHED at the site to visible (the way back), through the relay and on the site's host
    (one machine: the site's clock is the laptop's). Each run's first job waits for the launcher to start (the
    BatchJob's start-up, not the relay's latency): it is kept apart ("first")."""
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.relay.server import build_relay_app

    store = fresh_store("sqlite", tmp / "remote")
    store.add_user("alice", "alice-password")
    server = ApiServer(build_relay_app(store), ServeOptions(bind="127.0.0.1", port=0)).start()
    url = f"http://127.0.0.1:{server.port}"
    node = dict(os.environ, BALSAM_HOME=str(tmp / "node-home"), PYTHONPATH=str(ROOT))
    laptop = dict(os.environ, BALSAM_HOME=str(tmp / "laptop-home"), PYTHONPATH=str(ROOT))
    root = tmp / "polaris"
    sh(node, "-m", "balsam", "site", "init", str(root), "-n", "polaris", "--preset", "local")
    sh(node, "-c", f"import os; os.chdir({str(root)!r})\nfrom balsam.api import ApplicationDefinition\n"
                   "class Echo(ApplicationDefinition):\n    site = 'polaris'\n    command_template = 'echo {{ x }}'\nEcho.sync()\n")
    sh(node, "-m", "balsam", "login", url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    sh(node, "-m", "balsam", "site", "link", url, "--site", str(root))
    sh(node, "-m", "balsam", "site", "start", "--site", str(root))
    sh(laptop, "-m", "balsam", "login", url, "-u", "alice", "--password-stdin", stdin="alice-password\n")
    probe = tmp / "probe.py"
    probe.write_text(
        "import json, sys, time\nfrom balsam.api import BatchJob, EventLog, Job\n"
        "n, site = int(sys.argv[1]), sys.argv[2]\n"
        "if sys.argv[3] == 'batch':\n"
        "    BatchJob.objects.create(num_nodes=1, wall_time_min=30, job_mode='serial', queue='local', project='local')\n"
        "out = []\n"
        "for i in range(n + 1):\n"
        "    t0 = time.time()\n"
        "    job = Job(workdir=f'{sys.argv[3]}/{i}', app_id='Echo', parameters={'x': str(i)}, site_name=site)\n"
        "    job.save()\n"
        "    while Job.objects.filter(id=[job.id], state='JOB_FINISHED').count() == 0:\n"
        "        time.sleep(0.05)\n"
        "    t1 = time.time()\n"
        "    ev = {str(e.to_state): e.timestamp.timestamp() for e in EventLog.objects.filter(job_id=job.id)}\n"
        "    out.append([t1 - t0, ev.get('RUNNING', t1) - t0, t1 - ev.get('JOB_FINISHED', t1)])\n"
        "print(json.dumps(out))\n")
    try:
        # The first job of each run waits for the launcher (the BatchJob's start): reported apart, not timed with the rest.
        first, *remote = json.loads(sh(laptop, str(probe), str(n), "polaris", "batch").strip().splitlines()[-1])
        _, *local = json.loads(sh(node, str(probe), str(n), str(root), "local").strip().splitlines()[-1])
    finally:
        subprocess.run([sys.executable, "-m", "balsam", "queue", "ls", "--site", str(root)], env=node, capture_output=True)
        subprocess.run([sys.executable, "-c", "from balsam.api import BatchJob\n"
                        f"[setattr(b, 'state', 'pending_deletion') or b.save() for b in BatchJob.objects.filter(site_path={str(root)!r}, "
                        "state=['pending_submission', 'queued', 'running'])]"], env=node, capture_output=True)
        subprocess.run([sys.executable, "-m", "balsam", "site", "stop", "--site", str(root)], env=node, capture_output=True)
        server.stop()
        store.close()
    return {"relay": remote, "local": local, "first": [first]}


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2500, help="jobs per site")
    parser.add_argument("--rounds", type=int, default=4, help="state changes per job")
    parser.add_argument("--clients", type=int, default=4, help="sites pushing at once")
    parser.add_argument("--listing", type=int, default=100_000, help="jobs at the relay for the listing queries (0: skip)")
    parser.add_argument("--repeat", type=int, default=50, help="times each listing query is timed")
    parser.add_argument("--remote", type=int, default=20, help="remote jobs timed (0: skip)")
    parser.add_argument("--full", action="store_true", help="the issue's sizes: 100 sites x 2,500 jobs x 4 changes = 1,000,000 "
                        "changes; listing over 1,000,000 jobs (about half an hour on 2 cores)")
    parser.add_argument("--only", choices=["ingest", "listing", "remote"], action="append", help="run only these parts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.full:
        args.sites, args.jobs, args.rounds, args.listing = 100, 2500, 4, 1_000_000
    parts = set(args.only or ["ingest", "listing", "remote"])
    results: Dict[str, Any] = {"changes": args.sites * args.jobs * args.rounds, "load_average": os.getloadavg()}
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get("BALSAM_TEST_PG_URL") else [])
    with tempfile.TemporaryDirectory(prefix="balsam-bench-relay-") as tmp_text:
        tmp = Path(tmp_text)
        (tmp / "remote").mkdir()
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
        if "postgresql" not in kinds:
            print("postgresql skipped: BALSAM_TEST_PG_URL is not set (bash .ci/postgres.sh start)")
        if "ingest" in parts:
            print(f"sync ingest: {args.sites} sites x {args.jobs} jobs x {args.rounds} state changes = {results['changes']:,} changes, "
                  f"{args.clients} pushes at a time")
            for kind in kinds:
                raw = raw_executemany(kind, tmp, args)
                floor = raw_bulk(kind, tmp, args)
                direct = ingest_direct(kind, tmp, args)
                http, cpu_us = ingest_http(kind, tmp, args)
                results[kind] = {"raw_executemany_per_s": raw, "bulk_upsert_per_s": floor, "ingest_per_s": direct, "http_per_s": http,
                                 "http_relay_cpu_us_per_change": cpu_us}
                print(f"  {kind:10} raw executemany {raw:8,.0f}/s | bulk upsert alone {floor:8,.0f}/s ({floor / raw:.2f}x raw) | "
                      f"RelayStore.ingest {direct:8,.0f}/s ({direct / raw:.2f}x raw) | HTTP push {http:8,.0f}/s ({http / raw:.2f}x raw); "
                      f"relay process {cpu_us:.1f} us CPU per change ({1e6 / cpu_us:,.0f} changes per CPU second)", flush=True)
        if "listing" in parts and args.listing:
            for kind in kinds:
                lst = listing(kind, tmp, args.listing, args.repeat)
                results[f"listing_{kind}"] = lst
                print(f"listing on {kind} over {lst['jobs']:,} jobs of 100 sites (filled through ingest at {lst['fill_per_s']:,.0f}/s), "
                      f"{args.repeat} times each, p50 / p99 ms:")
                for name, v in lst.items():
                    if isinstance(v, dict) and "http" in v:
                        print(f"  {name:26} HTTP {v['http']['p50_ms']:7.1f} / {v['http']['p99_ms']:7.1f}    "
                              f"RelayBackend {v['backend']['p50_ms']:7.1f} / {v['backend']['p99_ms']:7.1f}", flush=True)
                old, new = lst["counts_group_by_baseline"], lst["counts by state"]["backend"]
                print(f"  counts by state before the count table (GROUP BY of the jobs): {old['p50_ms']:7.1f} / {old['p99_ms']:7.1f} ms; "
                      f"count table {new['p50_ms']:.1f} / {new['p99_ms']:.1f} ms ({old['p50_ms'] / max(new['p50_ms'], 1e-6):.0f}x faster "
                      "at p50)", flush=True)
        if "remote" in parts and args.remote:
            os.environ["BALSAM_HOME"] = str(tmp / "bench-home")
            lat = remote_latency(tmp, args.remote)
            for side in ("relay", "local"):
                for leg, name in enumerate(("", "_to_running", "_back")):
                    values = [x[leg] for x in lat[side]]
                    results[f"latency_{side}{name}"] = {"median_s": statistics.median(values), "p99_s": pct(values, 0.99)}
            r, loc = results["latency_relay"], results["latency_local"]
            up, back = results["latency_relay_to_running"], results["latency_relay_back"]
            print(f"remote work ({args.remote} jobs, created -> JOB_FINISHED visible): through the relay median {r['median_s']:.2f} s, "
                  f"p99 {r['p99_s']:.2f} s; on the site's host median {loc['median_s']:.2f} s, p99 {loc['p99_s']:.2f} s "
                  f"(relay/local median {r['median_s'] / max(loc['median_s'], 1e-9):.2f}x)")
            print(f"  each way through the relay: created on the laptop -> RUNNING at the site median {up['median_s']:.2f} s, "
                  f"p99 {up['p99_s']:.2f} s; JOB_FINISHED at the site -> visible on the laptop median {back['median_s']:.2f} s, "
                  f"p99 {back['p99_s']:.2f} s")
            first = lat["first"][0]
            results["latency_relay_first_job"] = first
            print(f"  the first job (not timed above: it waits for the launcher's start): {first[0]:.2f} s, of which created -> "
                  f"RUNNING {first[1]:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
