"""Benchmark: the relay's sync ingest, and the latency of remote work through the relay.

**Sync ingest.** ``--sites`` sites each push ``--jobs`` jobs through ``--rounds`` state changes (every change a
full job row, as the sync service sends them) to a real relay server over HTTP, ``--clients`` sites at a time,
in batches of 5,000 (the sync service's size). Measured: changes/s through HTTP and through ``RelayStore.ingest``
directly, against the floor: raw ``executemany`` upserts of the same rows into the same table, with no
validation, no idempotency record, no tags. On SQLite, and on PostgreSQL when ``BALSAM_TEST_PG_URL`` is set
(``bash .ci/postgres.sh start; export BALSAM_TEST_PG_URL=$(bash .ci/postgres.sh url)``).

**Remote work.** A real site (preset local) with its agent linked to the relay and a launcher running; jobs
created on a "laptop" (a process with no site, through the relay) until JOB_FINISHED is visible there; against
the same jobs created and watched on the site's own host (its SQLite DB), in the same run. Median and p99.

Usage::

    python bench/bench_relay.py [--sites 20] [--jobs 2500] [--rounds 4] [--clients 4] [--remote 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATES = ["STAGED_IN", "PREPROCESSED", "READY", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]


def job_items(site_id: int, jobs: int, state: str, now: float) -> List[Dict[str, Any]]:
    base = site_id << 32
    return [{"entity": "job", "op": "upsert", "id": base + i,
             "row": {"id": base + i, "app_id": base + 1, "workdir": f"runs/{i}", "state": state, "tags": '{"exp": "bench"}',
                     "parent_ids": "[]", "parameters": '{"x": 1}', "created": now, "last_update": now, "version": 1,
                     "num_nodes": 1, "ranks_per_node": 1, "data": "{}", "return_code": None}} for i in range(1, jobs + 1)]


def fresh_store(kind: str, tmp: Path) -> Any:
    from balsam.relay.store import RelayStore

    if kind == "sqlite":
        store = RelayStore(f"sqlite:///{tmp / 'relay-bench.db'}")
        Path(tmp / "relay-bench.db").unlink(missing_ok=True)
    else:
        import sqlalchemy as sa

        store = RelayStore(os.environ["BALSAM_TEST_PG_URL"])
        with store.begin() as c:
            c.execute(sa.text("DROP SCHEMA public CASCADE"))
            c.execute(sa.text("CREATE SCHEMA public"))
    store.migrate()
    return store


def ingest(kind: str, tmp: Path, args: argparse.Namespace, via_http: bool) -> float:
    """Changes/s of every site's pushes (HTTP or the store directly)."""
    from balsam.http.client import HttpClient
    from balsam.http.serve import ApiServer, ServeOptions
    from balsam.relay.server import build_relay_app
    from balsam.relay.store import Caller

    store = fresh_store(kind, tmp)
    uid = store.add_user("bench", "bench-password")
    user = Caller(user_id=uid, user="bench", kind="user")
    tokens = {s: store.link_site(user, s, f"site{s}") for s in range(1, args.sites + 1)}
    server = ApiServer(build_relay_app(store), ServeOptions(bind="127.0.0.1", port=0)).start() if via_http else None
    now = time.time()
    batch = 5000
    work = []
    for rnd in range(args.rounds):  # built before the clock starts: the sites' side is not what is measured
        for site in tokens:
            for start in range(0, args.jobs, batch):
                items = job_items(site, min(batch, args.jobs - start), STATES[rnd % len(STATES)], now)
                for it in items:
                    it["id"] += start
                    it["row"]["id"] = it["id"]
                work.append((site, rnd, start, items))
    lock = threading.Lock()
    done = [0]

    def worker() -> None:
        clients: Dict[int, Any] = {}
        while True:
            with lock:
                if not work:
                    return
                site, rnd, start, items = work.pop(0)
            sub = f"bench-{site}-{rnd}-{start}"
            if server is not None:
                client = clients.setdefault(site, HttpClient(url=f"http://127.0.0.1:{server.port}", token=tokens[site], retry_s=30))
                client.request("POST", "/v1/sync/push", {"submission_id": sub, "last_seq": rnd, "items": items})
            else:
                store.ingest(store.verify(tokens[site]), sub, rnd, items)  # type: ignore[arg-type]
            with lock:
                done[0] += len(items)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if server is not None:
        server.stop()
    with store.connect() as c:
        import sqlalchemy as sa

        from balsam.relay import schema as t_

        assert c.execute(sa.select(sa.func.count()).select_from(t_.job)).scalar_one() == args.sites * args.jobs
    store.close()
    return done[0] / elapsed


def raw_executemany(kind: str, tmp: Path, args: argparse.Namespace) -> float:
    """Changes/s of plain upserts of the same rows (built beforehand) into the same table: executemany of tuples."""
    from balsam.relay import mirror

    store = fresh_store(kind, tmp)
    now = time.time()
    batches = []
    for rnd in range(args.rounds):
        for site in range(1, args.sites + 1):
            for start in range(0, args.jobs, 5000):
                items = job_items(site, min(5000, args.jobs - start), STATES[rnd % len(STATES)], now)
                batches.append([mirror._typed("job", it["id"] + start, site, it["row"]) for it in items])
    columns = list(batches[0][0])
    t0 = time.perf_counter()
    for rows in batches:
        with store.begin() as c:
            c.exec_driver_sql(mirror.upsert_sql(c, mirror.t.job, columns), [tuple(r[k] for k in columns) for r in rows])
    elapsed = time.perf_counter() - t0
    store.close()
    return sum(len(b) for b in batches) / elapsed


# ------------------------------------------------------------------------------------------ remote latency
def sh(env: Dict[str, str], *args: str, stdin: str = "") -> str:
    out = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"{args}: {out.stderr.strip()}")
    return out.stdout


def remote_latency(tmp: Path, n: int) -> Dict[str, List[float]]:
    """Seconds from creation to JOB_FINISHED visible, through the relay and on the site's host."""
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
        "import json, sys, time\nfrom balsam.api import BatchJob, Job\n"
        "n, site = int(sys.argv[1]), sys.argv[2]\n"
        "if sys.argv[3] == 'batch':\n"
        "    BatchJob.objects.create(num_nodes=1, wall_time_min=30, job_mode='serial', queue='local', project='local')\n"
        "out = []\n"
        "for i in range(n):\n"
        "    t0 = time.time()\n"
        "    job = Job(workdir=f'{sys.argv[3]}/{i}', app_id='Echo', parameters={'x': str(i)}, site_name=site)\n"
        "    job.save()\n"
        "    while Job.objects.filter(id=[job.id], state='JOB_FINISHED').count() == 0:\n"
        "        time.sleep(0.05)\n"
        "    out.append(time.time() - t0)\n"
        "print(json.dumps(out))\n")
    try:
        remote = json.loads(sh(laptop, str(probe), str(n), "polaris", "batch").strip().splitlines()[-1])
        local = json.loads(sh(node, str(probe), str(n), str(root), "local").strip().splitlines()[-1])
    finally:
        subprocess.run([sys.executable, "-m", "balsam", "queue", "ls", "--site", str(root)], env=node, capture_output=True)
        subprocess.run([sys.executable, "-c", "from balsam.api import BatchJob\n"
                        f"[setattr(b, 'state', 'pending_deletion') or b.save() for b in BatchJob.objects.filter(site_path={str(root)!r}, "
                        "state=['pending_submission', 'queued', 'running'])]"], env=node, capture_output=True)
        subprocess.run([sys.executable, "-m", "balsam", "site", "stop", "--site", str(root)], env=node, capture_output=True)
        server.stop()
        store.close()
    return {"relay": remote, "local": local}


def pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2500, help="jobs per site")
    parser.add_argument("--rounds", type=int, default=4, help="state changes per job")
    parser.add_argument("--clients", type=int, default=4, help="sites pushing at once")
    parser.add_argument("--remote", type=int, default=20, help="remote jobs timed (0: skip)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: Dict[str, Any] = {"changes": args.sites * args.jobs * args.rounds}
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get("BALSAM_TEST_PG_URL") else [])
    with tempfile.TemporaryDirectory(prefix="balsam-bench-relay-") as tmp_text:
        tmp = Path(tmp_text)
        (tmp / "remote").mkdir()
        print(f"sync ingest: {args.sites} sites x {args.jobs} jobs x {args.rounds} state changes = {results['changes']:,} changes")
        for kind in kinds:
            raw = raw_executemany(kind, tmp, args)
            direct = ingest(kind, tmp, args, via_http=False)
            http = ingest(kind, tmp, args, via_http=True)
            results[kind] = {"raw_executemany_per_s": raw, "ingest_per_s": direct, "http_per_s": http}
            print(f"  {kind:10} raw executemany {raw:9,.0f}/s   RelayStore.ingest {direct:9,.0f}/s ({direct / raw:.2f}x raw)   "
                  f"HTTP push {http:9,.0f}/s ({http / raw:.2f}x raw)")
        if "postgresql" not in kinds:
            print("  postgresql skipped: BALSAM_TEST_PG_URL is not set (bash .ci/postgres.sh start)")
        if args.remote:
            os.environ["BALSAM_HOME"] = str(tmp / "bench-home")
            lat = remote_latency(tmp, args.remote)
            for side in ("relay", "local"):
                results[f"latency_{side}"] = {"median_s": statistics.median(lat[side]), "p99_s": pct(lat[side], 0.99)}
            r, loc = results["latency_relay"], results["latency_local"]
            print(f"remote work ({args.remote} jobs, created -> JOB_FINISHED visible): through the relay median {r['median_s']:.2f} s, "
                  f"p99 {r['p99_s']:.2f} s; on the site's host median {loc['median_s']:.2f} s, p99 {loc['p99_s']:.2f} s "
                  f"(relay/local median {r['median_s'] / max(loc['median_s'], 1e-9):.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
