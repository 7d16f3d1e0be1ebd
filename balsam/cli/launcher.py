"""``balsam launcher``: run the pilot inside a batch allocation (the job template calls it)."""

from __future__ import annotations

import sys
from typing import Optional, Tuple

import click


@click.command("launcher")
@click.option("-j", "--job-mode", type=click.Choice(["mpi", "serial"]), required=True,
              help="mpi: one process starts every job (multi-node, MPI). serial: one worker per node, for floods of single-node jobs.")
@click.option("-t", "--wall-time-min", type=float, required=True, help="Minutes the allocation has; running jobs are timed out just before.")
@click.option("-tag", "--tag", "tags", multiple=True, metavar="K=V", help="Run only jobs with this tag (repeatable).")
@click.option("-p", "--part", "parts", multiple=True, metavar="MODE:N[:K=V,...]",
              help="Split the allocation: a sub-launcher in MODE on the next N nodes for jobs with these tags (repeatable).")
@click.option("--batch-job-id", type=int, default=None, help="The BatchJob this allocation runs (links the lease to it).")
@click.option("--idle-ttl", type=float, default=None, help="Stop after this many seconds with nothing to run (default: launcher.idle_ttl_s).")
@click.option("--site", "site", metavar="PATH", default=None, help="The site (default: BALSAM_SITE_PATH, or the one around the working directory).")
@click.option("--serial-workers", type=click.Choice(["auto", "thread", "process"]), default="auto", hidden=True,
              help="Where serial mode's node worker runs on a single node.")
def launcher(job_mode: str, wall_time_min: float, tags: Tuple[str, ...], parts: Tuple[str, ...], batch_job_id: Optional[int],
             idle_ttl: Optional[float], site: Optional[str], serial_workers: str) -> None:
    """Run the launcher: acquire runnable jobs and run them until idle, out of time, or signalled.

    \b
    Examples:
      balsam launcher -j mpi -t 60
      balsam launcher -j serial -t 30 --tag experiment=xpcs --idle-ttl 120
      balsam launcher -j mpi -t 120 -p mpi:2:role=leader -p serial:6:role=worker
    """
    from balsam.cli._common import site_root
    from balsam.launcher import run_launcher
    from balsam.launcher.partitions import parse_tags

    code = run_launcher(site_root(site), job_mode=job_mode, wall_time_min=wall_time_min, filter_tags=parse_tags(tags),
                        partitions=list(parts), batch_job_id=batch_job_id, idle_ttl_s=idle_ttl, serial_workers=serial_workers)
    sys.exit(code)
