"""Whole-pipeline benchmark: the site agent plus a ``balsam launcher`` process, from job creation to JOB_FINISHED.

N no-op shell jobs are created STAGED_IN while the real site agent runs (processing, scheduler, every service)
and a ``balsam launcher -j <mode>`` process idles; the clock stops when all N are JOB_FINISHED. Jobs use
``node_packing_count=<cores>`` and one CPU each, so at most <cores> run at once. Each mode is compared, in the
same run (the machine is noisy: only ratios are meaningful), with:

- ``xargs -P <cores>`` doing the same work: making each job's directory and writing its output
  (``mkdir -p DIR && cd DIR && true > job.out``);
- the pure spawn floor: ``xargs -P <cores>`` running ``sh -c 'cd DIR && true > job.out'`` in directories made
  beforehand.

Then the claim-to-start latency with the agent running: a job made runnable while an mpi-mode launcher idles,
until its RUNNING event, p50 and p99. The printed figures do not depend on the core count (``--cores``).

    python bench/bench_pipeline.py [--jobs 5000] [--cores N] [--rounds 2] [--latency 50] [--modes mpi,serial]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_launcher import REPO, Noop, _setup, latency, run_baseline  # noqa: E402

SAME_WORK = 'mkdir -p "$1" && cd "$1" && true > job.out 2>&1'
FLOOR = 'cd "$1" && true > job.out'


def _cli_launcher(ref: Any, mode: str, idle_ttl: float) -> "subprocess.Popen[bytes]":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "balsam", "launcher", "--site", str(ref.path), "-j", mode, "-t", "60", "--idle-ttl", str(idle_ttl)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _py_spy(pid: int, out: Path) -> "subprocess.Popen[bytes]":
    """py-spy sampling ``pid`` (all threads, idle included) into collapsed stacks at ``out``."""
    return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--threads",
                             "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top_functions(raw: Path, k: int = 12) -> List[str]:
    """The ``k`` functions with the most samples on the stack (inclusive) and at its top (self), from py-spy raw output."""
    incl: Dict[str, int] = {}
    own: Dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for f in set(frames):
            incl[f] = incl.get(f, 0) + int(count)
    out = [f"{total} samples"]
    out += [f"  self {100 * c / total:5.1f}%  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:k]]
    out += [f"  incl {100 * c / total:5.1f}%  {f}" for f, c in sorted(incl.items(), key=lambda x: -x[1])[:k]]
    return out


def run_pipeline(ref: Any, n: int, mode: str, cores: int, prefix: str, profile: Optional[Path] = None,
                 agent_pid: int = 0) -> float:
    """Jobs per second from creation until every job is JOB_FINISHED, through the agent and a CLI launcher."""
    from balsam.api import Job

    proc = _cli_launcher(ref, mode, idle_ttl=600.0)
    spies: List["subprocess.Popen[bytes]"] = []
    try:
        time.sleep(1.5)  # the launcher is up and idling, as in a running allocation
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            spies = [_py_spy(proc.pid, profile / f"launcher-{prefix}.txt"), _py_spy(agent_pid, profile / f"agent-{prefix}.txt")]
            time.sleep(1.0)
        t0 = time.perf_counter()
        jobs = Job.objects.bulk_create([Job(f"{prefix}/{i:06d}", app_id=Noop, node_packing_count=cores) for i in range(n)])
        lo, hi = int(jobs[0].id), int(jobs[-1].id)
        while True:
            done = ref.store.execute("SELECT count(*) FROM job WHERE id BETWEEN ? AND ? AND state='JOB_FINISHED'", (lo, hi))[0][0]
            if done == n:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the launcher exited early ({proc.returncode}) with {done}/{n} jobs finished; see {ref.path}/log")
            if time.perf_counter() - t0 > 900:
                raise SystemExit(f"only {done}/{n} jobs finished in 15 minutes; see {ref.path}/log")
            time.sleep(0.02)
        return n / (time.perf_counter() - t0)
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="jobs at once (default: os.cpu_count())")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is reported")
    parser.add_argument("--latency", type=int, default=50, help="jobs in the claim-to-start measurement (0: skip)")
    parser.add_argument("--modes", default="mpi,serial")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="also sample the agent and the launcher with py-spy (slows both) into DIR, and print their top functions")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.jobs < 1 or args.cores < 1 or not modes or set(modes) - {"mpi", "serial"}:
        raise SystemExit("--jobs and --cores must be >= 1 and --modes a list of mpi, serial")
    from balsam.services.agent import start_agent, stop_agent

    cores = args.cores
    tmp = Path(tempfile.mkdtemp(prefix="balsam-bench-pipeline-"))
    runs: Dict[str, List[float]] = {}

    def record(name: str, rate: float) -> None:
        runs.setdefault(name, []).append(rate)
        print(f"  {name:28s} {rate:8.0f} jobs/s", flush=True)

    try:
        ref = _setup(tmp, "bench")
        agent_pid = start_agent(ref.path)
        if args.py_spy is not None and not shutil.which("py-spy"):
            raise SystemExit("--py-spy: py-spy is not installed (pip install py-spy)")
        print(f"{cores} cores, {args.jobs} no-op jobs per case, {args.rounds} rounds; site {ref.path}", flush=True)
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            for mode in modes:
                record(f"pipeline {mode}", run_pipeline(ref, args.jobs, mode, cores, f"{mode}{r}", args.py_spy, agent_pid))
            fresh = [str(tmp / "xargs" / f"{r}" / f"{i:06d}") for i in range(args.jobs)]
            record("xargs same work", run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", SAME_WORK, "sh"], fresh))
            made = [str(ref.path / "data" / f"{modes[0]}{r}" / f"{i:06d}") for i in range(args.jobs)]
            record("xargs spawn floor", run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", FLOOR, "sh"], made))
        if args.py_spy is not None:
            for raw in sorted(args.py_spy.glob("*.txt")):
                print(f"\n{raw.name}: " + "\n".join(top_functions(raw)))
        lat = sorted(latency(ref, args.latency)) if args.latency > 0 else []
        stop_agent(ref.path)
        best = {k: max(v) for k, v in runs.items()}
        print("\nratios (same run, best of each):")
        for mode in modes:
            rate = best[f"pipeline {mode}"]
            print(f"  pipeline {mode:6s} / xargs same work = {rate / best['xargs same work']:.2f} (aim >= 0.9 on 2 cores, 0.8 on 16)"
                  f"   / spawn floor = {rate / best['xargs spawn floor']:.2f} (aim >= 0.8 on 2 cores)")
        if lat:
            p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
            print(f"claim-to-start with the agent running: p50 {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
                  f"over {len(lat)} jobs (aim p99 < 100 ms)")
    finally:
        try:
            stop_agent(tmp / "bench")
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
