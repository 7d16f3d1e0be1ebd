"""DAG instantiation benchmark: ``instantiate`` of N instances x 6 jobs (prep -> 4 sims -> reduce), against
``Job.objects.bulk_create`` of the same jobs level by level (the fastest way to wire them by hand), in one run.

    python bench/bench_dag.py [--instances 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _site(root: Path, name: str) -> Any:
    from balsam._api import sites
    from balsam.site import init_site

    init_site(root / name, name=name)
    return sites.resolve(name)


def _apps(site: str) -> Dict[str, Any]:
    from balsam.api import ApplicationDefinition

    out = {}
    for name, template in (("Prep", "echo prep {{ seed }}"), ("Simulate", "echo {{ k }} {{ temp }}"), ("Reduce", "echo reduce")):
        app = type(name, (ApplicationDefinition,), {"site": site, "command_template": template, "__module__": __name__})
        app.sync()
        out[name] = app
    return out


def by_hand(site: str, apps: Dict[str, Any], n: int) -> float:
    from balsam.api import Job

    t = time.perf_counter()
    preps = Job.objects.bulk_create([Job(f"r{i}/prep", apps["Prep"], site_name=site, parameters={"seed": i},
                                         tags={"dag": "h", "dag_instance": str(i), "dag_node": "prep"}) for i in range(n)])
    sims: List[List[Any]] = [[] for _ in range(n)]
    flat = []
    for i in range(n):
        for k in range(4):
            job = Job(f"r{i}/sim{k}", apps["Simulate"], site_name=site, parameters={"k": k, "temp": 300 + i}, num_nodes=2,
                      parent_ids=[preps[i].id], tags={"dag": "h", "dag_instance": str(i), "dag_node": f"sim{k}"})
            sims[i].append(job)
            flat.append(job)
    Job.objects.bulk_create(flat)
    Job.objects.bulk_create([Job(f"r{i}/reduce", apps["Reduce"], site_name=site, parent_ids=[s.id for s in sims[i]],
                                 tags={"dag": "h", "dag_instance": str(i), "dag_node": "reduce"}) for i in range(n)])
    return time.perf_counter() - t


def with_dag(site: str, apps: Dict[str, Any], n: int) -> float:
    from balsam.api import DAG

    d = DAG("sweep", site=site)
    prep = d.node("prep", app=apps["Prep"], workdir="{run}/prep", params={"seed": "{seed}"})
    sims = [d.node(f"sim{k}", app=apps["Simulate"], workdir="{run}/sim" + str(k), params={"k": k, "temp": "{temp}"},
                   num_nodes=2, parents=[prep]) for k in range(4)]
    d.node("reduce", app=apps["Reduce"], workdir="{run}/reduce", parents=sims)
    d.save()
    records = [{"run": f"r{i}", "seed": i, "temp": 300 + i} for i in range(n)]
    t = time.perf_counter()
    d.instantiate(records)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["BALSAM_HOME"] = str(Path(tmp) / "home")
            from balsam._api import sites

            sites.reset()
            _site(Path(tmp), "a")
            _site(Path(tmp), "b")
            hand = by_hand("a", _apps("a"), args.instances)
            dag = with_dag("b", _apps("b"), args.instances)
            ratios.append(hand / dag)
            jobs = args.instances * 6
            print(f"round {r + 1}: {jobs} jobs: bulk_create by hand {hand:.3f} s ({jobs / hand:,.0f} jobs/s), "
                  f"DAG.instantiate {dag:.3f} s ({jobs / dag:,.0f} jobs/s): instantiate at {hand / dag:.2f}x bulk_create's speed")
    print(f"median: DAG.instantiate runs at {statistics.median(ratios):.2f}x the speed of bulk_create of the same jobs")


if __name__ == "__main__":
    main()
