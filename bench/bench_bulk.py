"""Bulk writes from another host, each figure beside its baselines measured in the same run (ratios):

1. **Bulk create** of N jobs (each size of ``--sizes``) with ``Job.objects.bulk_create`` from a "foreign" host
   (BALSAM_HOSTNAME differs, so it goes through the site agent's API; more than 5,000 jobs go in staged parts
   committed in one transaction, all or nothing) against the same on the home host (one SQLite transaction).
   With ``--before``, also the jobs sent as independent requests of 5,000 (what a foreign bulk_create did before
   the staged parts: each its own transaction).
2. **Query delete** of those N jobs from the foreign host (one request) against the home host.
3. With ``--reads``: the home host's N jobs read from each host: a query iterated over every job, a filtered count,
   and ``balsam job ls`` (a new process), foreign as a fraction of the home host's speed.

Rounds alternate the ways, so the machine's drift hits each alike; the median of each is shown. ``--against REV``
runs this script for that git revision's code and for this tree, alternating, and prints foreign/home for each
(the before and after of a change, in one run).

    python bench/bench_bulk.py [--sizes 1000,10000,100000] [--rounds 3] [--before] [--reads] [--against main]
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
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("BALSAM_BENCH_TREE") or str(REPO))  # --against: the Balsam of the tree measured

FOREIGN = "login-2"
STAGED = "create: foreign (staged parts, one transaction)"
CHUNKED = "create: foreign, independent 5,000-job requests (before)"
HOME = "create: home host, one transaction"


def _jobs(n: int, prefix: str) -> List[Any]:
    from balsam.api import Job

    return [Job(f"{prefix}/{i:07d}", app_id="Hello", parameters={"say_hello_to": str(i)}, tags={"round": prefix}) for i in range(n)]


def _as(host: str) -> None:
    """This process on the home host ("") or on another one (the API goes through the agent)."""
    from balsam._api import sites
    from balsam._api.jobs import invalidate_app_cache

    if host:
        os.environ["BALSAM_HOSTNAME"] = host
    else:
        os.environ.pop("BALSAM_HOSTNAME", None)
    sites.reset()
    invalidate_app_cache()


def create_staged(n: int, prefix: str) -> float:
    from balsam.api import Job

    _as(FOREIGN)
    jobs = _jobs(n, prefix)
    t0 = time.perf_counter()
    Job.objects.bulk_create(jobs)
    return n / (time.perf_counter() - t0)


def create_chunked(n: int, prefix: str) -> float:
    """The jobs as independent POST /v1/jobs requests of CREATE_CHUNK (each its own transaction at the site)."""
    import balsam.http.client as client
    from balsam._api import sites
    from balsam.api import Job

    _as(FOREIGN)
    jobs = _jobs(n, prefix)
    backend = sites.resolve("bench").backend
    saved = client.CREATE_CHUNK
    client.CREATE_CHUNK = 10**9  # one create_jobs call per chunk below: the requests the old client sent
    try:
        t0 = time.perf_counter()
        for start in range(0, n, saved):
            Job.objects.bulk_create(jobs[start:start + saved])
        elapsed = time.perf_counter() - t0
    finally:
        client.CREATE_CHUNK = saved
    assert backend.kind == "http"
    return n / elapsed


def create_home(n: int, prefix: str) -> float:
    from balsam.api import Job

    _as("")
    jobs = _jobs(n, prefix)
    t0 = time.perf_counter()
    Job.objects.bulk_create(jobs)
    return n / (time.perf_counter() - t0)


def delete(host: str, n: int, prefix: str) -> float:
    from balsam.api import Job

    _as(host)
    t0 = time.perf_counter()
    deleted = Job.objects.filter(tags={"round": prefix}).delete()
    elapsed = time.perf_counter() - t0
    assert deleted == n, (deleted, n)
    return n / elapsed


def reads(host: str, n: int, prefix: str, site: Path) -> Dict[str, float]:
    """Seconds to read the ``n`` jobs of ``prefix`` from ``host``: every job through a query's iteration, a filtered
    count, and ``balsam job ls`` (a new process: the first 100 jobs and the count of the rest)."""
    from balsam.api import Job

    _as(host)
    out: Dict[str, float] = {}
    t0 = time.perf_counter()
    got = sum(1 for _ in Job.objects.filter(tags={"round": prefix}))
    out["read: iterate every job"] = time.perf_counter() - t0
    assert got == n, (got, n)
    t0 = time.perf_counter()
    assert Job.objects.filter(tags={"round": prefix}).count() == n
    out["read: count"] = time.perf_counter() - t0
    env = dict(os.environ, BALSAM_SITE_PATH=str(site), PYTHONPATH=os.environ.get("BALSAM_BENCH_TREE") or str(REPO))
    t0 = time.perf_counter()
    ls = subprocess.run([sys.executable, "-m", "balsam", "job", "ls", "--tag", f"round={prefix}"], env=env, capture_output=True, text=True)
    out["read: balsam job ls (a new process)"] = time.perf_counter() - t0
    assert ls.returncode == 0, ls.stderr
    return out


def run(sizes: List[int], rounds: int, before: bool, with_reads: bool = False) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    os.environ["BALSAM_HOME"] = str(root / "home")
    from balsam._api import sites
    from balsam.api import ApplicationDefinition
    from balsam.services.agent import start_agent, stop_agent
    from balsam.site import init_site

    init_site(root / "bench", name="bench")
    sites.reset()

    class Hello(ApplicationDefinition):
        site = "bench"
        command_template = "echo Hello, {{ say_hello_to }}!"

    Hello.sync()
    start_agent(root / "bench")
    ways: Dict[str, Callable[[int, str], float]] = {STAGED: create_staged, HOME: create_home}
    if before:
        ways[CHUNKED] = create_chunked
    try:
        for n in sizes:
            results: Dict[str, List[float]] = {}
            spent: Dict[Tuple[str, bool], List[float]] = {}
            for r in range(rounds):
                for k, (name, way) in enumerate(ways.items()):
                    prefix = f"n{n}r{r}w{k}"
                    results.setdefault(name, []).append(way(n, prefix))
                    if with_reads and name == HOME:
                        for host in (FOREIGN, "") if r % 2 == 0 else ("", FOREIGN):
                            for what, seconds in reads(host, n, prefix, root / "bench").items():
                                spent.setdefault((what, bool(host)), []).append(seconds)
                    host = FOREIGN if name != HOME else ""
                    results.setdefault(f"delete: {'foreign' if host else 'home host'}", []).append(delete(host, n, prefix))
            print(f"{n} jobs, {rounds} rounds, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            med = {name: statistics.median(v) for name, v in results.items()}
            for name, value in med.items():
                base = med[HOME] if name.startswith("create") else med["delete: home host"]
                print(f"  {name:58s} {value:10,.0f} jobs/s  {value / base:5.2f}x home host", flush=True)
            if before:
                print(f"  staged / independent requests: {med[STAGED] / med[CHUNKED]:.2f}x", flush=True)
            for what in dict.fromkeys(w for w, _ in spent):
                f, h = statistics.median(spent[(what, True)]), statistics.median(spent[(what, False)])
                print(f"  {what:42s} foreign {f * 1000:8.1f} ms, home host {h * 1000:8.1f} ms: {h / f:5.2f}x home host's speed", flush=True)
    finally:
        _as("")
        stop_agent(root / "bench")
        shutil.rmtree(root, ignore_errors=True)


_LINE = re.compile(r"^(\d+) jobs.*\n(?:.*\n)*?\s+create: foreign \(staged.*?([\d,]+) jobs/s\s+([\d.]+)x home host", re.M)


_READ = re.compile(r"^\s+(read: .*?)\s+foreign\s+[\d.]+ ms, home host\s+[\d.]+ ms:\s+([\d.]+)x", re.M)


def against(ref: str, sizes: List[int], rounds: int, with_reads: bool = False) -> None:
    """This script for git ``ref``'s code (before) and for this tree (after), alternating, each in a fresh process
    with a fresh site and agent; foreign/home of each, and after/before."""
    from _tree import git_tree  # bench/_tree.py, beside this script

    with git_tree(ref) as tmp:
        trees = {"before": tmp, "after": REPO}
        print(f"bulk_create from another host, {ref} (before) against this tree (after), alternating, {rounds} rounds:", flush=True)
        for n in sizes:
            got: Dict[str, List[float]] = {"before": [], "after": []}
            rate: Dict[str, List[float]] = {"before": [], "after": []}
            read: Dict[Tuple[str, str], List[float]] = {}
            for _ in range(rounds):
                for name, tree in trees.items():  # this script either way; the Balsam it imports (client, agent) differs
                    argv = [sys.executable, str(Path(__file__).resolve()), "--sizes", str(n), "--rounds", "1", *(["--reads"] if with_reads else [])]
                    env = dict(os.environ, PYTHONPATH=str(tree), BALSAM_BENCH_TREE=str(tree))
                    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=str(tree))
                    m = _LINE.search(out.stdout)
                    if m is None:
                        raise SystemExit(f"the {name} run failed:\n{out.stdout}\n{out.stderr[-2000:]}")
                    rate[name].append(float(m.group(2).replace(",", "")))
                    got[name].append(float(m.group(3)))
                    for what, ratio in _READ.findall(out.stdout):
                        read.setdefault((what, name), []).append(float(ratio))
            b, a = statistics.median(got["before"]), statistics.median(got["after"])
            br, ar = statistics.median(rate["before"]), statistics.median(rate["after"])
            print(f"  {n:7d} jobs: foreign/home before {b:.2f}x ({br:,.0f} jobs/s), after {a:.2f}x ({ar:,.0f} jobs/s); "
                  f"foreign after/before x{ar / br:.2f}  (load average {os.getloadavg()[0]:.1f})", flush=True)
            for what in dict.fromkeys(w for w, _ in read):
                print(f"      {what}: foreign at {statistics.median(read[(what, 'before')]):.2f}x the home host's speed before, "
                      f"{statistics.median(read[(what, 'after')]):.2f}x after", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="numbers of jobs, comma-separated")
    parser.add_argument("--jobs", type=int, default=0, help="one size (overrides --sizes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", action="store_true", help="also the independent 5,000-job requests of before the staged parts")
    parser.add_argument("--against", default="", help="a git ref: this benchmark for that code and this tree, alternating")
    parser.add_argument("--reads", action="store_true", help="also read the home host's jobs from each host: iterate, count, balsam job ls")
    args = parser.parse_args()
    sizes = [args.jobs] if args.jobs else [int(x) for x in args.sizes.split(",")]
    if args.against:
        against(args.against, sizes, args.rounds, args.reads)
    else:
        run(sizes, args.rounds, args.before, args.reads)


if __name__ == "__main__":
    main()
