"""Benchmark: polling the statuses of many queued BatchJobs on a real Slurm.

Submits N jobs through the Slurm adapter (each with ``--begin=now+2hours`` so they stay PENDING), then times
a scheduler sync cycle, ``SlurmScheduler.get_statuses(ids)``, and counts the commands it runs. Times are
reported as ratios against baselines measured in the same run:

* a bare ``squeue -h --me`` (the floor: one command, no parsing),
* polling job by job (``squeue -h -j <id>`` per job, timed on a sample and scaled to N), the O(N) design
  this adapter avoids.

Usage (Slurm must be up: ``bash .ci/slurm.sh start``)::

    python bench/bench_scheduler_poll.py [--jobs 1000] [--cycles 20] [--json bench/results/poll.json]

Every job it submitted is cancelled at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from balsam.platforms.runner import CountingRunner, SubprocessRunner
from balsam.platforms.schedulers import SchedulerState, get_scheduler
from balsam.platforms.schedulers import slurm as slurm_mod


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls, in seconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--sample", type=int, default=50, help="jobs polled one by one for the O(N) baseline")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        print("Slurm is not running: start it with `bash .ci/slurm.sh start`", file=sys.stderr)
        return 2

    counting = CountingRunner(SubprocessRunner(timeout_s=60))
    sched = get_scheduler("slurm", counting)
    ids: List[int] = []
    with tempfile.TemporaryDirectory(prefix="balsam-bench-") as tmp:
        script = Path(tmp) / "qlaunch.sh"
        script.write_text("#!/bin/bash\ntrue\n")
        try:
            start = time.perf_counter()
            for i in range(args.jobs):
                ids.append(
                    sched.submit(script, project="bench", queue="debug", num_nodes=1, wall_time_min=10,
                                 job_name=f"bench-{i}", optional_params={"begin": "now+2hours"})  # fmt: skip
                )
            submit_s = time.perf_counter() - start

            counting.count = 0
            statuses = sched.get_statuses(ids)
            commands_per_cycle = counting.count
            queued = sum(1 for s in statuses.values() if s.state is SchedulerState.QUEUED)
            assert queued == args.jobs, f"expected {args.jobs} queued jobs, saw {queued}"

            cycle_s = median_time(lambda: sched.get_statuses(ids), args.cycles)
            bare_s = median_time(lambda: subprocess.run(["squeue", "-h", "--me"], capture_output=True, check=True), args.cycles)
            raw = subprocess.run(slurm_mod.render_status(), capture_output=True, text=True, check=True).stdout
            parse_s = median_time(lambda: slurm_mod.parse_status(raw, sched._now()), args.cycles)
            sample = ids[: args.sample]
            per_job_s = median_time(
                lambda: [subprocess.run(["squeue", "-h", "-j", str(j)], capture_output=True) for j in sample], 3
            ) * (args.jobs / len(sample))
        finally:
            for chunk in range(0, len(ids), 200):
                subprocess.run(["scancel", *map(str, ids[chunk : chunk + 200])], capture_output=True)

    result: Dict[str, object] = {
        "jobs": args.jobs,
        "submit_per_job_ms": round(1000 * submit_s / args.jobs, 2),
        "commands_per_sync_cycle": commands_per_cycle,
        "sync_cycle_s": round(cycle_s, 4),
        "bare_squeue_s": round(bare_s, 4),
        "parse_only_s": round(parse_s, 4),
        "cycle_over_bare_squeue": round(cycle_s / bare_s, 2),
        "per_job_polling_s_estimated": round(per_job_s, 2),
        "per_job_polling_over_cycle": round(per_job_s / cycle_s, 1),
    }
    print(f"{args.jobs} queued BatchJobs on Slurm; median of {args.cycles} cycles")
    print(f"  sync cycle (get_statuses of all ids): {cycle_s * 1000:8.1f} ms, {commands_per_cycle} scheduler command(s)")
    print(f"  bare `squeue -h --me`   (baseline):   {bare_s * 1000:8.1f} ms   -> cycle = {cycle_s / bare_s:.2f} x baseline")
    print(f"  of which parsing {args.jobs} lines:        {parse_s * 1000:8.1f} ms")
    print(f"  polling job by job (estimated):       {per_job_s * 1000:8.1f} ms   -> {per_job_s / cycle_s:.0f} x one cycle")
    print(f"  submit: {1000 * submit_s / args.jobs:.1f} ms per job (sbatch through the adapter)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
