"""The Balsam quickstart, offline: a shell app and a Python app, a local BatchJob, results as they finish.

Run after `balsam site init ./demo-site -n demo-site && balsam site start --site ./demo-site` (scripts/demo does
all of it); BALSAM_QUICKSTART_SITE names another site:

    python examples/quickstart.py [-n 10] [--job-mode serial]
"""

from __future__ import annotations

import argparse
import os
import time

from balsam.api import ApplicationDefinition, BatchJob, Job

SITE_NAME = os.environ.get("BALSAM_QUICKSTART_SITE", "demo-site")
"""The site the apps belong to. A module-level constant: the apps' code is shipped to the site as source."""


class Hello(ApplicationDefinition):
    """Say hello."""

    site = SITE_NAME
    command_template = "echo Hello, {{ say_hello_to }}!"


class VecNorm(ApplicationDefinition):
    """The Euclidean norm of a vector, computed on the compute node."""

    site = SITE_NAME

    def run(self, vec: list) -> float:
        return float(sum(x**2 for x in vec) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="how many VecNorm jobs")
    parser.add_argument("--job-mode", default="mpi", choices=["mpi", "serial"])
    args = parser.parse_args()

    Hello.sync()
    VecNorm.sync()
    tag = {"demo": str(int(time.time()))}
    hello = Hello.submit(workdir=f"demo/hello-{tag['demo']}", say_hello_to="world", tags=tag)
    norms = [VecNorm.submit(workdir=f"demo/norm-{tag['demo']}-{i}", vec=[3, 4 * i], tags=tag) for i in range(args.n)]
    batch = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode=args.job_mode, queue="local", project="local",
                                    site_name=SITE_NAME)
    print(f"submitted {1 + len(norms)} jobs and BatchJob {batch.id}; waiting for results...")
    t0 = time.time()
    for job in Job.objects.as_completed([hello, *norms], timeout=300):
        if job.id == hello.id:
            print(f"  {job.workdir}: {job.workdir_path.joinpath('job.out').read_text().strip()}")
        else:
            print(f"  {job.workdir}: norm of {job.parameters['vec']} = {job.result():g}")
    print(f"all {1 + len(norms)} jobs finished in {time.time() - t0:.1f} s")
    batch.state = "pending_deletion"
    batch.save()
    # Wait for the agent to end the allocation: scripts/demo stops the agent next, and a BatchJob left in
    # pending_deletion would show so in `balsam queue ls` until the agent ran again.
    deadline = time.time() + 30
    while batch.state != "finished" and time.time() < deadline:
        time.sleep(0.2)
        batch.refresh_from_db()


if __name__ == "__main__":
    main()
