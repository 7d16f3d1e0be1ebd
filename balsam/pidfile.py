"""PID files held with a lock: a process's claim to be the one running something (the site agent).

The file is locked with ``flock`` while its process lives, so a PID file left by a crash (kill -9, a reboot)
is recognised as stale and taken over, without trusting a possibly reused pid.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from balsam.exceptions import ServiceError


def read_pid(path: Path) -> Optional[int]:
    """The pid recorded in a PID file, or None."""
    try:
        text = path.read_text().split()
        return int(text[0]) if text else None
    except (OSError, ValueError):
        return None


def pid_file_held(path: Path) -> bool:
    """True if a live process holds the PID file's lock (a stale file from a crash is not held)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def pid_file(path: Path, what: str = "the site agent") -> Iterator[None]:
    """Hold ``path`` as this process's PID file for the duration; refuse if a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServiceError(f"{what} is already running (pid {read_pid(path)}, {path})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        try:
            os.unlink(str(path))
        except FileNotFoundError:
            pass
        os.close(fd)
