"""Launcher benchmark: spawn throughput against xargs and GNU parallel, Python run() throughput, and the
claim-to-start latency of a job made runnable while the launcher idles.

Every figure is printed beside baselines measured in the same run, as ratios (the machine is noisy):

- N no-op shell jobs (``true``, each in its own workdir, output to ``job.out``) from PREPROCESSED to RUN_DONE (or JOB_FINISHED),
  in mpi mode and in serial mode, against ``xargs -P <cores>`` and GNU ``parallel -j <cores>`` running the same
  command in the same workdirs with output to a file per job;
- the same shell jobs with the launcher's fault guards off (its journal, job watchdog and pid records; a
  bench-only switch, ``_BALSAM_BENCH_UNGUARDED=1``, never a setting): guarded / unguarded is what they cost,
  in throughput and in CPU time per job (the launcher's and its children's, from ``wait4``; the steadier
  figure on a shared machine);
- M no-op Python ``run()`` jobs (warm workers), in both modes;
- claim-to-start latency: a job made runnable while an mpi-mode launcher idles, until its process starts
  (the RUNNING event's time), median and p99 over K jobs.

Jobs use ``node_packing_count=64`` (a flood's usual setting) and one CPU each, so at most <cores> run at once,
as with ``xargs -P <cores>``.

    python bench/bench_launcher.py [--jobs 10000] [--py-jobs 5000] [--latency 50]   (0 skips a part)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from balsam.api import ApplicationDefinition  # noqa: E402
from balsam.launcher.watchdog import BENCH_UNGUARDED_ENV  # noqa: E402


class Noop(ApplicationDefinition):
    """A no-op shell command."""

    site = None
    command_template = "true"


class PyNoop(ApplicationDefinition):
    """A no-op Python app."""

    site = None

    def run(self) -> None:
        return None


def _setup(root: Path, name: str) -> Any:
    os.environ["BALSAM_HOME"] = str(root / "home")
    from balsam._api import sites
    from balsam.site import init_site

    sites.reset()
    init_site(root / name, name=name)
    ref = sites.resolve(name)
    (ref.path / "settings.yml").write_text((ref.path / "settings.yml").read_text() + "\n# bench\n")
    for app in (Noop, PyNoop):
        app.site = name
        app.__app_id__ = None
        app.sync()
    return ref


def _make_jobs(ref: Any, app: Any, n: int, prefix: str) -> List[int]:
    from balsam.api import Job
    from balsam.db.jobs import StateChange, apply_state_changes

    jobs = Job.objects.bulk_create([Job(f"{prefix}/{i:06d}", app_id=app, node_packing_count=64) for i in range(n)])
    ids = [int(j.id) for j in jobs]
    with ref.store.write() as conn:
        apply_state_changes(conn, [StateChange(i, "PREPROCESSED") for i in ids])
    return ids


RAN = ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
"""A job that has run: RUN_DONE, or past it (a launcher finishes the jobs of hookless apps itself)."""


def _count_ran(ref: Any, ids: List[int]) -> int:
    lo, hi = min(ids), max(ids)
    return int(ref.store.execute("SELECT count(*) FROM job WHERE id BETWEEN ? AND ? AND state IN (?, ?, ?)", (lo, hi, *RAN))[0][0])


def _launcher(ref: Any, mode: str, idle_ttl: float, extra: Optional[List[str]] = None,
              unguarded: bool = False) -> "subprocess.Popen[bytes]":
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if unguarded:
        env[BENCH_UNGUARDED_ENV] = "1"
    argv = [sys.executable, "-m", "balsam.launcher", "--site", str(ref.path), "-j", mode, "-t", "30", "--idle-ttl", str(idle_ttl)]
    return subprocess.Popen(argv + (extra or []), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


CPU_MS_PER_JOB: Dict[str, List[float]] = {}
"""CPU milliseconds per job of each balsam run: the launcher with everything it waited for (its node workers,
the jobs themselves), from wait4(): steadier than throughput on a shared machine."""


def run_balsam(ref: Any, app: Any, n: int, mode: str, prefix: str, unguarded: bool = False, name: str = "") -> float:
    """Jobs per second from launcher start until every job has run (RUN_DONE or past it)."""
    ids = _make_jobs(ref, app, n, prefix)
    t0 = time.perf_counter()
    proc = _launcher(ref, mode, idle_ttl=1.0, unguarded=unguarded)
    while _count_ran(ref, ids) < n:
        if proc.poll() is not None:
            done = _count_ran(ref, ids)
            raise SystemExit(f"the launcher exited early ({proc.returncode}) with {done}/{n} jobs done; see {ref.path}/log")
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if name:
        CPU_MS_PER_JOB.setdefault(name, []).append((usage.ru_utime + usage.ru_stime) * 1000.0 / n)
    return n / elapsed


def run_baseline(argv: List[str], dirs: List[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input="\n".join(dirs) + "\n", text=True, check=True, stdout=subprocess.DEVNULL)
    return len(dirs) / (time.perf_counter() - t0)


def latency(ref: Any, k: int) -> List[float]:
    """Seconds from a job becoming runnable to its RUNNING event, while an mpi-mode launcher idles."""
    from balsam.api import Job
    from balsam.db.jobs import StateChange, apply_state_changes

    proc = _launcher(ref, "mpi", idle_ttl=120.0)
    time.sleep(1.5)
    out: List[float] = []
    try:
        for i in range(k):
            job = Job(f"lat/{i:04d}", app_id=Noop)
            job.save()
            with ref.store.write() as conn:
                t0 = time.time()
                apply_state_changes(conn, [StateChange(int(job.id), "PREPROCESSED")])
            while True:
                row = ref.store.execute("SELECT timestamp FROM event WHERE job_id=? AND to_state='RUNNING'", (job.id,))
                if row:
                    out.append(float(row[0][0]) - t0)
                    break
                time.sleep(0.002)
            time.sleep(0.05 + (i % 5) * 0.02)
    finally:
        proc.terminate()
        proc.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--py-jobs", type=int, default=5_000)
    parser.add_argument("--latency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is reported")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="balsam-bench-launcher-"))
    runs: Dict[str, List[float]] = {}

    def record(name: str, rate: float) -> None:
        runs.setdefault(name, []).append(rate)
        print(f"  {name:22s} {rate:8.0f} jobs/s", flush=True)

    try:
        ref = _setup(tmp, "bench")
        print(f"{cores} cores, {args.jobs} shell jobs, {args.py_jobs} Python jobs, {args.rounds} rounds; load average "
              f"{os.getloadavg()[0]:.2f}; site {ref.path}",
              flush=True)
        cmd = 'cd "$1" && true > job.out 2>&1'
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            for mode in ("mpi", "serial"):
                # Guarded and unguarded back to back, in alternating order, so drift in the load hits both alike.
                for unguarded in ((False, True) if r % 2 == 0 else (True, False)):
                    name = f"balsam {mode}" + (" unguarded" if unguarded else "")
                    record(name, run_balsam(ref, Noop, args.jobs, mode, f"{mode}{r}{'u' if unguarded else ''}", unguarded, name))
            dirs = [str(ref.path / "data" / f"mpi{r}" / f"{i:06d}") for i in range(args.jobs)]
            record(f"xargs -P {cores}", run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", cmd, "sh"], dirs))
            if shutil.which("parallel"):
                record(f"GNU parallel -j {cores}", run_baseline(["parallel", "-j", str(cores), "cd {} && true > job.out 2>&1"], dirs))
            if args.py_jobs:
                record("python run() mpi", run_balsam(ref, PyNoop, args.py_jobs, "mpi", f"pympi{r}"))
                record("python run() serial", run_balsam(ref, PyNoop, args.py_jobs, "serial", f"pyserial{r}"))
        if not shutil.which("parallel"):
            print("GNU parallel: not installed (apt install parallel)")
        lat = sorted(latency(ref, args.latency)) if args.latency else []
        best = {k: max(v) for k, v in runs.items()}
        xargs, parallel = best[f"xargs -P {cores}"], best.get(f"GNU parallel -j {cores}")
        print("\nbest of each (jobs/s):")
        for name, rate in best.items():
            print(f"  {name:22s} {rate:8.0f}")
        if lat:
            p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
            print(f"claim-to-start latency: median {statistics.median(lat) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
                  f"(over {len(lat)} jobs; Balsam 0.7: ~2 s)")
        print("ratios (same run, best of each):")
        for mode in ("balsam mpi", "balsam serial"):
            line = f"  {mode:14s} / xargs = {best[mode] / xargs:.2f}"
            if parallel:
                line += f"   / GNU parallel = {best[mode] / parallel:.2f}"
            print(line)
        print("fault guards (journal, job watchdog, pid records), guarded / unguarded, same run:")
        for mode in ("balsam mpi", "balsam serial"):
            cpu, cpu_u = min(CPU_MS_PER_JOB[mode]), min(CPU_MS_PER_JOB[mode + " unguarded"])
            print(f"  {mode:14s} throughput {best[mode] / best[mode + ' unguarded']:.2f} "
                  f"(unguarded / xargs = {best[mode + ' unguarded'] / xargs:.2f}); "
                  f"CPU per job {cpu:.3f} / {cpu_u:.3f} ms = {cpu / cpu_u:.2f}")
        if args.py_jobs:
            print(f"python run() jobs/s: mpi {best['python run() mpi']:.0f}, serial {best['python run() serial']:.0f} (aim > 1000)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
