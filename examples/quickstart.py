"""The Balsam quickstart, offline: a shell app and a Python app, a local BatchJob, results as they finish.

Run from anywhere after `balsam site init ./my-site -n my-site && balsam site start --site ./my-site`
(scripts/demo does all of it):

    python examples/quickstart.py [--site-name my-site] [-n 10]
"""

from __future__ import annotations

import argparse
import time

from balsam.api import ApplicationDefinition, BatchJob, Job


def define_apps(site_name: str) -> tuple:
    class Hello(ApplicationDefinition):
        """Say hello."""

        site = site_name
        command_template = "echo Hello, {{ say_hello_to }}!"

    class VecNorm(ApplicationDefinition):
        """The Euclidean norm of a vector, computed on the compute node."""

        site = site_name

        def run(self, vec: list) -> float:
            return sum(x**2 for x in vec) ** 0.5

    Hello.sync()
    VecNorm.sync()
    return Hello, VecNorm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-name", default="my-site")
    parser.add_argument("-n", type=int, default=10, help="how many VecNorm jobs")
    parser.add_argument("--job-mode", default="mpi", choices=["mpi", "serial"])
    args = parser.parse_args()

    Hello, VecNorm = define_apps(args.site_name)
    tag = {"demo": str(int(time.time()))}
    hello = Hello.submit(workdir=f"demo/hello-{tag['demo']}", say_hello_to="world", tags=tag)
    norms = [VecNorm.submit(workdir=f"demo/norm-{tag['demo']}-{i}", vec=[3, 4 * i], tags=tag) for i in range(args.n)]
    batch = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode=args.job_mode, queue="local", project="local",
                                    site_name=args.site_name)
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


if __name__ == "__main__":
    main()
