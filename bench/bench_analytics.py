"""Analytics benchmark: balsam.analytics reports over 1,000,000 events, against a bare SELECT of the same rows.

A site gets ~167k jobs, each with six events (creation, PREPROCESSED, RUNNING with its node footprint, RUN_DONE,
POSTPROCESSED, JOB_FINISHED; one job in ten runs twice). Each report is timed beside a bare ``SELECT`` that
fetches the rows it reads (the events entering the state, the runs' starts and ends, every event) in the
same run, and printed as a ratio: the machine is noisy, so the ratio is the number to read.

    python bench/bench_analytics.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _best(fn: Callable[[], Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _build(root: Path, n_events: int) -> Any:
    os.environ["BALSAM_HOME"] = str(root / "home")
    from balsam._api import sites
    from balsam.api import ApplicationDefinition, Job
    from balsam.site import init_site

    sites.reset()
    init_site(root / "bench-site", name="bench-site")
    site = sites.resolve("bench-site")
    sites.use_site("bench-site")
    ns: Dict[str, Any] = {"ApplicationDefinition": ApplicationDefinition}
    exec("class Sim(ApplicationDefinition):\n    site = 'bench-site'\n    command_template = 'true'\n", ns)
    ns["Sim"].sync()
    n_jobs = n_events // 6
    Job.objects.bulk_create([Job(f"b/{i}", ns["Sim"], tags={"size": ("small", "big")[i % 2]}) for i in range(n_jobs)])
    ids = [r[0] for r in site.store.conn.execute("SELECT id FROM job ORDER BY id")]
    rows: List[Tuple[int, float, str, str, Any]] = []
    t0 = 1_700_000_000.0
    for n, job_id in enumerate(ids):
        t = t0 + n * 0.01
        path = [("CREATED", "STAGED_IN", None), ("STAGED_IN", "PREPROCESSED", None),
                ("PREPROCESSED", "RUNNING", json.dumps({"num_nodes": 0.25 if n % 3 else 1.0})), ("RUNNING", "RUN_DONE", None),
                ("RUN_DONE", "POSTPROCESSED", None), ("POSTPROCESSED", "JOB_FINISHED", None)]
        for k, (src, dst, data) in enumerate(path):
            rows.append((job_id, t + k * (5.0 + n % 7), src, dst, data))
    need = n_events - len(rows)
    for job_id in ids[:: 10][: need // 2]:  # some jobs ran twice
        rows.append((job_id, t0 + 9e5, "RESTART_READY", "RUNNING", json.dumps({"num_nodes": 1.0})))
        rows.append((job_id, t0 + 9e5 + 30, "RUNNING", "RUN_DONE", None))
    with site.store.write() as conn:
        conn.execute("DELETE FROM event")
        conn.executemany("INSERT INTO event (job_id, timestamp, from_state, to_state, data) VALUES (?, ?, ?, ?, ?)", rows)
    site.store.conn.execute("ANALYZE")
    return site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        site = _build(Path(tmp), args.events)
        conn = site.store.conn
        total = conn.execute("SELECT count(*) FROM event").fetchone()[0]
        print(f"built {total:,} events in {time.perf_counter() - t:.1f} s")

        from balsam.analytics import durations_report, state_history, throughput_rate, throughput_report, utilization_report
        from balsam.api import EventLog

        events = EventLog.objects.all()
        cases = [
            ("throughput_report(JOB_FINISHED)", lambda: throughput_report(events),
             lambda: conn.execute("SELECT timestamp FROM event WHERE to_state='JOB_FINISHED' ORDER BY timestamp, id").fetchall()),
            ("throughput_rate(60 s window)", lambda: throughput_rate(events, window_s=60),
             lambda: conn.execute("SELECT timestamp FROM event WHERE to_state='JOB_FINISHED' ORDER BY timestamp, id").fetchall()),
            ("utilization_report(node_weighting)", lambda: utilization_report(events, node_weighting=True),
             lambda: conn.execute("SELECT job_id, timestamp, from_state, to_state, data FROM event "
                                  "WHERE to_state='RUNNING' OR from_state='RUNNING' ORDER BY timestamp, id").fetchall()),
            ("state_history(200 bins)", lambda: state_history(events),
             lambda: conn.execute("SELECT timestamp, from_state, to_state FROM event ORDER BY timestamp, id").fetchall()),
            ("durations_report(by app)", lambda: durations_report(events, group_by="app"),
             lambda: conn.execute("SELECT job_id, timestamp, to_state FROM event").fetchall()),
        ]
        bare_all = _best(lambda: conn.execute("SELECT * FROM event").fetchall())
        print(f"bare SELECT * of all {total:,} events: {bare_all * 1000:.0f} ms")
        print(f"{'report':38s} {'report':>9s} {'bare SELECT':>12s} {'ratio':>6s} {'vs all events':>14s}")
        for name, report, bare in cases:
            r = _best(report)
            b = _best(bare)
            print(f"{name:38s} {r * 1000:7.0f} ms {b * 1000:9.0f} ms {r / b:6.2f} {r / bare_all:14.2f}")


if __name__ == "__main__":
    main()
