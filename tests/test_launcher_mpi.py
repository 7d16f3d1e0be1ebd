"""Real MPI: multi-rank jobs through the platform's launch line (MPICH's mpiexec, Open MPI's mpirun), and an
mpi4py ``run()`` app whose rank 0 result comes back. Install with ``bash .ci/mpi.sh`` (makes ``.venv-mpi``)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from typing import Any, Dict

import pytest

from tests.launcher_support import REPO, configure, job_row, output, run, runnable, states

pytestmark = pytest.mark.mpi

SHIM = "/usr/local/lib/mpich-abi"
VENV_PYTHON = str(REPO / ".venv-mpi" / "bin" / "python")
FLAVORS: Dict[str, Dict[str, Any]] = {
    "mpich": {"mpi_launcher": "mpiexec", "mpi_executable": "mpiexec.mpich", "mpi_options": {}},
    "openmpi": {"mpi_launcher": "mpirun", "mpi_executable": "mpirun.openmpi",
                "mpi_options": {"allow_run_as_root": "true", "oversubscribe": "true"}},
}
RANK = {"mpich": "$PMI_RANK", "openmpi": "$OMPI_COMM_WORLD_RANK"}


def need(flavor: str) -> None:
    exe = FLAVORS[flavor]["mpi_executable"]
    if shutil.which(exe) is None:
        pytest.skip(f"{exe} is not installed (run: bash .ci/mpi.sh)")


def need_mpi4py() -> None:
    need("mpich")
    if not os.path.exists(VENV_PYTHON) or not os.path.exists(f"{SHIM}/libmpi.so.12"):
        pytest.skip("no .venv-mpi with mpi4py and the MPICH shim (run: bash .ci/mpi.sh)")
    if subprocess.run([VENV_PYTHON, "-c", "import mpi4py"], capture_output=True).returncode != 0:
        pytest.skip(".venv-mpi has no mpi4py (run: bash .ci/mpi.sh)")


@pytest.mark.parametrize("flavor", ["mpich", "openmpi"])
def test_two_and_four_rank_jobs(site: Any, flavor: str) -> None:
    from balsam.api import ApplicationDefinition

    need(flavor)

    class Ranks(ApplicationDefinition):
        site = "test-site"
        command_template = "echo rank RANK_VAR threads=$OMP_NUM_THREADS job=$BALSAM_JOB_ID".replace("RANK_VAR", RANK[flavor])

    configure(site.path, **FLAVORS[flavor])
    two = Ranks.submit("mpi/two", ranks_per_node=2)
    four = Ranks.submit("mpi/four", ranks_per_node=4, threads_per_rank=1)
    ids = runnable(site.store, [two, four])
    assert run(site, "mpi", idle_ttl_s=0.5) == 0
    assert states(site.store, ids) == {ids[0]: "JOB_FINISHED", ids[1]: "JOB_FINISHED"}
    lines2 = sorted(output(site.path, "mpi/two").split("\n"))[1:]
    lines4 = sorted(output(site.path, "mpi/four").split("\n"))[1:]
    assert lines2 == [f"rank {r} threads=1 job={ids[0]}" for r in range(2)]
    assert lines4 == [f"rank {r} threads=1 job={ids[1]}" for r in range(4)]


def test_multi_rank_job_in_serial_mode(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    need("mpich")

    class Ranks(ApplicationDefinition):
        site = "test-site"
        command_template = "echo rank $PMI_RANK; exit $PMI_RANK"

    configure(site.path, **FLAVORS["mpich"])
    [job_id] = runnable(site.store, [Ranks.submit("mpi/serial", ranks_per_node=2)])
    assert run(site, "serial", idle_ttl_s=0.5) == 0
    row = job_row(site.store, job_id)
    assert row["state"] == "RUN_ERROR" and row["return_code"] != 0, "rank 1 exited 1"
    assert sorted(output(site.path, "mpi/serial").split()) == ["0", "1", "rank", "rank"]


def test_mpi4py_app_returns_rank_zero_result(site: Any) -> None:
    from balsam.api import ApplicationDefinition

    need_mpi4py()

    class AllReduce(ApplicationDefinition):
        site = "test-site"
        python_exe = VENV_PYTHON
        environment_variables = {"MPI4PY_LIBMPI": "libmpi.so.12", "LD_LIBRARY_PATH": SHIM}

        def run(self, scale: int) -> Any:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            total = comm.allreduce(comm.Get_rank() * scale)
            with open(f"rank{comm.Get_rank()}.txt", "w") as f:  # every rank runs run() in the job's workdir
                f.write(str(comm.Get_size()))
            return (comm.Get_rank(), comm.Get_size(), total)

    configure(site.path, **FLAVORS["mpich"])
    [job_id] = runnable(site.store, [AllReduce.submit("mpi/py", scale=10, ranks_per_node=4)])
    assert run(site, "mpi", idle_ttl_s=0.5) == 0
    row = job_row(site.store, job_id)
    assert row["state"] == "JOB_FINISHED", output(site.path, "mpi/py")
    assert pickle.loads(row["serialized_return_value"]) == (0, 4, 60)
    assert sorted(p.name for p in (site.path / "data" / "mpi" / "py").glob("rank*.txt")) == [f"rank{r}.txt" for r in range(4)]


@pytest.mark.parametrize("program", ["mpirun.openmpi", "mpiexec.mpich"])
def test_local_preset_runs_multi_rank_jobs_with_whichever_mpiexec_is_on_path(site: Any, tmp_path: Any, monkeypatch: Any,
                                                                              program: str) -> None:
    """The local preset says ``mpi_launcher: auto``: with Debian's Open MPI ``mpiexec`` (as root) or MPICH's
    first on PATH, a 2-rank job runs, with no launcher settings touched."""
    from balsam.api import ApplicationDefinition

    target = shutil.which(program)
    if target is None:
        pytest.skip(f"{program} is not installed (run: bash .ci/mpi.sh)")
    first = tmp_path / f"first-{program}"
    first.mkdir()
    (first / "mpiexec").write_text(f'#!/bin/sh\nexec {target} "$@"\n')  # Hydra finds its proxy next to argv[0]
    (first / "mpiexec").chmod(0o755)
    monkeypatch.setenv("PATH", f"{first}:{os.environ['PATH']}")

    class Ranks(ApplicationDefinition):
        site = "test-site"
        command_template = "echo rank ${PMI_RANK:-$OMPI_COMM_WORLD_RANK}"

    [job_id] = runnable(site.store, [Ranks.submit("mpi/auto", ranks_per_node=2)])
    assert run(site, "mpi", idle_ttl_s=0.5) == 0
    assert states(site.store, [job_id]) == {job_id: "JOB_FINISHED"}, output(site.path, "mpi/auto")
    assert sorted(line for line in output(site.path, "mpi/auto").split("\n") if line) == ["rank 0", "rank 1"]
    log = "\n".join(p.read_text() for p in (site.path / "log").glob("*"))
    assert f"as {first / 'mpiexec'}" in log  # the launcher's log says which MPI it found
