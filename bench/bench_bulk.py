"""Bulk writes from another host, each figure beside its baselines measured in the same run (ratios):

1. **Bulk create** of N jobs with ``Job.objects.bulk_create`` from a "foreign" host (BALSAM_HOSTNAME differs, so it
   goes through the site agent's API): in staged parts committed in one transaction (all or nothing), against the
   same jobs sent as independent requests of 5,000 (what a foreign bulk_create did before: each its own
   transaction) and against the home host's one SQLite transaction.
2. **Query delete** of those N jobs from the foreign host (one request) against the home host.

Rounds alternate the ways, so the machine's drift hits each alike; the median of each is shown.

    python bench/bench_bulk.py [--jobs 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FOREIGN = "login-2"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
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
    results: Dict[str, List[float]] = {}
    ways: Dict[str, Callable[[int, str], float]] = {"create: foreign, staged parts, one transaction": create_staged,
                                                     "create: foreign, independent 5,000-job requests (before)": create_chunked,
                                                     "create: home host, one transaction": create_home}
    try:
        n = args.jobs
        for r in range(args.rounds):
            for k, (name, way) in enumerate(ways.items()):
                prefix = f"r{r}w{k}"
                results.setdefault(name, []).append(way(n, prefix))
                host = FOREIGN if k % 2 == 0 else ""
                results.setdefault(f"delete: {'foreign' if host else 'home host'}", []).append(delete(host, n, prefix))
    finally:
        _as("")
        stop_agent(root / "bench")
    print(f"{args.jobs} jobs, {args.rounds} rounds, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = {name: statistics.median(v) for name, v in results.items()}
    home = med["create: home host, one transaction"]
    for name, value in med.items():
        base = home if name.startswith("create") else med["delete: home host"]
        print(f"  {name:58s} {value:10,.0f} jobs/s  {value / base:5.2f}x home host")
    staged, chunked = med["create: foreign, staged parts, one transaction"], med["create: foreign, independent 5,000-job requests (before)"]
    print(f"  staged / independent requests: {staged / chunked:.2f}x")


if __name__ == "__main__":
    main()
