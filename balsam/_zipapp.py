"""Running from ``balsam.pyz``: make the compiled dependencies (psutil) importable.

A zip cannot load compiled modules, so the zipapp stores them under ``_balsam_native/`` and this module
unpacks them once per build into a per-user cache, then puts that folder on ``sys.path``. Later runs only
check that the unpacked copy is complete (one ``stat``). Concurrent first runs are serialised by a file lock,
and the copy appears atomically (unpacked beside it, then renamed), so no run sees half of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

NATIVE_PREFIX = "_balsam_native/"
COMPLETE = ".complete"


def cache_root() -> Path:
    """``$BALSAM_CACHE``, else ``$XDG_CACHE_HOME/balsam``, else ``~/.cache/balsam``."""
    explicit = os.environ.get("BALSAM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "balsam"


def archive_path() -> Optional[Path]:
    """The zipapp this process runs from, if any."""
    from balsam.runtime import zipapp_path

    return zipapp_path()


def build_info(archive: Optional[Path] = None) -> Dict[str, Any]:
    """The zipapp's ``_balsam_build.json`` ({} when not running from a zipapp)."""
    archive = archive or archive_path()
    if archive is None:
        return {}
    with zipfile.ZipFile(archive) as zf:
        try:
            data: Dict[str, Any] = json.loads(zf.read("_balsam_build.json"))
            return data
        except KeyError:
            return {}


def native_dir(archive: Path, info: Dict[str, Any]) -> Path:
    """Where this build's compiled dependencies are unpacked."""
    return cache_root() / f"native-{info.get('version', 'unknown')}-{info.get('build_hash', 'unknown')}"


def _unpack(archive: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE).exists():
            return
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not name.startswith(NATIVE_PREFIX) or name.endswith("/"):
                    continue
                dest = tmp / name[len(NATIVE_PREFIX):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(zf.read(name))
        (tmp / COMPLETE).write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)


def install_native() -> Optional[Path]:
    """Unpack (first run) and put on sys.path the compiled dependencies of the running zipapp."""
    archive = archive_path()
    if archive is None:
        return None
    info = build_info(archive)
    if not info.get("native"):
        return None
    target = native_dir(archive, info)
    if not (target / COMPLETE).exists():
        try:
            _unpack(archive, target)
        except OSError as exc:  # no writable cache: psutil-dependent features will say they are unavailable
            sys.stderr.write(f"balsam: cannot unpack compiled dependencies into {target}: {exc}\n")
            return None
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    return target
