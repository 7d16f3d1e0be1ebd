"""Command-line benchmark: wall time of whole ``balsam`` processes on a 1,000,000-job site, and bulk
creation of 100,000 jobs from a file.

Each start-up command is timed as a fresh process (median of ``--repeat`` runs) and printed as a ratio to
two baselines measured in the same run: ``python -c pass`` (the interpreter's floor) and ``python -c
"import click"`` (the floor of any click program). Aims: ``balsam --help`` < 5x ``python -c pass``;
``balsam job ls --by-state`` < 8x. ``balsam job create --from`` (JSONL, CSV, YAML) is timed against the
Python API doing the same in-process (building Job objects and ``bulk_create``).

The package is byte-compiled first, as an installation does (this machine sets PYTHONDONTWRITEBYTECODE, so
otherwise every run would compile Balsam's sources again).

    python bench/bench_cli.py [--jobs 1000000] [--repeat 7] [--bulk 100000]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STATES = ("JOB_FINISHED", "STAGED_IN", "PREPROCESSED", "RUNNING", "FAILED", "RUN_DONE")


def build_site(tmp: Path, n_jobs: int) -> Path:
    """A site with ``n_jobs`` jobs in a spread of states and two tags each, inserted in 100k chunks."""
    os.environ["BALSAM_HOME"] = str(tmp / "home")
    from balsam._api import sites
    from balsam.api import ApplicationDefinition
    from balsam.db.jobs import insert_jobs, new_job_row
    from balsam.site import init_site

    root = tmp / "big-site"
    init_site(root, name="big-site")
    sites.reset()
    ns: Dict[str, object] = {"ApplicationDefinition": ApplicationDefinition}
    exec("class Hello(ApplicationDefinition):\n    site = 'big-site'\n    command_template = 'echo {{ x }}'\n", ns)
    app_id = ns["Hello"].sync()  # type: ignore[attr-defined]
    store = sites.resolve("big-site").store
    chunk = 100_000
    for start in range(0, n_jobs, chunk):
        rows = [new_job_row(f"run/{i}", app_id, tags={"experiment": f"e{i % 10}", "batch": str(i // 1000)}, parameters={"x": i})
                for i in range(start, min(start + chunk, n_jobs))]
        with store.write() as conn:
            insert_jobs(conn, rows)
    with store.write() as conn:  # a realistic mix of states (bench only: straight SQL, no events)
        conn.execute(f"UPDATE job SET state = CASE id % {len(STATES)} " +
                     " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(STATES)) + " END")
    store.close()
    sites.reset()
    return root


def time_process(argv: Sequence[str], cwd: Path, env: Dict[str, str], repeat: int) -> float:
    """Median wall time of ``argv`` as a new process, in seconds (one warm-up run first)."""
    times: List[float] = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(list(argv), cwd=str(cwd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
        if i:
            times.append(elapsed)
    return statistics.median(times)


def bench_bulk(tmp: Path, n: int, env: Dict[str, str]) -> Dict[str, float]:
    """Seconds to create ``n`` jobs: through the API in-process, and by ``balsam job create --from`` per format."""
    from balsam._api import sites
    from balsam.api import ApplicationDefinition, Job
    from balsam.site import init_site

    init_site(tmp / "bulk-site", name="bulk-site")
    sites.reset()
    ns: Dict[str, object] = {"ApplicationDefinition": ApplicationDefinition}
    exec("class Hello(ApplicationDefinition):\n    site = 'bulk-site'\n    command_template = 'echo {{ x }}'\n", ns)
    ns["Hello"].sync()  # type: ignore[attr-defined]
    sites.use_site("bulk-site")
    out: Dict[str, float] = {}
    t0 = time.perf_counter()
    Job.objects.bulk_create([Job(f"api/{i}", app_id="Hello", parameters={"x": str(i)}, tags={"exp": "e"}) for i in range(n)])
    out["api"] = time.perf_counter() - t0
    sites.reset()
    files = {
        "jsonl": "".join(json.dumps({"workdir": f"jsonl/{i}", "parameters": {"x": str(i)}, "tags": {"exp": "e"}}) + "\n" for i in range(n)),
        "csv": "workdir,param.x,tag.exp\n" + "".join(f"csv/{i},{i},e\n" for i in range(n)),
        "yaml": "".join(f"- workdir: yaml/{i}\n  parameters: {{x: '{i}'}}\n  tags: {{exp: e}}\n" for i in range(n)),
    }
    for fmt, text in files.items():
        path = tmp / f"jobs.{fmt}"
        path.write_text(text)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "balsam", "job", "create", "--from", str(path), "-a", "Hello", "--site", "bulk-site"],
                              env=env, cwd=str(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out[fmt] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"job create --from {path} failed: {proc.stderr.decode()[-500:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--bulk", type=int, default=100_000)
    args = parser.parse_args()
    compileall.compile_dir(str(ROOT / "balsam"), quiet=1)
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="balsam-bench-cli-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        site = build_site(tmp, args.jobs)
        fill_s = time.perf_counter() - t0
        env = dict(os.environ, PYTHONPATH=str(ROOT), BALSAM_HOME=str(tmp / "home"), COLUMNS="120")
        env.pop("BALSAM_SITE_PATH", None)
        runs = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import click'": [py, "-c", "import click"],
            "balsam --help": [py, "-m", "balsam", "--help"],
            "balsam job ls": [py, "-m", "balsam", "job", "ls"],
            "balsam job ls --by-state": [py, "-m", "balsam", "job", "ls", "--by-state"],
            "balsam job ls --tag experiment=e3 -s FAILED -n 20": [py, "-m", "balsam", "job", "ls", "--tag", "experiment=e3", "-s", "FAILED",
                                                                  "-n", "20"],
        }
        results = {name: time_process(argv, site, env, args.repeat) for name, argv in runs.items()}
        bulk = bench_bulk(tmp, args.bulk, env)
    base, click_base = results["python -c pass"], results["python -c 'import click'"]
    aims = {"balsam --help": 5.0, "balsam job ls --by-state": 8.0}
    print(f"{args.jobs:,}-job site filled in {fill_s:.1f} s; median of {args.repeat} runs per command")
    print(f"{'command':52} {'ms':>7} {'x pass':>7} {'x click':>8}  aim")
    for name, t in results.items():
        aim = aims.get(name)
        verdict = "" if aim is None else f"< {aim:.0f}x pass: {'ok' if t / base < aim else 'MISSED'}"
        print(f"{name:52} {t * 1000:7.1f} {t / base:7.2f} {t / click_base:8.2f}  {verdict}")
    print(f"creating {args.bulk:,} jobs: Python API in-process {bulk['api']:.2f} s ({args.bulk / bulk['api']:,.0f}/s)")
    for fmt in ("jsonl", "csv", "yaml"):
        print(f"  balsam job create --from jobs.{fmt:5}  {bulk[fmt]:.2f} s ({args.bulk / bulk[fmt]:,.0f}/s, a whole process) "
              f"-> {bulk[fmt] / bulk['api']:.2f}x the API")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_cli.json").write_text(json.dumps({"jobs": args.jobs, "seconds": results,
                                                    "ratio_to_pass": {k: v / base for k, v in results.items()},
                                                    "ratio_to_click": {k: v / click_base for k, v in results.items()},
                                                    "bulk_jobs": args.bulk, "bulk_seconds": bulk}, indent=1))


if __name__ == "__main__":
    main()
