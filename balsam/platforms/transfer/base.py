"""Transfer adapters: copy a batch of items in the background, then poll the task until it is done.

``submit(items)`` renders one argv per step (pure), writes them as a small bash script into the task's own
folder under ``state_dir``, starts it detached under the recording wrapper of
:mod:`balsam.platforms.detached`, and returns a task id ``<adapter>:<token>``; the prefix names the adapter
that can poll it. ``poll(task_id)`` reads the record: ``active`` while the script runs, ``done`` when it
exited 0, ``error`` otherwise, with the failing step and the tail of its output carried in the status. The
first failing step ends the task. Nothing runs when an adapter is built.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence, Union

from balsam.exceptions import ConfigError, TransferError
from balsam.platforms import detached
from balsam.platforms.runner import CommandRunner, SubprocessRunner

PathLike = Union[str, "os.PathLike[str]"]

_REMOTE = re.compile(r"^(?:[^/:@\s]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:")


class TransferState(str, Enum):
    """Where a transfer task stands."""

    ACTIVE = "active"
    """Still copying."""
    DONE = "done"
    """Every item copied."""
    ERROR = "error"
    """A step failed, or the task's process vanished; ``error`` says which and why."""


@dataclass(frozen=True)
class TransferItem:
    """Copy ``source`` to ``destination`` (a file, or with ``recursive`` a directory's contents). Either side
    may be remote for adapters that allow it (``user@host:/path`` for rsync)."""

    source: str
    destination: str
    recursive: bool = False


@dataclass
class TransferStatus:
    """A task's state, and what went wrong if it failed."""

    task_id: str
    state: TransferState
    error: str = ""
    returncode: Optional[int] = None


def is_remote(path: str) -> bool:
    """``host:/path`` or ``user@host:path`` (rsync's remote syntax); ``/a:b`` and ``./a:b`` are local."""
    return bool(_REMOTE.match(path)) and not path.startswith(("/", "./", "../"))


def render_script(steps: Sequence[Sequence[str]], labels: Sequence[str]) -> str:
    """The bash script a task runs: each step quoted, the first failure reported and fatal (pure)."""
    lines = ["#!/bin/bash", f"# Balsam transfer task: {len(steps)} step(s); written by balsam.platforms.transfer"]
    for i, (argv, label) in enumerate(zip(steps, labels), 1):
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        msg = shlex.quote(f"balsam-transfer: step {i} of {len(steps)} failed ({label})")
        lines.append(f'{cmd} || {{ rc=$?; echo {msg}" with exit $rc" >&2; exit "$rc"; }}')
    lines.append("")
    return "\n".join(lines)


def tail(path: Path, num_lines: int = 10) -> str:
    """The last lines of a file ('' if it is missing)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-num_lines:])


class TransferAdapter(ABC):
    """Base of the transfer adapters. ``state_dir`` holds one folder per task (the composition root passes a
    folder in the site's state directory); ``options`` are the adapter's own settings."""

    name: ClassVar[str] = ""
    options_help: ClassVar[Dict[str, str]] = {}

    def __init__(
        self,
        runner: Optional[CommandRunner] = None,
        *,
        state_dir: Optional[PathLike] = None,
        env: Optional[Mapping[str, str]] = None,
        options: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.runner: CommandRunner = runner if runner is not None else SubprocessRunner()
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self.env = dict(env or {})
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(self.options_help))
        if unknown:
            known = ", ".join(sorted(self.options_help)) or "none"
            raise ConfigError(f"transfer {self.name}: unknown option {unknown[0]!r} (known options: {known})")

    @property
    def state_dir(self) -> Path:
        """Where task folders live (created on the first submit)."""
        if self._state_dir is None:
            self._state_dir = Path(tempfile.gettempdir()) / f"balsam-transfers-{os.getuid()}"
        return self._state_dir

    @abstractmethod
    def render_steps(self, items: Sequence[TransferItem]) -> List[List[str]]:
        """The argv of every step that copies ``items`` (pure)."""

    def _task_dir(self, task_id: str) -> Path:
        prefix, _, token = task_id.partition(":")
        if prefix != self.name or not re.fullmatch(r"[0-9a-f]{32}", token):
            raise TransferError(f"{self.name}: {task_id!r} is not one of this adapter's task ids")
        return self.state_dir / token

    def submit(self, items: Sequence[TransferItem]) -> str:
        """Start copying ``items`` in the background; return the task id."""
        if not items:
            raise TransferError(f"{self.name}: nothing to transfer")
        steps = self.render_steps(items)
        token = uuid.uuid4().hex
        task_dir = self.state_dir / token
        task_dir.mkdir(parents=True)
        labels = [" ".join(s[:1] + s[-2:]) for s in steps]
        (task_dir / "task.sh").write_text(render_script(steps, labels))
        record = task_dir / "record"
        record.touch()
        argv = detached.wrapper_argv(["bash", str(task_dir / "task.sh")], record)
        try:
            pid = self.runner.spawn(argv, output_path=task_dir / "output", env=self.env or None, cwd=task_dir)
        except OSError as exc:
            raise TransferError(f"{self.name}: cannot start the transfer: {exc.strerror or exc}") from exc
        detached.append_record(record, f"pid {pid} {detached.create_time_of(pid) or ''}".rstrip(), f"submitted {detached.now()}")
        return f"{self.name}:{token}"

    def poll(self, task_id: str) -> TransferStatus:
        """The task's state; an ERROR status carries the failing step and the tail of its output."""
        task_dir = self._task_dir(task_id)
        rec = detached.read_record(task_dir / "record")
        if rec is None:
            return TransferStatus(task_id, TransferState.ERROR, f"no such transfer task (no record in {task_dir})")
        if rec.ended:
            if rec.returncode == 0:
                return TransferStatus(task_id, TransferState.DONE, returncode=0)
            message = tail(task_dir / "output") or f"exit {rec.returncode}"
            return TransferStatus(task_id, TransferState.ERROR, message, rec.returncode)
        if detached.is_alive(rec.pid, rec.create_time):
            return TransferStatus(task_id, TransferState.ACTIVE)
        # the process may have ended between the two reads: look once more before calling it lost
        rec = detached.read_record(task_dir / "record") or rec
        if rec.ended:
            return self.poll(task_id)
        return TransferStatus(task_id, TransferState.ERROR, "the transfer process vanished without finishing (killed?)")

    def cancel(self, task_id: str, grace_s: float = 5.0) -> None:
        """Stop a running task (TERM, then KILL)."""
        task_dir = self._task_dir(task_id)
        rec = detached.read_record(task_dir / "record")
        if rec is not None and rec.pid is not None:
            detached.append_record(task_dir / "record", f"cancelled {detached.now()}")
            detached.terminate_tree(rec.pid, rec.create_time, grace_s=grace_s)
