"""Run every benchmark, one after the other: ``python bench/run_all.py`` (about 10 minutes on 2 cores).

Each prints its own ratios against a baseline measured in the same run. The Slurm polling benchmark needs
the local Slurm (bash .ci/slurm.sh start), the transfer benchmark the test sshd (bash .ci/sshd.sh start); each
says so otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_store.py", "bench_launcher.py", "bench_agent.py", "bench_pipeline.py", "bench_cli.py", "bench_zipapp.py",
           "bench_analytics.py", "bench_scheduler_poll.py", "bench_dag.py", "bench_transfers.py", "bench_relay.py", "bench_relay_live.py", "bench_dashboard.py",
           "bench_http.py"]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n=== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
