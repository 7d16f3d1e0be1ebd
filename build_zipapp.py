#!/usr/bin/env python3
"""Build ``dist/balsam.pyz``: the whole ``balsam`` command in one file, run with ``python3 balsam.pyz ...``.

What goes in:
- the ``balsam`` package from this source tree (Python files and package data: presets, templates, web assets);
- its pure-Python dependencies (click, jinja2, markupsafe, pyyaml, cloudpickle; starlette, uvicorn, h11, wsproto and theirs), at the versions pinned in
  ``zipapp-requirements.txt`` (chosen to support every Python Balsam supports), read from their wheels
  (downloaded once into ``build/wheels/``; ``--deps-from-env`` copies the installed distributions instead,
  for a build machine without PyPI). Their optional C speedups are left out: a zip cannot load compiled
  modules, and each of these falls back to pure Python on its own;
- psutil, which needs its compiled module: it is stored under ``_balsam_native/`` and unpacked once, on the
  first run that needs it, into a per-user, per-build cache (``$BALSAM_CACHE``, else
  ``$XDG_CACHE_HOME/balsam`` or ``~/.cache/balsam``), under a file lock so concurrent first runs do not race.
  It is compiled for the build machine's OS and CPU (an ``abi3`` wheel works with any CPython 3); elsewhere
  the import fails and the code paths that use psutil say so.
- ``_balsam_build.json``: the Balsam version, the dependency versions, and the build's content hash;
- byte-code (``.pyc`` beside each ``.py``) for the building Python, since zipimport cannot write a cache and
  would otherwise compile every module at every start (``--no-bytecode`` leaves it out).

mpi4py is not included: it must match the site's own MPI, so it comes from the site's Python environment.

The build is reproducible: the same inputs give the same bytes (sorted entries, fixed timestamps and modes,
no byte-code, no absolute paths).

    python build_zipapp.py [-o dist/balsam.pyz] [--python "/usr/bin/env python3"]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata as md
import io
import json
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Tuple

ROOT = Path(__file__).resolve().parent
PURE_DEPS = ("click", "jinja2", "markupsafe", "pyyaml", "cloudpickle", "starlette", "uvicorn", "h11", "wsproto", "anyio", "idna",
             "sniffio", "typing_extensions", "exceptiongroup")
NATIVE_DEPS = ("psutil",)
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".pyd", ".dylib", ".c", ".h", ".pyx")
SKIP_PARTS = ("__pycache__",)

MAIN = '''\
"""Entry point of balsam.pyz (written by build_zipapp.py)."""
import sys

if sys.version_info < (3, 9):
    sys.exit("balsam needs Python 3.9 or newer; this is " + sys.version.split()[0])

try:
    from balsam._zipapp import install_native

    install_native()
except KeyboardInterrupt:  # Ctrl-C while starting: quiet, as later
    sys.exit(130)

from balsam.__main__ import run

run()
'''


def _requirements() -> Dict[str, str]:
    """name -> pinned version, from zipapp-requirements.txt."""
    out = {}
    for line in (ROOT / "zipapp-requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower()] = version.strip()
    return out


def _wheel(name: str, version: str, cache: Path) -> Path:
    """The cached wheel of ``name==version`` (downloaded with pip if missing)."""
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", str(cache), f"{name}=={version}"]
        with open(cache / ".lock", "w") as lock:  # one download at a time into the cache (builds may run at once)
            fcntl.flock(lock, fcntl.LOCK_EX)
            for attempt in range(3):  # a registry's passing refusal is not the end of the build
                found = sorted(cache.glob(pattern))
                if found or subprocess.run(cmd).returncode == 0:
                    break
                time.sleep(2 + 3 * attempt)
            else:
                raise SystemExit(f"build_zipapp: cannot download {name}=={version}; retry with network, or use --deps-from-env")
        found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"build_zipapp: no wheel for {name}=={version} in {cache}")
    return found[0]


def _wheel_files(path: Path) -> List[Tuple[str, bytes]]:
    """(archive path, bytes) of a wheel's importable files."""
    out = []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or not parts or parts[0].endswith((".dist-info", ".data")) or any(p in SKIP_PARTS for p in parts):
                continue
            out.append((info.filename, zf.read(info)))
    return out


def _dist_files(name: str) -> Tuple[str, List[Tuple[str, Path]]]:
    """(version, [(archive path, file on disk)]) of an installed distribution's importable files."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise SystemExit(f"build_zipapp: {name} is not installed in this Python ({sys.executable}); pip install it first") from None
    out = []
    for f in dist.files or []:
        parts = PurePosixPath(str(f)).parts
        if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] in ("..", "bin"):
            continue
        if any(p in SKIP_PARTS for p in parts):
            continue
        out.append((str(PurePosixPath(*parts)), Path(str(dist.locate_file(f)))))
    return dist.version, out


def _balsam_files() -> List[Tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / "balsam").rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_dir() or any(p in SKIP_PARTS for p in rel.parts) or path.suffix in (".pyc", ".pyo"):
            continue
        out.append((rel.as_posix(), path))
    return out


def _write(zf: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
    info.create_system = 3
    zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def _dependency_files(dep: str, from_env: bool, cache: Path) -> Tuple[str, List[Tuple[str, bytes]]]:
    if from_env:
        version, files = _dist_files(dep)
        return version, [(name, path.read_bytes()) for name, path in files]
    version = _requirements()[dep]
    return version, _wheel_files(_wheel(dep, version, cache))


def collect(from_env: bool = False, cache: Path = ROOT / "build" / "wheels") -> Tuple[Dict[str, bytes], Dict[str, str]]:
    """Every archive member (name -> bytes) and the dependency versions."""
    from balsam import __version__

    members: Dict[str, bytes] = {}
    versions: Dict[str, str] = {"balsam": __version__}
    for name, path in _balsam_files():
        members[name] = path.read_bytes()
    for dep in PURE_DEPS:
        version, files = _dependency_files(dep, from_env, cache)
        versions[dep] = version
        for name, data in files:
            if not name.endswith(SKIP_SUFFIXES):
                members[name] = data
    for dep in NATIVE_DEPS:
        version, files = _dependency_files(dep, from_env, cache)
        versions[dep] = version
        for name, data in files:
            if not name.endswith((".pyc", ".pyo")):
                members[f"_balsam_native/{name}"] = data
    members["__main__.py"] = MAIN.encode()
    return members, versions


def _pyc(name: str, source: bytes) -> bytes:
    """Byte-code for one module as an unchecked hash-based .pyc (PEP 552): loaded as is, with no timestamp to
    compare, so it is valid wherever the zip is unpacked or copied. Another Python version sees the magic
    number differ and compiles the source instead."""
    import importlib.util
    import marshal

    code = compile(source, name, "exec", dont_inherit=True)
    flags = (0b01).to_bytes(4, "little")  # hash-based, not checked against the source
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)


def add_bytecode(members: Dict[str, bytes]) -> None:
    """A .pyc beside every .py outside the native part, for the building Python (zipimport reads these)."""
    for name in sorted(members):
        if name.endswith(".py") and not name.startswith("_balsam_native/") and name != "__main__.py":
            try:
                members[name[:-3] + ".pyc"] = _pyc(name, members[name])
            except SyntaxError:
                pass  # code for another Python version (a dependency's compat module): compiled where it is used


def build(output: Path, interpreter: str = "/usr/bin/env python3", bytecode: bool = True, from_env: bool = False) -> Dict[str, str]:
    """Write the zipapp to ``output``; returns the build info."""
    members, versions = collect(from_env)
    if bytecode:
        add_bytecode(members)
    digest = hashlib.sha256()
    for name in sorted(members):
        digest.update(name.encode() + b"\0" + hashlib.sha256(members[name]).digest())
    info = {"version": versions["balsam"], "dependencies": versions, "build_hash": digest.hexdigest()[:16],
            "python_built_with": ".".join(map(str, sys.version_info[:3])), "native": list(NATIVE_DEPS)}
    members["_balsam_build.json"] = json.dumps(info, indent=1, sort_keys=True).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(members):
            _write(zf, name, members[name])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_bytes(b"#!" + interpreter.encode() + b"\n" + buf.getvalue())
    tmp.chmod(0o755)
    os.replace(tmp, output)
    return info


def main(argv: Iterable[str] = ()) -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # Byte-code must not depend on the per-process string hash seed: before Python 3.11, marshal writes a
        # frozenset constant in hash order. Run the build again with a fixed seed.
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-o", "--output", default=str(ROOT / "dist" / "balsam.pyz"), help="where to write the zipapp")
    parser.add_argument("--python", default="/usr/bin/env python3", help="the interpreter line (#!) of the zipapp")
    parser.add_argument("--no-bytecode", action="store_true", help="leave out .pyc files (smaller; slower start)")
    parser.add_argument("--deps-from-env", action="store_true", help="bundle the installed dependencies, not the pinned wheels")
    args = parser.parse_args(list(argv) or None)
    sys.path.insert(0, str(ROOT))
    out = Path(args.output)
    info = build(out, args.python, bytecode=not args.no_bytecode, from_env=args.deps_from_env)
    size = out.stat().st_size
    deps = ", ".join(f"{k} {v}" for k, v in sorted(info["dependencies"].items()) if k != "balsam")
    print(f"wrote {out} ({size / 1e6:.2f} MB): balsam {info['version']} build {info['build_hash']} with {deps}")


if __name__ == "__main__":
    main(sys.argv[1:])
