"""The launcher's journal: what a launcher learned about its jobs, kept where its death cannot lose it.

A launcher records one line per state change (RUNNING, RUN_DONE with its return code, RUN_ERROR, ...) for
``<site>/.balsam/journal/<session id>.jsonl`` as it queues the change for the DB, and appends the lines of a
loop iteration with one plain ``write`` on an ``O_APPEND`` descriptor before the loop waits again (so within
microseconds of the change, and before the StatusUpdater's next flush can run): once it returns, the bytes are
in the kernel and survive the process being killed with SIGKILL (no fsync: a power cut is not what this
guards against, and fsync would cost the launcher its throughput).

Whoever ends a lease (the launcher itself, the site agent when it finds the lease expired or its process
gone, the scheduler service when the batch job ended) calls :func:`replay` inside the same transaction,
before the lease's jobs are timed out and unlocked: for each job the lease still holds, the journal's changes
are applied in order, with the lease, through the ordinary state machine. So a job that finished is recorded
as finished (never run again), and one that was still running becomes RUN_TIMEOUT with an event saying the
launcher died. Changes the DB already has are refused by the transition table and change nothing.

The file lives in the site directory, so this works the same for a launcher on the home host (direct SQLite)
and one on a compute node (the agent's HTTP API): the agent reads what the launcher wrote on the shared
filesystem.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set

from balsam.db.connection import after_commit
from balsam.db.jobs import StateChange, apply_state_changes
from balsam.db.states import JobState

logger = logging.getLogger(__name__)

JOURNAL_DIR = "journal"
_B64 = "__b64__"


def journal_dir(state_dir: Path) -> Path:
    """Where the journals of a site live, given its state folder (``.balsam``)."""
    return Path(state_dir) / JOURNAL_DIR


def journal_path(state_dir: Path, session_id: int, part: str = "") -> Path:
    """The journal of one lease: its launcher's, or (``part``: ``w0``, ``w1``...) the RUNNING lines of one of its
    serial-mode node workers, which start jobs away from the launcher's loop (see :func:`replay`)."""
    if part and not (part.isascii() and part.isalnum()):
        raise ValueError(f"bad journal part {part!r}")
    return journal_dir(state_dir) / (f"{int(session_id)}.{part}.jsonl" if part else f"{int(session_id)}.jsonl")


def _parts(state_dir: Path, session_id: int) -> List[Path]:
    """The node workers' journals of lease ``session_id``."""
    directory = journal_dir(state_dir)
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{int(session_id)}.w*.jsonl"))


def _encode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {_B64: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _B64 in value and isinstance(value[_B64], str):
            return base64.b64decode(value[_B64])
        return {k: _decode(v) for k, v in value.items()}
    return value


_json = json.JSONEncoder(separators=(",", ":"), default=str).encode


_texts: Dict[Any, str] = {}
_TEXTS_MAX = 512


def _text(value: Any) -> Optional[str]:
    """The JSON text of a state name, or of a small flat dict whose values are strings, ints or None (what a launcher
    journals for nearly every job: the same few, over and over), remembered; None for anything else."""
    if type(value) is dict:
        for k, v in value.items():
            t = type(v)
            if type(k) is not str or not (t is str or t is int or v is None):  # no bool: True == 1 would share an entry
                return None
        key: Any = tuple(value.items())
    else:
        key = value
    text = _texts.get(key)
    if text is None:
        if len(_texts) >= _TEXTS_MAX:
            _texts.clear()  # error tails vary: keep the memo small
        text = _texts[key] = _json(value)
    return text


def encode_line(job_id: int, state: str, timestamp: float, data: Optional[Dict[str, Any]],
                fields: Optional[Dict[str, Any]]) -> bytes:
    """One journal line (pure)."""
    head = f"[{int(job_id)},{_text(state)},{float(timestamp)!r}"
    if not data and not fields:
        return f"{head}]\n".encode()
    data_text = _text(data) if data else "null"
    fields_text = _text(fields) if fields else ""
    if data_text is not None and fields_text is not None:
        return f"{head},{data_text}{',' if fields_text else ''}{fields_text}]\n".encode()
    record: List[Any] = [job_id, state, timestamp, data or None]
    if fields:
        record.append(_encode(fields) if any(isinstance(v, (bytes, bytearray, dict)) for v in fields.values()) else fields)
    return (_json(record) + "\n").encode()


def read(path: Path, job_ids: Optional[Set[int]] = None) -> List[StateChange]:
    """The changes in a journal (those of ``job_ids`` when given), in the order they were written. A torn last
    line (the launcher died mid-write) and lines that are not journal records are skipped."""
    out: List[StateChange] = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn write at the end
                try:
                    rec = json.loads(raw)
                    job_id, state, ts = int(rec[0]), str(rec[1]), float(rec[2])
                except (ValueError, TypeError, IndexError, KeyError):
                    continue
                if job_ids is not None and job_id not in job_ids:
                    continue
                data = rec[3] if len(rec) > 3 and isinstance(rec[3], dict) else None
                fields = _decode(rec[4]) if len(rec) > 4 and isinstance(rec[4], dict) else None
                out.append(StateChange(job_id, state, ts, data, fields))
    except FileNotFoundError:
        return []
    return out


def db_state_dir(conn: sqlite3.Connection) -> Optional[Path]:
    """The state folder of the store behind ``conn`` (where its DB file is); None for an in-memory DB."""
    for _seq, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return Path(file).parent
    return None


def replay(conn: sqlite3.Connection, session_id: int, state_dir: Optional[Path] = None) -> int:
    """Apply the journal of lease ``session_id`` to the jobs it still holds (inside the caller's write
    transaction, before the lease ends). Returns the number of changes applied."""
    state_dir = state_dir if state_dir is not None else db_state_dir(conn)
    if state_dir is None:
        return 0
    path = journal_path(state_dir, session_id)
    parts = _parts(state_dir, session_id)
    if not path.exists() and not parts:
        return 0
    held = {row[0] for row in conn.execute("SELECT id FROM job WHERE session_id=?", (session_id,))}
    if not held:
        return 0
    found = read(path, held)
    # A serial-mode node worker journals each RUNNING itself before the spawn; the launcher journals it again (with
    # the same time) when the worker tells it, then the job's end. A start the launcher never heard of (it was
    # stopped or killed first) is the latest run of that job: it goes after everything the launcher wrote.
    known = {(c.job_id, c.timestamp) for c in found if c.state == JobState.RUNNING.value}
    for part in parts:
        for c in read(part, held):
            if c.state == JobState.RUNNING.value and (c.job_id, c.timestamp) not in known:
                known.add((c.job_id, c.timestamp))
                found.append(c)
    changes = [StateChange(c.job_id, c.state, c.timestamp, {**(c.data or {}), "from_journal": session_id}, c.fields, session_id)
               for c in found]
    if not changes:
        return 0
    result = apply_state_changes(conn, changes, strict=False)
    if result.applied:
        logger.warning("lease %s: %d state changes its launcher had not written were recovered from its journal",
                       session_id, result.applied)
    return result.applied


def remove(conn: sqlite3.Connection, session_id: int, state_dir: Optional[Path] = None) -> None:
    """Delete the journal of an ended lease (nothing in it is needed any more) once the transaction that
    ended the lease commits: if the commit fails (a full disk), the journal must stay for the next try."""
    state_dir = state_dir if state_dir is not None else db_state_dir(conn)
    if state_dir is None:
        return
    paths = [journal_path(state_dir, session_id)] + _parts(state_dir, session_id)

    def unlink() -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot remove the journal of lease %s: %s", session_id, exc)

    after_commit(conn, unlink)


def leftover(state_dir: Path, live_sessions: Sequence[int]) -> List[Path]:
    """Journals whose lease no longer exists (left by a crash between the release and the removal)."""
    directory = journal_dir(state_dir)
    if not directory.is_dir():
        return []
    live = {int(s) for s in live_sessions}
    return sorted(p for p in directory.glob("*.jsonl")
                  if p.name.split(".", 1)[0].isdigit() and int(p.name.split(".", 1)[0]) not in live)


class JournalWriter:
    """The launcher's side: appends a line per state change to its lease's journal (see the module docstring).

    A write that fails (a full disk) keeps what was not written, in order, and the next :meth:`flush` tries
    again (the loop's next wake-up): a launcher that cannot write keeps its results until it can. The first
    failure is logged, and so is the recovery."""

    def __init__(self, state_dir: Path, session_id: int, part: str = "") -> None:
        self.path = journal_path(state_dir, session_id, part)
        self._fd: Optional[int] = None
        self._buf: List[bytes] = []
        self._failing = False
        self._open()

    def _open(self) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            logger.error("the launcher's journal %s cannot be written (%s): its lines are kept in memory and written "
                         "as soon as it can", self.path, exc.strerror or exc)

    @property
    def pending(self) -> int:
        """Lines (or parts of one) recorded but not yet in the journal."""
        return len(self._buf)

    def append(self, job_id: int, state: str, timestamp: float, data: Optional[Dict[str, Any]] = None,
               fields: Optional[Dict[str, Any]] = None) -> None:
        """Record one change; :meth:`flush` writes what was recorded."""
        self._buf.append(encode_line(job_id, state, timestamp, data, fields))

    def flush(self) -> bool:
        """Append what was recorded with one ``write`` (in the kernel when this returns). Returns True when
        nothing is left unwritten; on a failure what is left stays for the next call."""
        if not self._buf:
            return True
        if self._fd is None and not self._open():
            return False
        assert self._fd is not None
        data = b"".join(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf.clear()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            self._buf.append(data)  # a part of a line may be in the file: the rest completes it, in order
            self._failed(exc)
            return False
        if self._failing:
            self._failing = False
            logger.warning("the launcher's journal %s is written again", self.path)
        return True

    def close(self) -> bool:
        """Write what is left and close the file (the lease's release removes it). Returns True if nothing
        recorded is left unwritten."""
        done = self.flush()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        return done
