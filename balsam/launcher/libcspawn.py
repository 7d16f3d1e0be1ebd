"""``posix_spawn`` straight from the C library, for the launcher's hot path (Linux with glibc >= 2.29).

Python's ``os.posix_spawn`` holds the GIL for the whole call, and glibc's ``posix_spawn`` returns only once the
child has called ``exec`` (it shares the parent's memory until then). On a busy node the child may wait
milliseconds for a CPU before it gets there, and all that time no other thread of the launcher runs: the status
updater, the workdir maker, serial mode's master. Measured under load with py-spy ``--gil``, 63% of the
launcher's GIL-holding samples were this wait. It also has no "change directory" action, so the launcher
changed its own working directory around each call, under a lock.

Called through ctypes, the same function runs with the GIL released, and glibc's
``posix_spawn_file_actions_addchdir_np`` puts the job's directory among the child's actions, so nothing
process-wide changes and spawns need no lock. :class:`LibcSpawner` is that; :func:`load` returns one where the C
library offers it, else None (the caller then uses ``os.posix_spawn``). Both start the same child: in its own
session, the given signals reset to their defaults, stdin from /dev/null, stdout and stderr to a file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

# glibc's flag values (spawn.h); the opaque types are given room well beyond glibc's sizes (80, 336, 128 bytes).
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSID = 0x80
_OPAQUE_BYTES = 1024
_ENV_MEMO_MAX = 8192
_ARGV_MEMO_MAX = 1024
_KEPT_MAX = 256
_FS = sys.getfilesystemencoding()
_DEVNULL = os.fsencode(os.devnull)


class LibcSpawner:
    """Starts processes with the C library's ``posix_spawn`` (see the module docstring)."""

    def __init__(self, sigdef: Sequence[int]) -> None:
        self._spawn = ctypes.CDLL(None).posix_spawn  # CDLL: the GIL is released for the call
        libc = ctypes.PyDLL(None)  # the quick calls keep it (each release is a chance to wait for another thread)
        self._fa_init = libc.posix_spawn_file_actions_init
        self._fa_destroy = libc.posix_spawn_file_actions_destroy
        self._fa_open = libc.posix_spawn_file_actions_addopen
        self._fa_dup2 = libc.posix_spawn_file_actions_adddup2
        self._fa_chdir = libc.posix_spawn_file_actions_addchdir_np
        self._fa_open.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
        self._fa_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self._fa_chdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
        # One attribute object for every spawn (posix_spawn only reads it): its own session, default signals.
        self._attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
        sigset = ctypes.create_string_buffer(_OPAQUE_BYTES)
        _check(libc.sigemptyset(sigset), "sigemptyset")
        for sig in sigdef:
            _check(libc.sigaddset(sigset, ctypes.c_int(int(sig))), "sigaddset")
        _check(libc.posix_spawnattr_init(self._attr), "posix_spawnattr_init")
        _check(libc.posix_spawnattr_setsigdefault(self._attr, sigset), "posix_spawnattr_setsigdefault")
        _check(libc.posix_spawnattr_setflags(self._attr, ctypes.c_short(POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF)),
               "posix_spawnattr_setflags")
        self._memo: Dict[Tuple[str, str], bytes] = {}
        self._paths: Dict[str, bytes] = {}
        self._argvs: Dict[Tuple[str, ...], "ctypes.Array[ctypes.c_char_p]"] = {}

    def _envp(self, env: Mapping[str, str]) -> "ctypes.Array[ctypes.c_char_p]":
        memo = self._memo
        if len(memo) > _ENV_MEMO_MAX:
            memo.clear()
        items = []
        for item in env.items():
            entry = memo.get(item)
            if entry is None:
                entry = memo[item] = _entry(*item)
            items.append(entry)
        items.append(None)  # type: ignore[arg-type]
        return (ctypes.c_char_p * len(items))(*items)

    def _argv(self, argv: Sequence[str]) -> "ctypes.Array[ctypes.c_char_p]":
        """argv as C strings, kept for the next spawn of the same command (a flood runs one command many times;
        posix_spawn only reads the array)."""
        key = tuple(argv)
        c_argv = self._argvs.get(key)
        if c_argv is None:
            args = [a.encode(errors="surrogateescape") for a in key]
            if any(b"\0" in a for a in args):
                raise ValueError("embedded null byte in a command argument")
            if len(self._argvs) > _ARGV_MEMO_MAX:
                self._argvs.clear()
            c_argv = self._argvs[key] = (ctypes.c_char_p * (len(args) + 1))(*args, None)
        return c_argv

    def spawn(self, program: str, argv: Sequence[str], *, cwd: str, env: Union[Mapping[str, str], "EnvBlock"], output: str,
              flags: int, extra: Optional[Mapping[str, str]] = None) -> int:
        """Start ``program`` (a path) with ``argv`` in ``cwd``: stdin /dev/null, stdout and stderr to ``output``
        opened with ``flags``; returns its pid. The environment is ``env`` with ``extra`` on top. Raises OSError
        as ``os.posix_spawn`` would."""
        c_argv = self._argv(argv)
        if isinstance(env, EnvBlock):
            c_env = env.envp(extra or {})
        else:
            c_env = self._envp({**env, **extra} if extra else env)
        path = self._paths.get(program)
        if path is None:
            if len(self._paths) > _ARGV_MEMO_MAX:
                self._paths.clear()
            path = self._paths[program] = os.fsencode(program)
        actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
        _check(self._fa_init(actions), "posix_spawn_file_actions_init")
        try:
            # One check for the four actions: each returns 0 or an error number (ENOMEM), and a failed one fails
            # the spawn below anyway.
            err = (self._fa_chdir(actions, cwd.encode(_FS, "surrogateescape"))
                   or self._fa_open(actions, 0, _DEVNULL, os.O_RDONLY, 0)
                   or self._fa_open(actions, 1, output.encode(_FS, "surrogateescape"), flags, 0o644)
                   or self._fa_dup2(actions, 1, 2))
            _check(err, "posix_spawn_file_actions")
            pid = ctypes.c_int(0)
            err = self._spawn(ctypes.byref(pid), path, actions, self._attr, c_argv, c_env)  # the GIL is released here
        finally:
            self._fa_destroy(actions)
        if err:
            if err == errno.ENOENT and not os.path.isdir(cwd):
                raise FileNotFoundError(err, "no such working directory", cwd)
            raise OSError(err, os.strerror(err), program)
        return int(pid.value)


def _entry(key: str, value: str) -> bytes:
    """One ``KEY=VALUE`` entry of an environment block."""
    if "=" in key or "\0" in key or "\0" in value:
        raise ValueError(f"illegal environment variable name or value: {key!r}")
    return f"{key}={value}".encode(errors="surrogateescape")


class EnvBlock:
    """An environment encoded once for many spawns, each adding a few variables of its own (a job's id, its app's
    variables): a spawn copies the prebuilt pointers instead of encoding the launcher's whole environment again
    (measured: a third of the spawn's Python time). ``base`` must not change afterwards."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.base: Dict[str, str] = dict(base)
        self._entries = {k: _entry(k, v) for k, v in self.base.items()}
        self._kept: Dict[Tuple[str, ...], Tuple["ctypes.Array[ctypes.c_char_p]", int]] = {}

    def envp(self, extra: Mapping[str, str]) -> "ctypes.Array[ctypes.c_char_p]":
        """The NULL-terminated block of ``base`` with ``extra`` on top (its variables replace the base's)."""
        keys = tuple(extra)
        kept = self._kept.get(keys)
        if kept is None:
            if len(self._kept) > _KEPT_MAX:
                self._kept.clear()
            entries = [e for k, e in self._entries.items() if k not in extra]
            kept = self._kept[keys] = ((ctypes.c_char_p * max(1, len(entries)))(*entries), len(entries))
        block, n = kept
        out = (ctypes.c_char_p * (n + len(keys) + 1))()  # zeroed: the last pointer is the terminating NULL
        ctypes.memmove(out, block, n * ctypes.sizeof(ctypes.c_char_p))  # ``block`` (kept here) owns these strings
        i = n
        for key, value in extra.items():
            out[i] = _entry(key, value)
            i += 1
        return out


def _check(err: int, what: str) -> None:
    if err:
        raise OSError(err, f"{what}: {os.strerror(err)}")


def load(sigdef: Sequence[int]) -> Optional[LibcSpawner]:
    """A spawner over this process's C library, or None where it lacks what is needed (not Linux with glibc
    >= 2.29, or ctypes unavailable)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        if not hasattr(ctypes.PyDLL(None), "posix_spawn_file_actions_addchdir_np"):
            return None
        return LibcSpawner(sigdef)
    except (OSError, AttributeError, ValueError):
        return None


__all__ = ["EnvBlock", "LibcSpawner", "load"]
