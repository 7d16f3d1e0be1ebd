"""Whole-pipeline benchmark: the site agent plus a ``balsam launcher`` process, from job creation to JOB_FINISHED.

N no-op shell jobs are created STAGED_IN while the real site agent runs (processing, scheduler, every service)
and a ``balsam launcher -j <mode>`` process idles; the clock stops when all N are JOB_FINISHED. Jobs use
``node_packing_count=<cores>`` and one CPU each, so at most <cores> run at once. Each mode is compared, in the
same run (the machine is noisy: only ratios are meaningful), with:

- ``xargs -P <cores>`` doing the same work: making each job's directory and writing its output
  (``mkdir -p DIR && cd DIR && true > job.out``);
- the pure spawn floor: ``xargs -P <cores>`` running ``sh -c 'cd DIR && true > job.out'`` in directories made
  beforehand.

Python ``run()`` no-op jobs go through the same pipeline (warm workers), in each mode: jobs/s (``--py-jobs``).
Then the claim-to-start latency with the agent running: jobs created one at a time while an mpi-mode launcher
idles, from the agent making each runnable (its PREPROCESSED event) to its RUNNING event, p50 and p99; and the
same from creation. The printed figures do not depend on the core count (``--cores``).

    python bench/bench_pipeline.py [--jobs 5000] [--py-jobs 2000] [--cores N] [--rounds 2] [--latency 50] [--modes mpi,serial]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_launcher import REPO, Noop, PyNoop, _setup, run_baseline  # noqa: E402

SAME_WORK = 'mkdir -p "$1" && cd "$1" && true > job.out 2>&1'
FLOOR = 'cd "$1" && true > job.out'


def _cli_launcher(ref: Any, mode: str, idle_ttl: float) -> "subprocess.Popen[bytes]":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "balsam", "launcher", "--site", str(ref.path), "-j", mode, "-t", "60", "--idle-ttl", str(idle_ttl)]
    if mode == "serial" and os.environ.get("BENCH_SERIAL_WORKERS"):
        argv += ["--serial-workers", os.environ["BENCH_SERIAL_WORKERS"]]
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


def latency(ref: Any, k: int) -> List[Tuple[float, float]]:
    """(claim-to-start, creation-to-start) seconds of ``k`` jobs created one at a time while the agent runs and an
    mpi-mode launcher idles: from the PREPROCESSED event (the agent made the job runnable), and from creation, to
    the RUNNING event."""
    from balsam.api import Job

    proc = _cli_launcher(ref, "mpi", idle_ttl=120.0)
    time.sleep(1.5)
    out: List[Tuple[float, float]] = []
    try:
        for i in range(k):
            t0 = time.time()
            job = Job(f"lat/{i:04d}", app_id=Noop)
            job.save()
            deadline = time.monotonic() + 60
            while True:
                rows = dict(ref.store.execute("SELECT to_state, timestamp FROM event WHERE job_id=? AND to_state IN "
                                              "('PREPROCESSED', 'RUNNING')", (job.id,)))
                if "RUNNING" in rows:
                    out.append((float(rows["RUNNING"]) - float(rows["PREPROCESSED"]), float(rows["RUNNING"]) - t0))
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job.id} did not start within 60 s; see {ref.path}/log")
                time.sleep(0.002)
            time.sleep(0.05 + (i % 5) * 0.02)
    finally:
        proc.terminate()
        proc.wait()
    return out


def _p99(values: List[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads, not its children) process ``pid`` used so far; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


CPU: Dict[str, List[float]] = {}
"""CPU microseconds per job of the launcher and of the agent, by case: the overhead, robust to a noisy machine."""


def run_pipeline(ref: Any, n: int, mode: str, cores: int, prefix: str, profile: Optional[Path] = None,
                 agent_pid: int = 0, app: Any = Noop) -> float:
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
        cpu0 = (cpu_s(proc.pid), cpu_s(agent_pid))
        jobs = Job.objects.bulk_create([Job(f"{prefix}/{i:06d}", app_id=app, node_packing_count=cores) for i in range(n)])
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
        rate = n / (time.perf_counter() - t0)
        CPU.setdefault(f"{'python ' if app is PyNoop else ''}{mode}", []).extend(
            [1e6 * (cpu_s(proc.pid) - cpu0[0]) / n, 1e6 * (cpu_s(agent_pid) - cpu0[1]) / n])
        return rate
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--py-jobs", type=int, default=2_000, help="Python run() jobs per mode and round (0: skip)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="jobs at once (default: os.cpu_count())")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is reported")
    parser.add_argument("--latency", type=int, default=50, help="jobs in the claim-to-start measurement (0: skip)")
    parser.add_argument("--modes", default="mpi,serial")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                        help="also sample the agent and the launcher with py-spy (slows both) into DIR, and print their top functions")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.jobs < 1 or args.py_jobs < 0 or args.cores < 1 or not modes or set(modes) - {"mpi", "serial"}:
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
        load_before = os.getloadavg()[0]
        print(f"{cores} cores, {args.jobs} no-op jobs per case, {args.rounds} rounds; load average {load_before:.1f}; site {ref.path}",
              flush=True)
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            for mode in modes:
                record(f"pipeline {mode}", run_pipeline(ref, args.jobs, mode, cores, f"{mode}{r}", args.py_spy, agent_pid))
            for mode in modes if args.py_jobs else []:
                record(f"python run() {mode}", run_pipeline(ref, args.py_jobs, mode, cores, f"py{mode}{r}", None, agent_pid, PyNoop))
            fresh = [str(tmp / "xargs" / f"{r}" / f"{i:06d}") for i in range(args.jobs)]
            record("xargs same work", run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", SAME_WORK, "sh"], fresh))
            made = [str(ref.path / "data" / f"{modes[0]}{r}" / f"{i:06d}") for i in range(args.jobs)]
            record("xargs spawn floor", run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", FLOOR, "sh"], made))
        if args.py_spy is not None:
            for raw in sorted(args.py_spy.glob("*.txt")):
                print(f"\n{raw.name}: " + "\n".join(top_functions(raw)))
        both = latency(ref, args.latency) if args.latency > 0 else []
        lat = [c for c, _ in both]
        from_creation = [c for _, c in both]
        stop_agent(ref.path)
        best = {k: max(v) for k, v in runs.items()}
        load_after = os.getloadavg()[0]
        print(f"\nload average {load_before:.1f} at the start, {load_after:.1f} at the end")
        print("ratios (same run, best of each):")
        for mode in modes:
            rate = best[f"pipeline {mode}"]
            print(f"  pipeline {mode:6s} / xargs same work = {rate / best['xargs same work']:.2f} (aim >= 0.9 on 2 cores, 0.8 on 16)"
                  f"   / spawn floor = {rate / best['xargs spawn floor']:.2f} (aim >= 0.8 on 2 cores)")
        if args.py_jobs:
            print("  python run() jobs/s through the pipeline: " + ", ".join(f"{m} {best[f'python run() {m}']:.0f}" for m in modes)
                  + " (aim > 5,000 on 16 cores)")
        for case, values in CPU.items():
            launcher, agent = values[0::2], values[1::2]
            print(f"  CPU per job, {case}: launcher {min(launcher):.0f} us, agent {min(agent):.0f} us (least of {len(launcher)} rounds)")
        if lat:
            print(f"claim-to-start with the agent running: p50 {statistics.median(lat) * 1000:.1f} ms, p99 {_p99(lat) * 1000:.1f} ms "
                  f"over {len(lat)} jobs (aim p99 < 100 ms); from creation: p50 {statistics.median(from_creation) * 1000:.1f} ms, "
                  f"p99 {_p99(from_creation) * 1000:.1f} ms")
        if args.json is not None:
            figures: Dict[str, Any] = {"cores": cores, "jobs": args.jobs, "py_jobs": args.py_jobs, "rounds": args.rounds,
                                       "load_average": [load_before, load_after], "runs": runs, "best": best, "cpu_us_per_job": CPU,
                                       "ratios": {m: {"same_work": best[f"pipeline {m}"] / best["xargs same work"],
                                                      "spawn_floor": best[f"pipeline {m}"] / best["xargs spawn floor"]} for m in modes}}
            if lat:
                figures["claim_to_start_ms"] = {"p50": statistics.median(lat) * 1000, "p99": _p99(lat) * 1000, "n": len(lat)}
                figures["creation_to_start_ms"] = {"p50": statistics.median(from_creation) * 1000, "p99": _p99(from_creation) * 1000}
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        try:
            stop_agent(tmp / "bench")
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
