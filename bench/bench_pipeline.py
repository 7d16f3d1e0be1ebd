"""Whole-pipeline benchmark: the site agent plus a ``balsam launcher`` process, from job creation to JOB_FINISHED.

N no-op shell jobs are created STAGED_IN while the real site agent runs (processing, scheduler, every service)
and a ``balsam launcher -j <mode>`` process idles; the clock stops when all N are JOB_FINISHED. Jobs use
``node_packing_count=<cores>`` and one CPU each, so at most <cores> run at once. Each mode is compared, in the
same run (the machine is noisy: only ratios are meaningful), with:

- ``xargs -P <cores>`` doing the same work: making each job's directory and writing its output
  (``mkdir -p DIR && cd DIR && true > job.out``);
- the pure spawn floor: ``xargs -P <cores>`` running ``sh -c 'cd DIR && true > job.out'`` in empty directories
  made beforehand (not timed), on the same file system as the site, so that it creates each job's output file
  as the pipeline does. (Directories that already hold a job.out, e.g. the pipeline's own, only truncate it:
  on an ext4 without a journal, as on this machine kind, creating a file cost 0.3-0.5 ms while other processes
  delete files, as much as the spawn itself, so such a floor was up to twice as fast as a fair one.)

Each pipeline case also prints where its time went: from creation to the first job's start, the steady rate
(first to last start), and the tail (last start to the last JOB_FINISHED), and the CPU time per job of the
launcher (user + system) and of the agent; the floor prints its CPU time per job (xargs and its shells).
``--rt`` runs everything measured (agent, launchers, jobs, xargs) at real-time priority (SCHED_RR, root only):
on a machine shared with other work, the runs then see a nearly quiet machine (the kernel still leaves 5% of
each second to the rest); both sides of every ratio get the same priority.

Python ``run()`` no-op jobs go through the same pipeline (warm workers), in each mode: jobs/s (``--py-jobs``).
Then the claim-to-start latency with the agent running: jobs created one at a time while an mpi-mode launcher
idles, from the agent making each runnable (its PREPROCESSED event) to its RUNNING event, p50 and p99; and the
same from creation. The printed figures do not depend on the core count (``--cores``).

    python bench/bench_pipeline.py [--jobs 5000] [--py-jobs 2000] [--cores N] [--rounds 2] [--latency 50] [--modes mpi,serial] [--rt]
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


def cpu_split(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds process ``pid`` used so far (all threads, not its children); zeros if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


CPU: Dict[str, List[float]] = {}
"""CPU microseconds per job of the launcher and of the agent, by case: the overhead, robust to a noisy machine."""
PHASES: Dict[str, List[Dict[str, float]]] = {}
"""Per case and round: creation to first start (ms), the steady start rate (jobs/s), last start to the last
JOB_FINISHED (ms), and the launcher's user and system CPU per job (us)."""


def phases(ref: Any, lo: int, hi: int, t0: float) -> Dict[str, float]:
    """Where a run's time went, from its jobs' events: ``t0`` is the wall-clock time their creation began."""
    first, last, n = ref.store.execute("SELECT min(timestamp), max(timestamp), count(*) FROM event WHERE job_id BETWEEN ? AND ? "
                                       "AND to_state='RUNNING'", (lo, hi))[0]
    finished = ref.store.execute("SELECT max(timestamp) FROM event WHERE job_id BETWEEN ? AND ? AND to_state='JOB_FINISHED'",
                                 (lo, hi))[0][0]
    return {"start_ms": 1000 * (float(first) - t0), "steady_per_s": (n - 1) / max(1e-9, float(last) - float(first)),
            "tail_ms": 1000 * (float(finished) - float(last))}


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
        wall0 = time.time()
        cpu0 = (cpu_s(proc.pid), cpu_s(agent_pid))
        split0 = cpu_split(proc.pid)
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
        case = f"{'python ' if app is PyNoop else ''}{mode}"
        split = cpu_split(proc.pid)
        CPU.setdefault(case, []).extend([1e6 * (cpu_s(proc.pid) - cpu0[0]) / n, 1e6 * (cpu_s(agent_pid) - cpu0[1]) / n])
        phase = dict(phases(ref, lo, hi, wall0), launcher_user_us=1e6 * (split[0] - split0[0]) / n,
                     launcher_sys_us=1e6 * (split[1] - split0[1]) / n)
        PHASES.setdefault(case, []).append(phase)
        print(f"    first start after {phase['start_ms']:.0f} ms, then {phase['steady_per_s']:.0f} jobs/s, last JOB_FINISHED "
              f"{phase['tail_ms']:.0f} ms after the last start; launcher CPU {phase['launcher_user_us']:.0f} us user + "
              f"{phase['launcher_sys_us']:.0f} us system per job", flush=True)
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
    parser.add_argument("--rt", action="store_true",
                        help="run everything measured at real-time priority (SCHED_RR 1; root): a shared machine then looks quiet")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.jobs < 1 or args.py_jobs < 0 or args.cores < 1 or not modes or set(modes) - {"mpi", "serial"}:
        raise SystemExit("--jobs and --cores must be >= 1 and --modes a list of mpi, serial")
    if args.rt:
        try:  # inherited by everything started from here on: the agent, the launchers, their jobs, xargs
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
        except (OSError, AttributeError) as exc:
            raise SystemExit(f"--rt: cannot take real-time priority here ({exc}); run as root, or without --rt") from None
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
            made = [str(ref.path / "data" / f"floor{r}" / f"{i:06d}") for i in range(args.jobs)]
            for d in made:  # empty, so that each job creates its job.out as in the pipeline (see the module's docstring)
                os.makedirs(d)
            before = os.times()
            record("xargs spawn floor", run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", FLOOR, "sh"], made))
            after = os.times()
            floor_cpu = 1e6 * (after.children_user + after.children_system - before.children_user - before.children_system) / args.jobs
            CPU.setdefault("spawn floor", []).append(floor_cpu)
            print(f"    CPU {floor_cpu:.0f} us per job (xargs and its shells)", flush=True)
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
            if case == "spawn floor":
                print(f"  CPU per job, spawn floor (xargs and its shells): {min(values):.0f} us (least of {len(values)} rounds)")
                continue
            launcher, agent = values[0::2], values[1::2]
            print(f"  CPU per job, {case}: launcher {min(launcher):.0f} us, agent {min(agent):.0f} us (least of {len(launcher)} rounds)")
        for case, rounds in PHASES.items():
            steady = max(p["steady_per_s"] for p in rounds)
            of_floor = "" if case.startswith("python") else f" (= {steady / best['xargs spawn floor']:.2f} of the spawn floor)"
            print(f"  {case}: first start after {min(p['start_ms'] for p in rounds):.0f} ms, steady {steady:.0f} jobs/s{of_floor}, "
                  f"tail {min(p['tail_ms'] for p in rounds):.0f} ms (best of {len(rounds)} rounds)")
        if lat:
            print(f"claim-to-start with the agent running: p50 {statistics.median(lat) * 1000:.1f} ms, p99 {_p99(lat) * 1000:.1f} ms "
                  f"over {len(lat)} jobs (aim p99 < 100 ms); from creation: p50 {statistics.median(from_creation) * 1000:.1f} ms, "
                  f"p99 {_p99(from_creation) * 1000:.1f} ms")
        if args.json is not None:
            figures: Dict[str, Any] = {"cores": cores, "jobs": args.jobs, "py_jobs": args.py_jobs, "rounds": args.rounds,
                                       "load_average": [load_before, load_after], "runs": runs, "best": best, "cpu_us_per_job": CPU, "phases": PHASES, "rt": args.rt,
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
