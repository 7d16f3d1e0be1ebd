"""Running external commands: one injected runner, a timeout on every call, an explicit environment.

Every adapter in :mod:`balsam.platforms` that runs a program (``sbatch``, ``qstat``, ``rsync``, ...) does so
through a :class:`CommandRunner`. Adapters render argv lists with pure functions, hand them to the runner,
and parse what comes back with pure functions, so tests can swap in :class:`FakeRunner` and check the exact
argv without a scheduler.

The runner never uses a shell. Its errors are the standard library's (``FileNotFoundError`` when the program
is missing, ``subprocess.TimeoutExpired`` when it runs too long); each adapter translates them into its own
Balsam error at its boundary.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CommandResult:
    """What one finished command printed and returned."""

    argv: List[str]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float = 0.0


class CommandRunner(Protocol):
    """The interface adapters use to run programs (see :class:`SubprocessRunner` and :class:`FakeRunner`)."""

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
        timeout_s: Optional[float] = None,
        input_text: Optional[str] = None,
    ) -> CommandResult:
        """Run ``argv`` to completion and return its output; ``env`` is laid over the runner's base."""
        ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        output_path: PathLike,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
    ) -> int:
        """Start ``argv`` detached in its own session, stdout and stderr to ``output_path``; return its PID."""
        ...


class SubprocessRunner:
    """The real runner: :func:`subprocess.run` without a shell, with a timeout and an explicit environment.

    ``env`` is the base environment of every child. The composition root passes it (typically a copy of the
    agent's own environment); ``None`` means the child inherits this process's environment unchanged.
    Per-call ``env`` mappings are laid over the base. Nothing is read or started when the runner is built.
    """

    def __init__(self, env: Optional[Mapping[str, str]] = None, timeout_s: float = 60.0) -> None:
        self.env = dict(env) if env is not None else None
        self.timeout_s = timeout_s
        self._children: Dict[int, "subprocess.Popen[bytes]"] = {}

    def _child_env(self, extra: Optional[Mapping[str, str]]) -> Optional[Dict[str, str]]:
        if self.env is None and not extra:
            return None
        base = dict(os.environ) if self.env is None else dict(self.env)
        base.update(extra or {})
        return base

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
        timeout_s: Optional[float] = None,
        input_text: Optional[str] = None,
    ) -> CommandResult:
        """Run ``argv`` and wait; raises ``FileNotFoundError`` or ``subprocess.TimeoutExpired``."""
        argv = [str(a) for a in argv]
        start = time.monotonic()
        proc = subprocess.run(
            argv,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=self._child_env(env),
            cwd=None if cwd is None else str(cwd),
            timeout=self.timeout_s if timeout_s is None else timeout_s,
            check=False,
            start_new_session=True,  # a Ctrl-C in the caller's terminal is not for it: an sbatch is finished, not cut off
        )
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        output_path: PathLike,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
    ) -> int:
        """Start ``argv`` in a new session (no terminal, survives this process) and return its PID."""
        self.reap()
        with open(output_path, "ab") as out:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._child_env(env),
                cwd=None if cwd is None else str(cwd),
                start_new_session=True,
                close_fds=True,
            )
        self._children[proc.pid] = proc
        return proc.pid

    def reap(self) -> None:
        """Collect spawned children that have exited, so they do not linger as zombies."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]


@dataclass
class RecordedCall:
    """One call a :class:`FakeRunner` received."""

    argv: List[str]
    env: Dict[str, str]
    cwd: Optional[str]
    timeout_s: Optional[float]
    input_text: Optional[str] = None
    spawned: bool = False


Responder = Callable[[List[str]], Union[CommandResult, BaseException, str]]


@dataclass
class FakeRunner:
    """A runner for tests and demos: records every call and answers from canned output; runs nothing.

    ``responses`` maps a program name (``argv[0]``) to a reply; ``responder`` (tried first) may inspect the
    whole argv. A reply is a :class:`CommandResult`, a string (stdout with return code 0), or an exception
    to raise (for example ``FileNotFoundError`` or ``subprocess.TimeoutExpired``).
    """

    responses: Dict[str, Union[CommandResult, BaseException, str]] = field(default_factory=dict)
    responder: Optional[Responder] = None
    calls: List[RecordedCall] = field(default_factory=list)
    next_pid: int = 4242

    def _answer(self, argv: List[str]) -> CommandResult:
        reply: Union[CommandResult, BaseException, str, None] = None
        if self.responder is not None:
            reply = self.responder(argv)
        if reply is None:
            reply = self.responses.get(argv[0], "")
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            return CommandResult(argv, 0, reply, "")
        return CommandResult(argv, reply.returncode, reply.stdout, reply.stderr, reply.duration_s)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
        timeout_s: Optional[float] = None,
        input_text: Optional[str] = None,
    ) -> CommandResult:
        """Record the call and return the canned reply."""
        args = [str(a) for a in argv]
        self.calls.append(RecordedCall(args, dict(env or {}), None if cwd is None else str(cwd), timeout_s, input_text))
        return self._answer(args)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        output_path: PathLike,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
    ) -> int:
        """Record the call and return a made-up PID."""
        args = [str(a) for a in argv]
        self.calls.append(RecordedCall(args, dict(env or {}), None if cwd is None else str(cwd), None, spawned=True))
        Path(output_path).touch()
        self.next_pid += 1
        return self.next_pid

    @property
    def argvs(self) -> List[List[str]]:
        """The argv of every call, in order."""
        return [c.argv for c in self.calls]


class CountingRunner:
    """Wraps another runner and counts the commands it runs (benchmarks check polls stay O(1))."""

    def __init__(self, inner: CommandRunner) -> None:
        self.inner = inner
        self.count = 0
        self.argvs: List[List[str]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
        timeout_s: Optional[float] = None,
        input_text: Optional[str] = None,
    ) -> CommandResult:
        """Count, then delegate."""
        self.count += 1
        self.argvs.append([str(a) for a in argv])
        return self.inner.run(argv, env=env, cwd=cwd, timeout_s=timeout_s, input_text=input_text)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        output_path: PathLike,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
    ) -> int:
        """Count, then delegate."""
        self.count += 1
        self.argvs.append([str(a) for a in argv])
        return self.inner.spawn(argv, output_path=output_path, env=env, cwd=cwd)
