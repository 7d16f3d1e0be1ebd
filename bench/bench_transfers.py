"""Benchmark: stage-in of 10,000 small files for 10,000 jobs through rsync over ssh to localhost.

Three ways, timed in the same run against the same sshd (``bash .ci/sshd.sh start``):

* **service**: the transfer service as the agent runs it (batches of ``--batch-size`` items, one rsync and
  one ssh connection per batch, at most ``--concurrent`` at once), from the first cycle until every job is
  STAGED_IN, each file placed in its own job's workdir;
* **one rsync per file**: what a script would do job by job; timed on a sample of ``--sample`` files run one
  after the other, and scaled to all files (said so in the output);
* **one rsync of the whole tree**: the floor; it copies the folder as it is, into one place, and does not
  put anything in the jobs' workdirs.

Usage::

    python bench/bench_transfers.py [--files 10000] [--batch-size 100] [--concurrent 5] [--sample 200]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sshd_rsh() -> str:
    """The ssh command for the test sshd, or exit with how to start it."""
    folder = Path(os.environ.get("BALSAM_CI_SSHD_DIR", "/tmp/balsam-ci-sshd"))
    port = folder / "port"
    if not port.exists():
        print("the test sshd is not running: bash .ci/sshd.sh start", file=sys.stderr)
        sys.exit(2)
    return (f"ssh -p {port.read_text().strip()} -i {folder / 'client_key'} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={folder / 'known_hosts'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=5)
    parser.add_argument("--sample", type=int, default=200, help="files copied one rsync each (scaled to --files)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rsh = sshd_rsh()
    host = f"{getpass.getuser()}@127.0.0.1"

    with tempfile.TemporaryDirectory(prefix="balsam-bench-xfer-") as tmp_text:
        tmp = Path(tmp_text)
        os.environ["BALSAM_HOME"] = str(tmp / "home")
        far = tmp / "far" / "in"
        for d in range(0, args.files, 1000):
            (far / f"d{d // 1000:03d}").mkdir(parents=True)
        for i in range(args.files):
            (far / f"d{i // 1000:03d}" / f"f{i:05d}.dat").write_bytes(os.urandom(200))

        from balsam._api import sites
        from balsam.api import ApplicationDefinition, Job
        from balsam.services.transfers import TransferService
        from balsam.settings import SiteSettings, TransferSettings
        from balsam.site import init_site, refresh_site_row

        init_site(tmp / "site", name="bench-xfer")
        site = sites.resolve("bench-xfer")
        settings = TransferSettings(transfer_locations={"far": f"rsync://{host}"}, rsync_rsh=rsh, batch_size=args.batch_size,
                                    max_concurrent_transfers=args.concurrent, num_items_query_limit=max(2000, args.batch_size * args.concurrent))
        refresh_site_row(site.store, SiteSettings(transfers=settings))

        class Analyze(ApplicationDefinition):
            site = "bench-xfer"
            command_template = "wc -c input.dat"
            transfers = {"input": {"required": True, "direction": "in", "local_path": "input.dat"}}

        Analyze.sync()
        Job.objects.bulk_create([Job(workdir=f"j{i:05d}", app_id=Analyze,
                                     transfers={"input": f"far:{far}/d{i // 1000:03d}/f{i:05d}.dat"}) for i in range(args.files)])
        service = TransferService(site, settings, env=dict(os.environ))
        start = time.perf_counter()
        while Job.objects.filter(state="STAGED_IN").count() < args.files:
            service.run_cycle()
            failed = Job.objects.filter(state="FAILED").count()
            if failed:
                print(f"{failed} jobs FAILED during stage-in", file=sys.stderr)
                return 1
            time.sleep(0.05)
        t_service = time.perf_counter() - start
        sample_job = site.layout.data / "j00042" / "input.dat"
        assert sample_job.read_bytes() == (far / "d000" / "f00042.dat").read_bytes()

        # one rsync per file, on a sample
        per_file_dest = tmp / "per-file"
        n = min(args.sample, args.files)
        start = time.perf_counter()
        for i in range(n):
            dest = per_file_dest / f"j{i:05d}"
            dest.mkdir(parents=True)
            subprocess.run(["rsync", "-a", "-e", rsh, f"{host}:{far}/d{i // 1000:03d}/f{i:05d}.dat", str(dest / "input.dat")],
                           check=True, stdin=subprocess.DEVNULL)
        t_sample = time.perf_counter() - start
        t_per_file = t_sample * args.files / n

        # one rsync of the whole tree
        start = time.perf_counter()
        subprocess.run(["rsync", "-a", "-e", rsh, f"{host}:{far}/", str(tmp / "tree") + "/"], check=True, stdin=subprocess.DEVNULL)
        t_tree = time.perf_counter() - start
        assert len(list((tmp / "tree").rglob("*.dat"))) == args.files

    result: Dict[str, Any] = {
        "files": args.files, "batch_size": args.batch_size, "concurrent": args.concurrent,
        "service_s": round(t_service, 2), "per_file_s_extrapolated": round(t_per_file, 1), "per_file_sample": n,
        "per_file_sample_s": round(t_sample, 2), "whole_tree_s": round(t_tree, 2),
        "per_file_over_service": round(t_per_file / t_service, 1), "service_over_whole_tree": round(t_service / t_tree, 1),
    }
    print(f"stage-in of {args.files} files (200 B each) for {args.files} jobs, rsync over ssh to 127.0.0.1")
    print(f"  service (batches of {args.batch_size}, {args.concurrent} at once): {t_service:8.2f} s  "
          f"{args.files / t_service:8.0f} files/s")
    print(f"  one rsync per file:        {t_per_file:8.1f} s  (measured on {n} files in {t_sample:.2f} s, scaled to {args.files})")
    print(f"  one rsync of the tree:     {t_tree:8.2f} s  (the floor: nothing placed in the jobs' workdirs)")
    print(f"  ratios: one-rsync-per-file / service = {result['per_file_over_service']}x;  "
          f"service / whole-tree = {result['service_over_whole_tree']}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
