"""Starting processes fast: ``posix_spawn`` in the job's directory, output to a file, its own session.

Where the C library allows (Linux, glibc >= 2.29), :mod:`.libcspawn` calls its ``posix_spawn`` directly: the GIL
is released while the child starts and the directory change is one of the child's own actions. Elsewhere,
``os.posix_spawn`` as below.

Measured on the 2-core machine kind (3,000 ``true`` in their own directories, output to a file, two at a
time): ``os.posix_spawn`` 2,200-2,600/s, ``subprocess.Popen`` 1,500-1,850/s, ``/bin/sh -c 'cd D && exec
true'`` through posix_spawn 1,400/s. ``posix_spawn`` has no "change directory" action in Python, so
:func:`spawn` changes this process's working directory around the call, under a lock. The launcher uses
absolute paths everywhere and removes the working directory from ``sys.path``, so nothing else depends on it.

Each job runs in its own session (``setsid``): signals to the launcher's terminal do not reach it, and the
launcher kills it and everything it started with one ``killpg``.

Also here: how to run a Balsam module in a new interpreter (``python -m balsam.launcher.X``, from the zipapp
when Balsam runs from one) and how to read the tail of a job's output.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from balsam.launcher.libcspawn import EnvBlock, LibcSpawner
from balsam.launcher.libcspawn import load as load_libc_spawner
from balsam.runtime import zipapp_path

_lock = threading.Lock()
_which_cache: Dict[Tuple[str, str], Optional[str]] = {}
_home = "/"
# Python ignores SIGPIPE and SIGXFSZ; a launcher may ignore others. Jobs start with the defaults.
_SIGDEF = tuple(
    s for s in (signal.SIGPIPE, getattr(signal, "SIGXFSZ", None), signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    if s is not None
)
OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
SHELL = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"

# Words that need a shell: anything but plain words and single-quoted strings (what shlex.quote produces).
_SAFE = re.compile(r"^(?:[A-Za-z0-9_@%+=:,./-]+|'[^']*')+$")
_SPLIT = re.compile(r"'[^']*'|[^\s']+|\s+")


def set_home(path: Path) -> None:
    """Work from the site root, and drop the working directory from ``sys.path`` so an import never looks into
    a job's directory (the working directory is the last job's after a spawn: nothing here uses relative paths)."""
    global _home
    _home = str(path)
    while "" in sys.path:
        sys.path.remove("")
    os.chdir(_home)


def env_block(base: Mapping[str, str]) -> EnvBlock:
    """``base`` prepared once for many spawns that each add a few variables (``spawn(..., env=block, extra=...)``)."""
    return EnvBlock(base)


def path_of(env: Union[Mapping[str, str], EnvBlock], extra: Optional[Mapping[str, str]] = None) -> Mapping[str, str]:
    """What :func:`which` reads (PATH) of ``env`` with ``extra`` on top."""
    if extra and "PATH" in extra:
        return extra
    return env.base if isinstance(env, EnvBlock) else env


def which(name: str, env: Mapping[str, str]) -> Optional[str]:
    """``name`` resolved on the job's PATH (cached), or None."""
    path = env.get("PATH", os.defpath)
    key = (name, path)
    hit = _which_cache.get(key, False)
    if hit is False:
        hit = _which_cache[key] = shutil.which(name, path=path)
    return hit  # type: ignore[return-value]


_simple: Dict[Tuple[str, str], Optional[Tuple[str, ...]]] = {}
_SIMPLE_MAX = 4096


def simple_argv(command: str, env: Mapping[str, str]) -> Optional[List[str]]:
    """The argv of a command that needs no shell: plain words and single-quoted strings, whose first word is
    a program (not a builtin, keyword or variable assignment). None means "run it through bash".

    Remembered per command and PATH: a flood runs one command (or a few) thousands of times."""
    key = (command, env.get("PATH", os.defpath))
    hit = _simple.get(key, False)
    if hit is False:
        words = _simple_argv(command, env)
        if len(_simple) > _SIMPLE_MAX:
            _simple.clear()
        hit = _simple[key] = None if words is None else tuple(words)
    return None if hit is None else list(hit)  # type: ignore[arg-type]


def _simple_argv(command: str, env: Mapping[str, str]) -> Optional[List[str]]:
    if "\n" in command or "\r" in command:
        return None
    tokens = _SPLIT.findall(command)
    if sum(len(t) for t in tokens) != len(command):
        return None  # an unbalanced quote: the shell reports it
    words: List[str] = []
    current = ""
    for token in tokens:
        if token.isspace():
            if current:
                words.append(current)
                current = ""
            continue
        if token[0] == "'":
            current += token[1:-1]
        else:
            if not _SAFE.match(token):
                return None
            current += token
    if current:
        words.append(current)
    if not words or "=" in command.split(None, 1)[0]:
        return None
    if "/" not in words[0] and which(words[0], env) is None:
        return None  # a builtin (cd, source, exit...) or a missing program: let the shell say so
    return words


def shell_argv(command: str, preamble_file: Optional[str] = None) -> List[str]:
    """``bash -c`` running ``command``, after sourcing ``preamble_file`` if given."""
    if preamble_file:
        return [SHELL, "-c", 'source "$0" && eval "$1"', preamble_file, command]
    return [SHELL, "-c", command]


USE_LIBC = True
"""Spawn through the C library's posix_spawn where it can (:mod:`.libcspawn`: no GIL held, no chdir, no lock)."""
_libc: Optional[LibcSpawner] = None
_libc_tried = False


def _libc_spawner() -> Optional[LibcSpawner]:
    global _libc, _libc_tried
    if not USE_LIBC:
        return None
    if not _libc_tried:
        _libc = load_libc_spawner(_SIGDEF)
        _libc_tried = True
    return _libc


def spawn(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Union[Mapping[str, str], EnvBlock],
    output: str,
    append: bool = False,
    pass_fds: Sequence[int] = (),
    extra: Optional[Mapping[str, str]] = None,
) -> int:
    """Start ``argv`` in ``cwd`` with stdout and stderr to ``output`` (truncated unless ``append``) and stdin
    from /dev/null, in its own session; returns its pid. Raises OSError if the program cannot be started.

    The environment is ``env`` (a mapping, or an :class:`EnvBlock` prepared once for many spawns) with
    ``extra`` on top. ``pass_fds`` are made inheritable for this one spawn (for the launcher's own helper
    processes).
    """
    program = argv[0]
    if "/" not in program:
        found = which(program, path_of(env, extra))
        if found is None:
            raise FileNotFoundError(2, f"{program}: command not found")
        program = found
    flags = APPEND_FLAGS if append else OUT_FLAGS
    libc = _libc_spawner()
    if libc is not None and not pass_fds:
        # No lock: nothing process-wide changes (the directory is the child's own action, and no fd is ever
        # made inheritable, see below), so several threads may spawn at once.
        return libc.spawn(program, argv, cwd=cwd, env=env, output=output, flags=flags, extra=extra)
    if isinstance(env, EnvBlock) or extra:
        env = {**(env.base if isinstance(env, EnvBlock) else env), **(extra or {})}
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, output, flags, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    if libc is not None:
        # glibc >= 2.29 (what the libc spawner needs) clears close-on-exec of an fd duplicated onto itself, in
        # the child only: the fd is never inheritable here, where other threads' spawns would leak it.
        actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in pass_fds]
        pass_fds = ()
    with _lock:
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        try:
            os.chdir(cwd)
            return os.posix_spawn(program, list(argv), env, file_actions=actions, setsid=True, setsigdef=_SIGDEF)
        finally:
            for fd in pass_fds:
                os.set_inheritable(fd, False)


def concurrent() -> bool:
    """Whether :func:`spawn` may run in several threads at once without waiting for each other (the C library's
    ``posix_spawn`` is used, which needs no lock)."""
    return _libc_spawner() is not None


class LeaseLapsed(Exception):
    """A job was not started: the time it could still start under its launcher's lease (``start_by``) had passed
    when its turn came (the launcher was stopped, or its lease was found gone, in between)."""


def check_start_by(start_by: Optional[float]) -> None:
    """Raise :class:`LeaseLapsed` if ``start_by`` (``time.monotonic()``, None: no limit) has passed."""
    if start_by is not None and time.monotonic() > start_by:
        raise LeaseLapsed("not started: the site had not confirmed the launcher's lease recently enough "
                          "(the launcher was stopped or lost touch with the site before the job's start)")


class SpawnThreads:
    """:func:`spawn` on helper threads, so that the thread starting jobs never waits for one.

    The C library's ``posix_spawn`` returns only once the child has called ``exec`` (it shares the parent's
    memory until then), 0.3-1 ms on a busy node; the GIL is released meanwhile, but the calling thread waits.
    A launcher that spawned from its loop started its next job (or noticed the last one end) only after that
    wait: measured on 2 cores, the loop spent more time in it than in all its own work, and the CPUs idled.
    Here the loop hands each spawn over (:meth:`submit`) and goes on; up to ``threads`` spawns wait at once.
    ``done(key, pid, None)`` or ``done(key, 0, exception)`` is called on the helper thread after each. A spawn
    submitted with ``start_by`` is checked against it right before it is made (:func:`check_start_by`): what
    waited past it (the process was stopped in between) is not spawned, and ``done`` gets a :class:`LeaseLapsed`."""

    def __init__(self, threads: int, done: Callable[[object, int, Optional[BaseException]], None]) -> None:
        import queue

        self._queue: "queue.SimpleQueue[Optional[Tuple[object, Sequence[str], Dict[str, object]]]]" = queue.SimpleQueue()
        self._done = done
        self._size = max(1, threads)
        self._threads: List[threading.Thread] = []
        self._idle = 0
        """Helper threads waiting for work: another is started only when none is (up to ``threads``)."""

    def submit(self, key: object, argv: Sequence[str], **kwargs: object) -> None:
        """Start ``spawn(argv, **kwargs)`` on a helper thread; ``done`` gets its outcome with ``key``."""
        if self._idle == 0 and len(self._threads) < self._size:
            t = threading.Thread(target=self._run, name=f"balsam-spawn-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()
        self._queue.put((key, argv, kwargs))

    def _run(self) -> None:
        while True:
            self._idle += 1  # (a race costs at most one thread more or less, never a spawn)
            item = self._queue.get()
            self._idle -= 1
            if item is None:
                return
            key, argv, kwargs = item
            try:
                check_start_by(kwargs.pop("start_by", None))  # type: ignore[arg-type]
                pid = spawn(argv, **kwargs)  # type: ignore[arg-type]
            except BaseException as exc:  # handed to the owner, which reports the job as not started
                self._done(key, 0, exc)
            else:
                self._done(key, pid, None)

    def close(self) -> None:
        """Stop the helper threads once they have spawned what was submitted."""
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []


def make_workdir(path: str) -> None:
    """Create a job's workdir (and its parents) if missing."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)


class WorkdirMaker:
    """Creates workdirs ahead of time on a helper thread (``mkdir`` costs ~0.2 ms and releases the GIL), so the
    thread that spawns jobs rarely waits for one. :meth:`ensure` creates a workdir the helper has not reached."""

    def __init__(self) -> None:
        import queue

        self._queue: "queue.SimpleQueue[Optional[Sequence[str]]]" = queue.SimpleQueue()
        self._ready: Set[str] = set()
        self._ensured: Set[str] = set()
        """Made by :meth:`ensure` before the helper got to them: it skips them."""
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def prepare(self, paths: Sequence[str]) -> None:
        """Create these workdirs soon (one hand-off for the whole batch: waking the helper per path cost more than
        the mkdir it saved)."""
        if not paths:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="balsam-workdirs", daemon=True)
            self._thread.start()
        self._queue.put(list(paths))

    def _run(self) -> None:
        while True:
            paths = self._queue.get()
            if paths is None:
                return
            for path in paths:
                with self._lock:
                    if path in self._ensured:
                        self._ensured.discard(path)
                        continue
                try:
                    make_workdir(path)
                except OSError:
                    continue  # ensure() will report it
                with self._lock:
                    self._ready.add(path)

    def ensure(self, path: str) -> None:
        with self._lock:
            if path in self._ready:
                self._ready.discard(path)
                return
            if len(self._ensured) > 65536:  # paths never handed to prepare(): forget them (at worst one more mkdir)
                self._ensured.clear()
            self._ensured.add(path)
        make_workdir(path)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None


TRUNCATED = "[... the full output is in job.out]"


def tail_lines(path: str, num_lines: int, max_bytes: int = 4096) -> str:
    """The last ``num_lines`` lines of a file, at most ``max_bytes`` of them ("" if it is missing).

    This is what a failed run's event keeps in the DB, so it is bounded both ways: a job that prints one 10 MB
    line keeps its last ``max_bytes``, marked as truncated; the whole output stays in job.out."""
    if num_lines <= 0 or max_bytes <= 0:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    tail = "\n".join(lines[-num_lines:])
    if size > max_bytes and len(lines) <= num_lines:
        tail = f"{TRUNCATED}\n{tail}"  # the first line kept was cut
    return tail


def kill_group(pid: int, sig: int) -> None:
    """Signal a job's whole process group (it leads its own session); a vanished group is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------------------------- Balsam helpers
def _package_dir() -> Path:
    import balsam

    return Path(balsam.__file__).resolve().parent


def python_module_argv(module: str, python: Optional[str] = None) -> List[str]:
    """argv running a Balsam module (``python -m balsam.launcher.X``) in ``python`` (default: this interpreter)."""
    return [python or sys.executable, "-m", module]


def python_env(base: Mapping[str, str], python: Optional[str], pylib: Optional[Path] = None) -> Dict[str, str]:
    """The environment in which ``python -m balsam...`` finds this Balsam.

    From the zipapp: the archive goes on PYTHONPATH. From a source tree or an install: this interpreter gets
    the package's parent directory (as ``balsam.runtime`` does); another interpreter (an app's ``python_exe``)
    gets ``pylib``, a directory holding only a link to the ``balsam`` package, so it does not see this
    interpreter's other packages.
    """
    env = dict(base)
    archive = zipapp_path()
    if archive is not None:
        entry = str(archive)
    elif python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        entry = str(_package_dir().parent)
    else:
        entry = str(pylib_dir(pylib)) if pylib is not None else str(_package_dir().parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if entry not in paths:
        env["PYTHONPATH"] = os.pathsep.join([entry, *paths])
    return env


def pylib_dir(path: Path) -> Path:
    """Make ``path`` a directory whose only entry is a link to the ``balsam`` package (idempotent)."""
    link = path / "balsam"
    target = _package_dir()
    try:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return path
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".balsam.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, link)
    except OSError:
        return target.parent
    return path
