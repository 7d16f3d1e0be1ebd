"""One-shot runner for Python apps: ``python -m balsam.launcher.pyrun SPEC``.

Used where a warm worker cannot serve: several ranks under MPI (an app using mpi4py), another node than the
launcher's, an app with its own ``python_exe``, or a ``shell_preamble``. ``SPEC`` is a pickle the launcher
wrote in the job's workdir (the workdir is on the shared filesystem; the compute node needs no DB). Every rank
runs ``run()``; rank 0 writes the outcome to the result file the spec names, which the launcher reads when the
launch ends. The process exits 0 on success and 1 if ``run()`` raised.

The rank is mpi4py's if the app imported it, else the MPI launcher's environment (PMI_RANK, PMIX_RANK,
OMPI_COMM_WORLD_RANK, SLURM_PROCID, PALS_RANKID, ALPS_APP_PE), else 0.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any, Dict, List, Optional

from balsam.launcher.pyexec import Outcome

MODULE = "balsam.launcher.pyrun"
RANK_VARS = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PALS_RANKID", "ALPS_APP_PE")


def current_rank(env: Optional[Dict[str, str]] = None) -> int:
    """This process's MPI rank (0 outside MPI)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        try:
            return int(mpi.COMM_WORLD.Get_rank())
        except Exception:
            pass
    env = dict(os.environ) if env is None else env
    for var in RANK_VARS:
        value = env.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def write_result(path: str, outcome: Any) -> None:
    """Write the outcome atomically (the launcher may read it from another node)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(outcome, f, protocol=4)
    os.replace(tmp, path)


def run_spec(spec: Dict[str, Any]) -> int:
    """Run the job a spec describes; returns the exit code."""
    from balsam.launcher.pyexec import call_run, load_app, pickle_exception

    key, class_name, module_name, source = spec["app"]
    outcome: Outcome
    try:
        app = load_app(source, class_name, module_name)
    except Exception as exc:
        print(f"balsam: cannot load the app: {exc}", file=sys.stderr)
        outcome = (1, None, pickle_exception(exc, ""))
    else:
        outcome = call_run(app, spec["job"], spec["params"])
    sys.stdout.flush()
    sys.stderr.flush()
    if current_rank() == 0:
        write_result(spec["result"], outcome)
    return int(outcome[0])


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m {MODULE} SPEC_FILE (written by the Balsam launcher)", file=sys.stderr)
        return 2
    try:
        with open(args[0], "rb") as f:
            spec = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        print(f"balsam: cannot read the job spec {args[0]}: {exc}", file=sys.stderr)
        return 2
    return run_spec(spec)


if __name__ == "__main__":
    sys.exit(main())
