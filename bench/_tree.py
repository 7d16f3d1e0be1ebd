"""The code of a git revision, unpacked into a temporary tree: the "before" of a benchmark's ``--against REV``.

    with git_tree("main") as before:
        ...  # run the benchmark with PYTHONPATH=before and BALSAM_BENCH_TREE=before
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def git_tree(ref: str) -> Iterator[Path]:
    """A temporary folder holding ``git archive REF`` of this repository, removed afterwards. A ref git does not know
    ends the benchmark with git's one-line error."""
    tmp = Path(tempfile.mkdtemp(prefix="balsam-bench-ref-"))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], capture_output=True)
        if archive.returncode != 0:
            raise SystemExit(f"--against {ref}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
