"""How this Balsam was started, and how to start it again in a subprocess.

Subprocesses (the site agent, launchers in batch scripts, launcher workers) run ``sys.executable`` on the
zipapp itself when Balsam runs from ``balsam.pyz``, and ``sys.executable -m balsam`` otherwise: never a file
path inside the package, which does not exist inside a zip.
"""

from __future__ import annotations

import gc
import os
import shlex
import sys
import zipimport
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional


def zipapp_path() -> Optional[Path]:
    """The ``.pyz`` archive Balsam is running from, or None when it runs from an installed package."""
    import balsam

    loader = getattr(balsam, "__loader__", None)
    if isinstance(loader, zipimport.zipimporter):
        return Path(loader.archive).resolve()
    spec_origin = getattr(getattr(balsam, "__spec__", None), "origin", None) or ""
    marker = ".pyz" + os.sep
    if marker in spec_origin:
        return Path(spec_origin.split(marker, 1)[0] + ".pyz").resolve()
    return None


def balsam_argv() -> List[str]:
    """The argv prefix that runs the ``balsam`` command line in a new process."""
    archive = zipapp_path()
    if archive is not None:
        return [sys.executable, str(archive)]
    return [sys.executable, "-m", "balsam"]


def balsam_shell_words() -> str:
    """:func:`balsam_argv` as shell words, for batch scripts."""
    return " ".join(shlex.quote(a) for a in balsam_argv())


def subprocess_env(extra: Optional[dict] = None) -> dict:  # type: ignore[type-arg]
    """This process's environment for a Balsam subprocess, keeping an installed-from-source tree importable."""
    env = dict(os.environ)
    if zipapp_path() is None:
        import balsam

        root = str(Path(balsam.__file__).resolve().parent.parent)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    if extra:
        env.update(extra)
    return env


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC while bulk work creates many objects that collections would walk again and again.

    Process-wide, but safe to nest and to use from several threads: only the pause that found the GC
    enabled turns it back on.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
