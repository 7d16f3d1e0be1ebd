"""The /v1 HTTP API under load, every figure beside its baseline measured in the same run (ratios):

1. **Launchers through the API**: N no-op shell jobs run by a launcher on a "foreign" host (BALSAM_HOSTNAME
   differs, so it goes through the site agent's API) against the same launcher on the home host (SQLite
   directly) and ``xargs -P <cores>`` (aim: foreign / home >= 0.9).
2. **Simulated launchers**: 1, 16, 64 and 256 light launchers (open a lease, acquire, report RUNNING, then
   RUN_DONE with POSTPROCESSED as a real launcher does for an app without a postprocess hook, in status batches, no
   process spawned; each acquires up to a node's worth, the jobs' node_packing_count of 64, as a launcher with that
   many free slots does, and the jobs are enough for four such acquires each) against one agent serving from one
   process per core (``api.workers``): completed jobs/s and the p99 latency of acquire (aim on 2 cores: 10,000
   jobs/s at 256 and p99 under 200 ms).
3. **API reads on a big site**: a paged job listing (100 per page, cursor) and a filtered count (a tag and a
   state) on a site of M jobs, p50 and p99 over HTTP against the same query in-process.

    python bench/bench_http.py [--jobs 10000] [--sim-jobs N] [--big 1000000] [--parts 1,2,3]
    python bench/bench_http.py --against main   # part 2 before (main) and after (this tree), in one run
    BENCH_API_WORKERS=1 python bench/bench_http.py --parts 2   # the agent serving from one process (default: one per core)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
TREE = Path(os.environ.get("BALSAM_BENCH_TREE") or REPO)
"""The Balsam code measured (``--against`` points it at an older tree for the "before" runs)."""
sys.path.insert(0, str(TREE))

from balsam.api import ApplicationDefinition  # noqa: E402

FOREIGN = "compute-node-7"
PACK = 64
"""The jobs' node_packing_count: a launcher on one node runs this many at once, so it acquires up to this many."""


class Noop(ApplicationDefinition):
    """A no-op shell command."""

    site = None
    command_template = "true"


def _setup(root: Path, name: str) -> Any:
    os.environ["BALSAM_HOME"] = str(root / "home")
    from balsam._api import sites
    from balsam.site import init_site

    sites.reset()
    init_site(root / name, name=name)
    _serve_from(root / name, API_WORKERS)
    ref = sites.resolve(name)
    Noop.site = name
    Noop.__app_id__ = None
    Noop.sync()
    return ref


API_WORKERS = int(os.environ.get("BENCH_API_WORKERS") or os.cpu_count() or 1)
"""Processes serving the agent's API (``api.workers``; one per core, as a login node serving hundreds of launchers
would set it). Code from before the setting existed serves from one process."""


def _api_processes() -> int:
    """How many processes the measured Balsam's agent serves its API from here."""
    from balsam.settings import ApiSettings

    return API_WORKERS if hasattr(ApiSettings(), "workers") else 1


def _serve_from(site: Path, workers: int) -> None:
    """Set ``api.workers`` in the site's settings.yml, where this Balsam has the setting."""
    import yaml

    if workers <= 1 or _api_processes() <= 1:
        return
    path = site / "settings.yml"
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("api", {})["workers"] = workers
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _runnable(ref: Any, n: int, prefix: str, tags: Any = None) -> List[int]:
    from balsam.api import Job
    from balsam.db.jobs import StateChange, apply_state_changes

    jobs = Job.objects.bulk_create([Job(f"{prefix}/{i:07d}", app_id=Noop, node_packing_count=PACK, tags=tags(i) if tags else None)
                                    for i in range(n)])
    ids = [int(j.id) for j in jobs]
    for start in range(0, len(ids), 100_000):
        with ref.store.write() as conn:
            apply_state_changes(conn, [StateChange(i, "PREPROCESSED") for i in ids[start : start + 100_000]], strict=False)
    return ids


def _done(ref: Any, ids: List[int]) -> int:
    """How many of the jobs ran (the agent may have moved them on since)."""
    return int(ref.store.execute("SELECT count(DISTINCT job_id) FROM event WHERE job_id BETWEEN ? AND ? AND to_state = 'RUN_DONE'",
                                 (min(ids), max(ids)))[0][0])


def pipeline(ref: Any, n: int, prefix: str, host: str) -> float:
    """Jobs/s from launcher start until every job ran, with the launcher on ``host``."""
    ids = _runnable(ref, n, prefix)
    env = dict(os.environ, PYTHONPATH=str(REPO), BALSAM_HOSTNAME=host)
    argv = [sys.executable, "-m", "balsam.launcher", "--site", str(ref.path), "-j", "mpi", "-t", "30", "--idle-ttl", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while _done(ref, ids) < n:
        if proc.poll() is not None:
            raise SystemExit(f"the launcher on {host} exited early ({proc.returncode}); see {ref.path}/log")
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    proc.wait()
    return n / elapsed


def xargs(ref: Any, n: int, cores: int, prefix: str) -> float:
    dirs = [str(ref.path / "data" / prefix / f"{i:07d}") for i in range(n)]
    t0 = time.perf_counter()
    subprocess.run(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", 'cd "$1" && true > job.out 2>&1', "sh"],
                   input="\n".join(dirs) + "\n", text=True, check=True, stdout=subprocess.DEVNULL)
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ simulated launchers
def _simulated(site_path: str, launchers: int, batch: int, out_q: Any, go: Any = None) -> None:
    """One process running ``launchers`` light launchers on threads (a real launcher is one process each; a
    process per simulated one would measure fork, not the API). With ``go`` (an Event), it says it is ready once
    Balsam is imported and waits for ``go``: starting Python and importing is not launcher work. It reports
    (jobs done, acquire latencies, CPU seconds of this process from ``go`` on)."""
    os.environ["BALSAM_HOSTNAME"] = FOREIGN
    from balsam.db.jobs import StateChange
    from balsam.http.client import HttpBackend

    backend = HttpBackend.for_site(Path(site_path), retry_s=120)
    if go is not None:
        out_q.put(("ready", os.getpid()))
        go.wait()
    cpu0 = time.process_time()
    lat: List[float] = []
    done = [0]
    lock = threading.Lock()

    def one() -> None:
        sid = backend.create_session(host=FOREIGN, pid=os.getpid(), batch_job_id=None, label="sim")
        mine = 0
        my_lat = []
        try:
            while True:
                t0 = time.perf_counter()
                jobs = backend.acquire(sid, batch)
                my_lat.append(time.perf_counter() - t0)
                if not jobs:
                    break
                now = time.time()
                backend.apply_changes([StateChange(j["id"], "RUNNING", now, session_id=sid) for j in jobs])
                # As a real launcher reports a clean run of an app without a postprocess hook (Reporter.finished):
                # RUN_DONE and then POSTPROCESSED in one status batch.
                backend.apply_changes([c for j in jobs for c in (
                    StateChange(j["id"], "RUN_DONE", now, {"returncode": 0}, {"return_code": 0}, sid),
                    StateChange(j["id"], "POSTPROCESSED", now, {"message": "no postprocess hook: moved on by the launcher"}, None, sid))])
                mine += len(jobs)
        finally:
            backend.release(sid)
        with lock:
            done[0] += mine
            lat.extend(my_lat)

    with ThreadPoolExecutor(max_workers=launchers) as pool:
        for f in [pool.submit(one) for _ in range(launchers)]:
            f.result()
    out_q.put((done[0], lat, time.process_time() - cpu0))


def _agent_cpu_s(ref: Any) -> float:
    """CPU seconds (user + system) the site agent's process and its child processes (the extra API server
    processes, hook workers) have used so far (0 where /proc is absent)."""
    try:
        pid = int((ref.path / ".balsam" / "agent.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _batch(total: int, launchers: int) -> int:
    """Jobs per acquire: a node's worth (PACK, as a launcher with that many free slots asks for), fewer when
    ``total`` is too small for every launcher to come back at least four times."""
    return max(8, min(PACK, total // (launchers * 4) or 8))


def sim_jobs(launchers: int, given: int) -> int:
    """Jobs for a run of ``launchers``: ``given``, or (0) enough for four node-sized acquires each, 20,000 at least."""
    return given or max(20_000, launchers * PACK * 4)


def simulate(ref: Any, total: int, launchers: int, prefix: str) -> Tuple[float, float, float, float]:
    """(completed jobs/s, p99 acquire seconds, the agent's and the launchers' CPU microseconds per job) for
    ``launchers`` simulated launchers sharing ``total`` jobs. CPU per job is what a loaded machine cannot blur."""
    import multiprocessing as mp

    ids = _runnable(ref, total, prefix)
    procs_n = min(4, launchers)
    per = [launchers // procs_n + (1 if i < launchers % procs_n else 0) for i in range(procs_n)]
    batch = _batch(total, launchers)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=_simulated, args=(str(ref.path), k, batch, q, go)) for k in per]
    for p in procs:
        p.start()
    for _ in procs:  # each has started Python and imported Balsam (not what is measured)
        q.get()
    cpu0 = _agent_cpu_s(ref)
    t0 = time.perf_counter()
    go.set()
    if os.environ.get("BENCH_GO_FILE"):  # for a profiler: the measured part starts now
        Path(os.environ["BENCH_GO_FILE"]).touch()
    results = [q.get() for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    agent_us = (_agent_cpu_s(ref) - cpu0) * 1e6 / total
    launchers_us = sum(r[2] for r in results) * 1e6 / total
    done = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])
    if done != total or _done(ref, ids) != total:
        raise SystemExit(f"simulated launchers finished {done} of {total} jobs ({_done(ref, ids)} have a RUN_DONE event)")
    return done / elapsed, lat[min(len(lat) - 1, int(0.99 * (len(lat) - 1)))], agent_us, launchers_us


# ------------------------------------------------------------------------------------------ reads on a big site
def _percentiles(samples: List[float]) -> Tuple[float, float]:
    if not samples:
        return 0.0, 0.0
    s = sorted(samples)
    return statistics.median(s), s[min(len(s) - 1, int(0.99 * (len(s) - 1)))]


def reads(ref: Any, big: int, rounds: int) -> Dict[str, Tuple[float, float]]:
    """p50/p99 seconds of a paged listing and a filtered count, over HTTP and in-process."""
    from balsam.db.backend import LocalBackend
    from balsam.http.client import HttpClient

    ids = _runnable(ref, big, "big", tags=lambda i: {"exp": str(i % 100)})
    with ref.store.write() as conn:  # a realistic mix of states
        conn.execute("UPDATE job SET state='JOB_FINISHED' WHERE id BETWEEN ? AND ? AND id % 3 = 0", (min(ids), max(ids)))
    local = LocalBackend(ref.store)
    client = HttpClient(ref.path / ".balsam")
    out: Dict[str, List[float]] = {"page http": [], "page local": [], "count http": [], "count local": [], "deep http": [],
                                   "first http": []}
    from balsam.http.schemas import COLUMNS

    deep = None  # a cursor ~90% of the way through the listing (walked to with the biggest pages)
    cursor_walk: Any = None
    walked = 0
    target_rows = int(0.9 * local.count("job", {"state": ["PREPROCESSED"]}))
    while walked < target_rows:
        page = client.request("GET", "/v1/jobs?state=PREPROCESSED&limit=10000" + (f"&cursor={cursor_walk}" if cursor_walk else ""))
        walked += len(page["results"])
        cursor_walk = page["next_cursor"]
        if cursor_walk is None:
            break
        deep = cursor_walk
    for _ in range(rounds * 3 if deep else 0):
        for name, target in (("first http", "/v1/jobs?state=PREPROCESSED&limit=100"),
                             ("deep http", f"/v1/jobs?state=PREPROCESSED&limit=100&cursor={deep}")):
            t0 = time.perf_counter()
            client.request("GET", target)
            out[name].append(time.perf_counter() - t0)

    for r in range(rounds):
        cursor = None
        offset = 0
        for _ in range(10):
            target = "/v1/jobs?state=PREPROCESSED&limit=100" + (f"&cursor={cursor}" if cursor else "")
            t0 = time.perf_counter()
            page = client.request("GET", target)
            out["page http"].append(time.perf_counter() - t0)
            cursor = page["next_cursor"]
            t0 = time.perf_counter()
            local.select("job", {"state": ["PREPROCESSED"]}, columns=COLUMNS["job"], limit=101, offset=offset)
            out["page local"].append(time.perf_counter() - t0)
            offset += 100
        exp = str(r % 100)
        t0 = time.perf_counter()
        n_http = client.request("GET", f"/v1/jobs/count?tags=exp:{exp}&state=JOB_FINISHED")["count"]
        out["count http"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n_local = local.count("job", {"tags": {"exp": exp}, "state": ["JOB_FINISHED"]})
        out["count local"].append(time.perf_counter() - t0)
        assert n_http == n_local
    return {k: _percentiles(v) for k, v in out.items()}


_SIM_LINE = re.compile(r"^\s*(\d+) launchers:\s+([\d.]+) jobs/s, p99 acquire\s+([\d.]+) ms(?:, CPU per job: agent\s+(\d+) us)?", re.M)


def against(ref: str, launchers: List[int], sim_jobs: int, rounds: int) -> None:
    """Part 2 for git ``ref`` (the code before a change) and for this tree, alternating in one run (each in a fresh
    process with a fresh site and agent): the same load meets both, whatever else the machine is doing."""
    from _tree import git_tree  # bench/_tree.py, beside this script

    with git_tree(ref) as tmp:
        trees = {"before": tmp, "after": REPO}
        print(f"2. simulated launchers, {ref} (before) against this tree (after), alternating, {sim_jobs or 'per size'} jobs each:", flush=True)
        for k in launchers:
            got: Dict[str, List[Tuple[float, float]]] = {"before": [], "after": []}
            for _ in range(rounds):
                for name, tree in trees.items():  # this script either way; the Balsam it imports (agent, launchers) differs
                    argv = [sys.executable, str(Path(__file__).resolve()), "--parts", "2", "--launchers", str(k), "--sim-jobs", str(sim_jobs)]
                    env = dict(os.environ, PYTHONPATH=str(tree), BALSAM_BENCH_TREE=str(tree))
                    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=str(tree))
                    m = _SIM_LINE.search(out.stdout)
                    if m is None:
                        raise SystemExit(f"the {name} run failed:\n{out.stdout}\n{out.stderr[-2000:]}")
                    cpu = float(m.group(4) or 0)
                    got[name].append((float(m.group(2)), float(m.group(3)), cpu))
            b_rate, b_p99, b_cpu = (statistics.median(r[i] for r in got["before"]) for i in range(3))
            a_rate, a_p99, a_cpu = (statistics.median(r[i] for r in got["after"]) for i in range(3))
            cpu_text = f", agent CPU/job {b_cpu:.0f} -> {a_cpu:.0f} us (x{a_cpu / b_cpu:.2f})" if b_cpu and a_cpu else ""
            print(f"   {k:4d} launchers: before {b_rate:7.0f} jobs/s p99 {b_p99:7.1f} ms | after {a_rate:7.0f} jobs/s p99 {a_p99:7.1f} ms"
                  f" | throughput x{a_rate / b_rate:.2f}, p99 x{a_p99 / b_p99:.2f}{cpu_text}  (load average {os.getloadavg()[0]:.1f})",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the launcher pipeline")
    parser.add_argument("--sim-jobs", type=int, default=0,
                        help="jobs shared by the simulated launchers, per size (default: four node-sized acquires each, 20,000 at least)")
    parser.add_argument("--launchers", default="1,16,64,256")
    parser.add_argument("--big", type=int, default=1_000_000, help="jobs on the big site for the read benchmark")
    parser.add_argument("--reads", type=int, default=30, help="rounds of reads (10 pages and one count each)")
    parser.add_argument("--parts", default="1,2,3", help="which measurements to run (1: launcher pipeline, 2: simulated, 3: reads)")
    parser.add_argument("--against", default="", help="a git ref: part 2 for that code and this tree, alternating")
    parser.add_argument("--rounds", type=int, default=1, help="with --against: runs of each (the median is shown)")
    args = parser.parse_args()
    if args.against:
        against(args.against, [int(x) for x in args.launchers.split(",")], args.sim_jobs, args.rounds)
        return
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="balsam-bench-http-"))
    from balsam.services.agent import start_agent, stop_agent

    try:
        ref = _setup(tmp, "bench")
        start_agent(ref.path)
        if os.environ.get("BENCH_AGENT_PID_FILE"):  # for a profiler: the agent's pid
            Path(os.environ["BENCH_AGENT_PID_FILE"]).write_text((ref.path / ".balsam" / "agent.pid").read_text())
        try:
            processes = _api_processes()
            print(f"{cores} cores; the site agent serves {ref.path} from {processes} API process(es)", flush=True)
            parts = set(args.parts.split(","))
            if "1" in parts:
                home = pipeline(ref, args.jobs, "home", "")
                foreign = pipeline(ref, args.jobs, "foreign", FOREIGN)
                base = xargs(ref, args.jobs, cores, "home")
                print(f"1. {args.jobs} no-op jobs: launcher on the home host {home:.0f} jobs/s, on a foreign host through the API "
                      f"{foreign:.0f} jobs/s, xargs -P {cores} {base:.0f} jobs/s")
                print(f"   ratios: foreign/home = {foreign / home:.2f} (aim >= 0.9), foreign/xargs = {foreign / base:.2f}, "
                      f"home/xargs = {home / base:.2f}", flush=True)
            if "2" in parts:
                print("2. simulated launchers against one agent:")
                for n, k in enumerate(int(x) for x in args.launchers.split(",")):
                    total = sim_jobs(k, args.sim_jobs)
                    rate, p99, agent_us, launchers_us = simulate(ref, total, k, f"sim{k}-{n}")
                    print(f"   {k:4d} launchers: {rate:8.0f} jobs/s, p99 acquire {p99 * 1000:7.1f} ms, CPU per job: agent {agent_us:5.0f} us, "
                          f"launchers {launchers_us:5.0f} us (load average {os.getloadavg()[0]:.1f}; {total} jobs, "
                          f"{_batch(total, k)} per acquire)", flush=True)
            if args.big and "3" in parts:
                big = _setup(tmp, "big")
                stop_agent(ref.path)
                start_agent(big.path)
                t0 = time.perf_counter()
                res = reads(big, args.big, args.reads)
                print(f"3. reads on a {args.big}-job site (built in {time.perf_counter() - t0:.0f} s), p50 / p99:")
                for what in ("page", "count"):
                    (hp50, hp99), (lp50, lp99) = res[f"{what} http"], res[f"{what} local"]
                    print(f"   {what:5s}: HTTP {hp50 * 1000:6.1f} / {hp99 * 1000:6.1f} ms, in-process {lp50 * 1000:6.1f} / "
                          f"{lp99 * 1000:6.1f} ms; ratio p50 {hp50 / lp50:.2f}, p99 {hp99 / lp99:.2f}")
                if res["deep http"][0]:
                    (d50, d99), (f50, f99) = res["deep http"], res["first http"]
                    print(f"   a page 90% deep (keyset cursor) against the first page, over HTTP: {d50 * 1000:.1f} / {d99 * 1000:.1f} ms vs "
                          f"{f50 * 1000:.1f} / {f99 * 1000:.1f} ms; ratio p50 {d50 / f50:.2f}, p99 {d99 / f99:.2f}")
                stop_agent(big.path)
        finally:
            stop_agent(ref.path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
