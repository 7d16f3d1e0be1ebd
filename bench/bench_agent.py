"""Site agent benchmark: no-op jobs from creation to JOB_FINISHED through the whole system, and idle CPU.

The whole path runs for real: jobs are created STAGED_IN; the agent's processing moves them to PREPROCESSED;
its scheduler service submits a local BatchJob (a background batch script) whose launcher runs the jobs; the
agent post-processes them to JOB_FINISHED. The baseline is ``xargs -P <cores>`` running the same command in
the same workdirs, in the same run. Then the agent sits idle and its CPU use is measured.

    python bench/bench_agent.py [--jobs 10000] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_launcher import Noop, _setup, run_baseline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()
    import psutil

    from balsam.api import BatchJob, Job
    from balsam.services.agent import start_agent, stop_agent

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="balsam-bench-agent-"))
    try:
        ref = _setup(tmp, "bench")
        settings = ref.path / "settings.yml"
        settings.write_text(settings.read_text().replace("idle_ttl_s: 10", "idle_ttl_s: 2"))
        pid = start_agent(ref.path)
        n = args.jobs
        t0 = time.perf_counter()
        jobs = Job.objects.bulk_create([Job(f"e2e/{i:06d}", app_id=Noop, node_packing_count=64) for i in range(n)])
        BatchJob.objects.create(num_nodes=1, wall_time_min=30, job_mode="mpi", site_name="bench")
        lo, hi = jobs[0].id, jobs[-1].id
        while True:
            done = ref.store.execute("SELECT count(*) FROM job WHERE id BETWEEN ? AND ? AND state='JOB_FINISHED'", (lo, hi))[0][0]
            if done == n:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"only {done}/{n} jobs finished in 10 minutes; see {ref.path}/log")
            time.sleep(0.05)
        balsam_rate = n / (time.perf_counter() - t0)
        dirs = [str(ref.path / "data" / "e2e" / f"{i:06d}") for i in range(n)]
        xargs_rate = run_baseline(["xargs", "-P", str(cores), "-n", "1", "sh", "-c", 'cd "$1" && true > job.out 2>&1', "sh"], dirs)
        print(f"{n:,} no-op jobs, creation -> JOB_FINISHED with the agent and a local BatchJob: {balsam_rate:,.0f} jobs/s; "
              f"xargs -P {cores}: {xargs_rate:,.0f} jobs/s -> ratio {balsam_rate / xargs_rate:.2f} (aim >= 0.5; "
              f"Balsam 0.7 with its PostgreSQL server ~45 jobs/s)")
        while BatchJob.objects.filter(site_name="bench", state=["queued", "running"]).exists():
            time.sleep(0.2)  # the launcher exits after idle_ttl_s and the BatchJob finishes
        proc = psutil.Process(pid)
        c0 = sum(proc.cpu_times()[:2])
        time.sleep(args.idle_s)
        c1 = sum(proc.cpu_times()[:2])
        print(f"idle site agent over {args.idle_s:.0f} s: {100 * (c1 - c0) / args.idle_s:.2f}% of a core (aim < 1%)")
        stop_agent(ref.path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
