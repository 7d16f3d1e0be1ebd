"""Transfer adapters: copy a batch of items as one task, then poll the task until it is done.

Every adapter takes a batch with ``submit(items)`` and returns a task id ``<adapter>:<token>`` whose prefix
names the adapter that can poll it. ``poll(task_id)`` answers ``active`` (or ``inactive``: stalled, waiting on
something outside, e.g. Globus credentials) while it runs, and once it has ended ``done`` with the outcome of
each item: the items listed in :attr:`TransferStatus.failed` failed (each with its own message, and whether
trying again may help), every other item arrived. A task that failed as a whole lists every item.

:class:`ScriptTransfer` is the base of the adapters that run programs on this host (cp, rsync): ``submit``
writes a small bash script into the task's own folder under ``state_dir`` (with the items, as JSON),
starts it detached under the recording wrapper of :mod:`balsam.platforms.detached`, and ``poll`` reads the
record; the first poll after the script ended finishes the task (the rsync adapter moves the staged files
into place there) and keeps the outcome, so later polls and restarts see the same answer. Nothing runs
when an adapter is built.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Union

from balsam.exceptions import ConfigError, TransferError
from balsam.platforms import detached
from balsam.platforms.runner import CommandRunner, SubprocessRunner

PathLike = Union[str, "os.PathLike[str]"]

_REMOTE = re.compile(r"^(?:[^/:@\s]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:")
ITEM_FAILED = "balsam-item-failed"


class TransferState(str, Enum):
    """Where a transfer task stands."""

    ACTIVE = "active"
    """Still copying."""
    INACTIVE = "inactive"
    """Not ended, but stalled on something outside Balsam (the status's ``error`` says what)."""
    DONE = "done"
    """Ended: every item arrived except those in ``failed``."""
    ERROR = "error"
    """Ended, and every item failed (``error`` says why); kept for callers that test for it."""


@dataclass(frozen=True)
class TransferItem:
    """Copy ``source`` to ``destination`` (a file, or with ``recursive`` a directory's contents). Either side
    may be remote for adapters that allow it (``[user@]host:/path`` for rsync, ``ENDPOINT_UUID:/path`` for
    Globus)."""

    source: str
    destination: str
    recursive: bool = False


@dataclass(frozen=True)
class ItemFailure:
    """Why one item of a task failed, and whether trying it again may help (a dropped connection)."""

    message: str
    transient: bool = False


@dataclass
class TransferStatus:
    """A task's state; once ended, which items failed and how much was moved."""

    task_id: str
    state: TransferState
    error: str = ""
    returncode: Optional[int] = None
    failed: Dict[int, ItemFailure] = field(default_factory=dict)
    """Index in the submitted batch -> why that item failed (ended tasks only)."""
    bytes: Optional[int] = None
    seconds: Optional[float] = None

    @property
    def ended(self) -> bool:
        """True once the task will not change any more."""
        return self.state in (TransferState.DONE, TransferState.ERROR)

    @property
    def bytes_per_s(self) -> Optional[float]:
        """Throughput of the task, when both figures are known."""
        if self.bytes is None or not self.seconds:
            return None
        return self.bytes / self.seconds

    def to_json(self) -> Dict[str, Any]:
        """The status as plain data (kept in the task folder)."""
        return {"task_id": self.task_id, "state": self.state.value, "error": self.error, "returncode": self.returncode,
                "failed": {str(i): [f.message, f.transient] for i, f in self.failed.items()},
                "bytes": self.bytes, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TransferStatus":
        """The inverse of :meth:`to_json`."""
        return cls(str(data["task_id"]), TransferState(data["state"]), str(data.get("error", "")), data.get("returncode"),
                   {int(i): ItemFailure(str(m), bool(t)) for i, (m, t) in dict(data.get("failed") or {}).items()},
                   data.get("bytes"), data.get("seconds"))


def all_failed(task_id: str, count: int, message: str, transient: bool = False, returncode: Optional[int] = None) -> TransferStatus:
    """The status of a task whose every item failed for one reason."""
    failure = ItemFailure(message, transient)
    return TransferStatus(task_id, TransferState.ERROR, message, returncode, {i: failure for i in range(count)})


def is_remote(path: str) -> bool:
    """``host:/path`` or ``user@host:path`` (rsync's remote syntax); ``/a:b`` and ``./a:b`` are local."""
    return bool(_REMOTE.match(path)) and not path.startswith(("/", "./", "../"))


def split_remote(path: str) -> "tuple[str, str]":
    """``user@host:/p`` -> (``user@host``, ``/p``); a local path -> ('', path)."""
    if not is_remote(path):
        return "", path
    host, _, rest = path.partition(":")
    return host, rest


def render_script(steps: Sequence[Sequence[str]], labels: Sequence[str]) -> str:
    """A bash script that runs every step, quoted; the first failure is reported and ends it (pure)."""
    lines = ["#!/bin/bash", f"# Balsam transfer task: {len(steps)} step(s); written by balsam.platforms.transfer"]
    for i, (argv, label) in enumerate(zip(steps, labels), 1):
        cmd = " ".join(shlex.quote(str(a)) for a in argv)
        msg = shlex.quote(f"balsam-transfer: step {i} of {len(steps)} failed ({label})")
        lines.append(f'{cmd} || {{ rc=$?; echo {msg}" with exit $rc" >&2; exit "$rc"; }}')
    lines.append("")
    return "\n".join(lines)


def render_item_script(item_steps: Sequence[Sequence[Sequence[str]]]) -> str:
    """A bash script that copies every item in turn; an item whose command fails is reported on one line
    (``balsam-item-failed INDEX MESSAGE``) and the script goes on with the next item, exiting non-zero at
    the end if any failed (pure)."""
    lines = ["#!/bin/bash", f"# Balsam transfer task: {len(item_steps)} item(s); written by balsam.platforms.transfer",
             "failed=0"]
    for index, steps in enumerate(item_steps):
        cmd = " && ".join(" ".join(shlex.quote(str(a)) for a in argv) for argv in steps)
        lines.append(f"if ! out=$( {{ {cmd}; }} 2>&1 ); then failed=1; printf '{ITEM_FAILED} {index} %s\\n' \"${{out//$'\\n'/ | }}\"; fi")
    lines += ['exit "$failed"', ""]
    return "\n".join(lines)


def parse_item_failures(output: str) -> Dict[int, str]:
    """The ``balsam-item-failed INDEX MESSAGE`` lines of a task's output (pure)."""
    failures: Dict[int, str] = {}
    for line in output.splitlines():
        if line.startswith(ITEM_FAILED + " "):
            _, index, *rest = line.split(" ", 2)
            if index.isdigit():
                failures[int(index)] = rest[0] if rest else "failed"
    return failures


def tail(path: Path, num_lines: int = 10) -> str:
    """The last lines of a file ('' if it is missing)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-num_lines:])


class TransferAdapter(ABC):
    """Base of the transfer adapters. ``options`` are the adapter's own settings (unknown ones are refused)."""

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

    def option_flag(self, key: str, default: bool = False) -> bool:
        """A yes/no option."""
        value = self.options.get(key)
        if value is None:
            return default
        return str(value).strip().lower() in ("1", "true", "yes", "on")

    @abstractmethod
    def submit(self, items: Sequence[TransferItem]) -> str:
        """Start copying ``items`` as one task; return the task id."""

    def create(self, items: Sequence[TransferItem]) -> str:
        """Make the task that copies ``items`` and return its id; :meth:`start` starts it. The caller notes the id in
        between, so a caller killed as the copy starts leaves a task it finds again, never one started twice. Here
        (an adapter whose tasks cannot wait to be started): the task starts at once."""
        return self.submit(items)

    def start(self, task_id: str) -> None:  # noqa: B027 - nothing to do where create started the task
        """Start a task :meth:`create` made (here, :meth:`create` started it)."""

    @abstractmethod
    def poll(self, task_id: str) -> TransferStatus:
        """Where the task stands (see :class:`TransferStatus`)."""

    @abstractmethod
    def cancel(self, task_id: str, grace_s: float = 5.0) -> None:
        """Stop a running task."""


class ScriptTransfer(TransferAdapter):
    """An adapter that copies by running a bash script on this host, detached (see the module docstring)."""

    @abstractmethod
    def prepare(self, items: Sequence[TransferItem], task_dir: Path) -> str:
        """Prepare the task folder and return the script that copies ``items``."""

    def finish(self, task_id: str, items: Sequence[TransferItem], task_dir: Path, rec: detached.ProcessRecord) -> TransferStatus:
        """The outcome of an ended task (the default reads the item failure lines of the output)."""
        output = tail(task_dir / "output", 200)
        rc = rec.returncode
        seconds = (rec.end - rec.start) if rec.end is not None and rec.start is not None else None
        if rc == 0:
            return TransferStatus(task_id, TransferState.DONE, returncode=0, seconds=seconds)
        marked = parse_item_failures(output)
        if marked:
            failed = {i: ItemFailure(msg) for i, msg in marked.items()}
            return TransferStatus(task_id, TransferState.DONE, returncode=rc, failed=failed, seconds=seconds)
        reason = "the transfer was cancelled" if rec.cancelled is not None else (output or f"exit {rc}")
        return all_failed(task_id, len(items), reason, returncode=rc)

    def _task_dir(self, task_id: str) -> Path:
        prefix, _, token = task_id.partition(":")
        if prefix != self.name or not re.fullmatch(r"[0-9a-f]{32}", token):
            raise TransferError(f"{self.name}: {task_id!r} is not one of this adapter's task ids")
        return self.state_dir / token

    def submit(self, items: Sequence[TransferItem]) -> str:
        """Start copying ``items`` in the background; return the task id."""
        task_id = self.create(items)
        self.start(task_id)
        return task_id

    def create(self, items: Sequence[TransferItem]) -> str:
        """The task's folder, with its items, its script and an empty record; nothing runs until :meth:`start`."""
        if not items:
            raise TransferError(f"{self.name}: nothing to transfer")
        token = uuid.uuid4().hex
        task_dir = self.state_dir / token
        task_dir.mkdir(parents=True)
        (task_dir / "items.json").write_text(json.dumps([[i.source, i.destination, i.recursive] for i in items]))
        (task_dir / "task.sh").write_text(self.prepare(items, task_dir))
        (task_dir / "record").touch()
        return f"{self.name}:{token}"

    def start(self, task_id: str) -> None:
        """Start the copy of a task :meth:`create` made, in the background."""
        task_dir = self._task_dir(task_id)
        record = task_dir / "record"
        if self._cancelled(record):
            return
        argv = detached.wrapper_argv(["bash", str(task_dir / "task.sh")], record)
        detached.append_record(record, f"submitted {detached.now()}")
        try:
            pid = self.runner.spawn(argv, output_path=task_dir / "output", env=self.env or None, cwd=task_dir)
        except OSError as exc:
            raise TransferError(f"{self.name}: cannot start the transfer: {exc.strerror or exc}") from exc
        created = detached.create_time_of(pid)
        detached.append_record(record, f"pid {pid} {created or ''}".rstrip())
        if self._cancelled(record):  # cancelled as it started, before cancel() could see the copy: stopped here
            detached.terminate_tree(pid, created)

    @staticmethod
    def _cancelled(record: Path) -> bool:
        rec = detached.read_record(record)
        return rec is not None and rec.cancelled is not None

    def _items(self, task_dir: Path) -> List[TransferItem]:
        try:
            return [TransferItem(str(s), str(d), bool(r)) for s, d, r in json.loads((task_dir / "items.json").read_text())]
        except (OSError, ValueError):
            return []

    def poll(self, task_id: str) -> TransferStatus:
        """The task's state; once it ended, each failed item with its message."""
        task_dir = self._task_dir(task_id)
        result = task_dir / "result.json"
        if result.exists():
            return TransferStatus.from_json(json.loads(result.read_text()))
        rec = detached.read_record(task_dir / "record")
        items = self._items(task_dir)
        if rec is None:
            return all_failed(task_id, len(items), f"no such transfer task (no record in {task_dir})")
        # Its starter may have died before noting the copy's PID (then the wrapper's own note, or the running wrapper,
        # names it), or before starting the copy at all: then it starts now, once.
        pid = rec.pid or rec.started_pid or (None if rec.ended else detached.wrapper_of(task_dir / "record"))
        if pid is None and not rec.ended and rec.cancelled is None and rec.start is None:
            self.start(task_id)
            return TransferStatus(task_id, TransferState.ACTIVE)
        if not rec.ended and detached.is_alive(pid, rec.create_time if rec.pid else None):
            return TransferStatus(task_id, TransferState.ACTIVE)
        # the process may have ended between the two reads: look once more before calling it lost
        rec = detached.read_record(task_dir / "record") or rec
        if rec.ended:
            status = self.finish(task_id, items, task_dir, rec)
        elif rec.cancelled is not None:  # cancel() killed it before its wrapper could record the end
            status = all_failed(task_id, len(items), "the transfer was cancelled")
        else:
            status = all_failed(task_id, len(items), "the transfer process vanished without finishing (killed?)", transient=True)
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(status.to_json()))
        os.replace(tmp, result)
        return status

    def prune(self, older_than_s: float, now: Optional[float] = None) -> int:
        """Remove the folders of tasks whose outcome was read more than ``older_than_s`` ago; returns how many.
        (The caller records each outcome when it first reads it, so an old folder is only a log by then.)"""
        now = detached.now() if now is None else now
        if self._state_dir is None or not self._state_dir.is_dir():
            return 0
        removed = 0
        for folder in self._state_dir.iterdir():
            result = folder / "result.json"
            try:
                old = result.stat().st_mtime < now - older_than_s
            except OSError:
                continue
            if old and re.fullmatch(r"[0-9a-f]{32}", folder.name):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def cancel(self, task_id: str, grace_s: float = 5.0) -> None:
        """Stop a task that has not ended (TERM, then KILL). One made but not started yet is never started; one whose
        starter has not noted (or died before noting) the copy's PID is found by its wrapper."""
        record = self._task_dir(task_id) / "record"
        rec = detached.read_record(record)
        if rec is None or rec.ended:
            return
        detached.append_record(record, f"cancelled {detached.now()}")
        # read again after the note: a start() that spawns from now on sees the note and stops its own copy
        rec = detached.read_record(record) or rec
        pid = rec.pid or rec.started_pid or (None if rec.ended else detached.wrapper_of(record))
        if pid is not None:
            detached.terminate_tree(pid, rec.create_time if rec.pid else None, grace_s=grace_s)
