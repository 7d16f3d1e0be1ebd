"""Shared helpers for the platform tests (import as ``from tests.platforms_support import ...``): fake programs that record how they were called, and checks that a
real scheduler daemon is up (so daemon tests skip with a clear reason instead of failing)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent

RECORDER = '''#!{python}
import json, os, sys
with open({log!r}, "a") as f:
    f.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd(),
                        "env": {{k: os.environ.get(k) for k in {watch!r}}}}}) + "\\n")
sys.exit({rc})
'''


def fixture(*parts: str) -> str:
    """The text of a fixture file under tests/fixtures."""
    return FIXTURES.joinpath(*parts).read_text()


def make_recorder(bin_dir: Path, name: str, log: Path, watch: Sequence[str] = (), rc: int = 0) -> Path:
    """Write an executable ``bin_dir/name`` that appends one JSON line per call to ``log`` and exits ``rc``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(RECORDER.format(python=shutil.which("python3") or "/usr/bin/env python3", log=str(log), watch=list(watch), rc=rc))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def read_calls(log: Path) -> List[Dict[str, object]]:
    """Every call a recorder logged, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def env_with_path(bin_dir: Path, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment with ``bin_dir`` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def _ok(argv: List[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def slurm_status() -> Tuple[bool, str]:
    """Whether a Slurm controller answers, and why not."""
    if not shutil.which("sbatch"):
        return False, "Slurm is not installed (run: bash .ci/slurm.sh start)"
    if not _ok(["scontrol", "ping"]):
        return False, "slurmctld is not running (run: bash .ci/slurm.sh start)"
    return True, ""


def sge_status() -> Tuple[bool, str]:
    """Whether a Grid Engine qmaster answers, and why not."""
    if not shutil.which("qsub") or not shutil.which("qconf"):
        return False, "Grid Engine is not installed (run: bash .ci/sge.sh start)"
    if not _ok(["qstat"]):
        return False, "sge_qmaster is not running (run: bash .ci/sge.sh start)"
    return True, ""


def mpi_venv_python() -> Optional[str]:
    """The Python of the mpi4py venv .ci/mpi.sh makes, if there is one."""
    path = REPO / ".venv-mpi" / "bin" / "python"
    return str(path) if path.exists() else None
