"""Zipapp benchmark: size, and start-up of ``python3 balsam.pyz --help`` / ``job ls`` (first run and warm).

Ratios against ``python3 -c pass`` and the installed ``balsam`` in the same run (the machine is noisy: read
the ratios). The first run unpacks psutil into an empty cache; warm runs find it there.

    python bench/bench_zipapp.py [--repeat 15] [--jobs 10000]
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
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent


def wall(argv: List[str], env: Dict[str, str], repeat: int) -> float:
    """Median wall time of a whole process, in ms."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the site that `job ls` lists from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="balsam-bench-zip-") as d:
        tmp = Path(d)
        pyz = tmp / "balsam.pyz"
        subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(pyz)], check=True, stdout=subprocess.DEVNULL)
        home = tmp / "home"
        home.mkdir()
        env = {"HOME": str(home), "PATH": os.environ["PATH"], "BALSAM_HOME": str(home / ".balsam")}
        zip_cmd = [sys.executable, "-I", str(pyz)]
        installed = [sys.executable, "-m", "balsam"]
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "balsam")], check=True)

        # First run: an empty cache, so psutil is unpacked.
        first = []
        for _ in range(5):
            shutil.rmtree(home / ".cache", ignore_errors=True)
            first.append(wall([*zip_cmd, "--help"], env, 1))
        site = tmp / "site"
        subprocess.run([*zip_cmd, "site", "init", str(site), "-n", "bench", "--preset", "local"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        jobs = tmp / "jobs.jsonl"
        (tmp / "apps.py").write_text("from balsam.api import ApplicationDefinition\n"
                                     "class Noop(ApplicationDefinition):\n    site = 'bench'\n    command_template = 'true'\n")
        subprocess.run([*zip_cmd, "app", "sync", str(tmp / "apps.py"), "--site", "bench"], env=env, check=True, stdout=subprocess.DEVNULL)
        jobs.write_text("".join(f'{{"workdir": "w/{i}", "app": "Noop"}}\n' for i in range(args.jobs)))
        subprocess.run([*zip_cmd, "job", "create", "--site", "bench", "--from", str(jobs), "-y"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        env_site = dict(env, BALSAM_SITE_PATH=str(site))
        base = wall([sys.executable, "-c", "pass"], env, args.repeat)
        rows = {
            "zipapp --help (warm)": wall([*zip_cmd, "--help"], env, args.repeat),
            "installed --help": wall([*installed, "--help"], dict(env, PYTHONPATH=str(ROOT)), args.repeat),
            "zipapp job ls (warm)": wall([*zip_cmd, "job", "ls"], env_site, args.repeat),
            "installed job ls": wall([*installed, "job", "ls"], dict(env_site, PYTHONPATH=str(ROOT)), args.repeat),
        }
        size = pyz.stat().st_size
        print(f"balsam.pyz: {size / 1e6:.2f} MB; python3 -c pass: {base:.0f} ms")
        print(f"  zipapp --help, first run (unpacks psutil): {statistics.median(first):.0f} ms (aim < 1000 ms)")
        for name, ms in rows.items():
            print(f"  {name:<24} {ms:6.0f} ms  = {ms / base:4.2f}x python -c pass")
        print(f"  zipapp/installed: --help {rows['zipapp --help (warm)'] / rows['installed --help']:.2f}x, "
              f"job ls {rows['zipapp job ls (warm)'] / rows['installed job ls']:.2f}x (aim: warm --help < 5x python -c pass, "
              f"within 1.3x of installed)")


if __name__ == "__main__":
    main()
