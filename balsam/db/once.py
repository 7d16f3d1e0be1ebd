"""Exactly-once answers of the /v1 HTTP API, kept in the site DB (DESIGN.md section 5).

A mutating request with an ``Idempotency-Key`` runs at most once: its answer is stored in the same transaction as
its writes, and a retry gets that answer. Launchers' acquires and status batches come in groups (one transaction
for many launchers, :mod:`balsam.db.group`); a kept acquire answer holds only the jobs' ids, and a retry reads the
same jobs again. :class:`ExactlyOnce` is a part of :class:`balsam.db.backend.LocalBackend`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from balsam.db.connection import Store
from balsam.db.fields import LAUNCHER_FIELDS
from balsam.db.jobs import StateChange
from balsam.exceptions import ValidationError

Rejected = List[Tuple[int, str]]
"""Refused state changes: (index in the batch, why)."""

ACQUIRE_CONSTRAINTS = frozenset({"states", "filter_tags", "app_ids", "serial_only", "max_nodes_per_job", "max_aggregate_nodes",
                                 "max_wall_time_min", "max_gpus_per_node", "sort_by"})
ANSWER_KEEP_S = 86400.0
"""How long the answer of a mutating API request is kept for its retries (a day)."""
LAUNCHER_ANSWER_KEEP_S = 3600.0
"""How long a launcher's acquire and status-batch answers are kept: far past its lease (300 s) and its clients'
retries (at most 300 s), but not a day: at thousands of jobs/s a day of them would fill the disk."""


def launcher_changes(changes: Sequence[StateChange], session_id: Optional[int]) -> Sequence[StateChange]:
    """A launcher's status batch under its lease ``session_id``: each change bound to the lease, or ValidationError
    for one that writes more than :data:`LAUNCHER_FIELDS`. Without a lease, ``changes`` as they are."""
    if session_id is None:
        return changes
    for ch in changes:
        extra = set(ch.fields or ()) - LAUNCHER_FIELDS
        if extra:
            raise ValidationError(f"job {ch.job_id}: a launcher may not write {sorted(extra)[0]!r}")
    return [ch._replace(session_id=session_id) for ch in changes]


class ExactlyOnce:
    """The operations of a site's backend that run each request at most once (HTTP retries, launchers' groups)."""

    store: Store
    host: str
    expiry_s: float

    def apply_batches_once(self, batches: Sequence[Tuple[str, str, Optional[int], Sequence[StateChange]]],
                           answer: Callable[[Rejected], Tuple[int, bytes]], keep_s: float = LAUNCHER_ANSWER_KEEP_S) -> List[Any]:
        """Several launchers' status batches (idempotency key, fingerprint, lease, changes) applied as one, each at
        most once: one pass of the state engine and one write of the answers for all of them. Per batch, in order:
        (status, body, replayed), or the exception that batch alone gets (a key reused for another request, a
        field a launcher may not write). ``answer`` makes a batch's answer from its refused changes."""
        from balsam.db.jobs import apply_state_changes

        results: List[Any] = [None] * len(batches)
        now = time.time()
        with self.store.write() as conn:
            keys = [b[0] for b in batches]
            stored = _kept_answers(conn, keys)
            first: Dict[str, int] = {}
            todo: List[Tuple[int, List[StateChange]]] = []
            for i, (key, fingerprint, session_id, changes) in enumerate(batches):
                hit = stored.get(key)
                if hit is not None or key in first:
                    known = hit[0] if hit is not None else batches[first[key]][1]
                    if known != fingerprint:
                        results[i] = ValidationError("Idempotency-Key was already used for a different request")
                    elif hit is not None:
                        results[i] = (hit[1], hit[2], True)
                    continue  # a retry of a batch in this same group: answered below from the first
                first[key] = i
                try:
                    changes = launcher_changes(changes, session_id)
                except ValidationError as e:
                    results[i] = e
                    continue
                todo.append((i, list(changes)))
            refused: Dict[int, Rejected] = {i: [] for i, _ in todo}
            every = [ch for _, chs in todo for ch in chs]
            rejected = apply_state_changes(conn, every, strict=False).rejected if every else []
            if rejected:  # back to the batch and the index each refused change came with
                owner = {id(ch): (i, n) for i, chs in todo for n, ch in enumerate(chs)}
                for ch, why in rejected:
                    where = owner.get(id(ch))
                    if where is not None:
                        refused[where[0]].append((where[1], why))
            rows = []
            for i, _ in todo:
                status, body = answer(refused[i])
                results[i] = (status, body, False)
                rows.append((batches[i][0], batches[i][1], status, body, now))
            _keep_answers(conn, rows, now, keep_s)
            for i, (key, _fingerprint, _sid, _changes) in enumerate(batches):
                if results[i] is None:  # the same key twice in one group: the second is a replay of the first
                    original = results[first[key]]
                    results[i] = original if isinstance(original, BaseException) else (original[0], original[1], True)
        return results

    def acquire_batch(self, requests: Sequence[Tuple[Optional[str], str, int, int, Dict[str, Any], bool]],
                      answer: Optional[Callable[[List[Dict[str, Any]]], Tuple[int, bytes]]] = None,
                      keep_s: float = LAUNCHER_ANSWER_KEEP_S) -> List[Any]:
        """Several launchers' acquires (idempotency key or None, fingerprint, lease, max_num_jobs, constraints, final)
        in one transaction: one look-up of the keys' stored answers, one expiry pass over the leases and one write
        of the new answers for all of them; each acquire in its own savepoint (a lease that expired fails alone).
        Per request, in order: (status, body, replayed), None when it found no job and is not ``final`` (nothing
        written: the caller waits and asks again), or the exception that request alone gets. A key's answer is kept
        only when it holds jobs or is final.

        ``answer`` makes the body from the jobs (JSON columns as stored text). Without it, the body is the list of
        jobs itself and the caller makes it, after the transaction, off the site's writer lock (the HTTP server does:
        encoding 64 jobs took as long as acquiring them). Either way a key keeps only the jobs' ids (kept whole, a
        node's worth of jobs wrote ~23 KB to the WAL per acquire): a retry is answered with the same jobs, read again."""
        from balsam.db import sessions

        results: List[Any] = [None] * len(requests)
        now = time.time()
        with self.store.write() as conn:
            keys = [r[0] for r in requests if r[0]]
            stored = _kept_answers(conn, keys)
            sessions.expire_sessions(conn, expiry_s=self.expiry_s, host=self.host, now=now)
            first: Dict[str, int] = {}
            rows = []
            for i, (key, fingerprint, session_id, max_num_jobs, constraints, final) in enumerate(requests):
                hit = stored.get(key) if key else None
                if key and (hit is not None or key in first):
                    known = hit[0] if hit is not None else requests[first[key]][1]
                    if known != fingerprint:
                        results[i] = ValidationError("Idempotency-Key was already used for a different request")
                    elif hit is not None:
                        results[i] = (hit[1], _acquired_again(conn, hit[2], answer), True)
                    continue  # a retry within this batch: answered below from the first
                try:
                    unknown = set(constraints) - ACQUIRE_CONSTRAINTS
                    if unknown:
                        raise ValidationError(f"unknown acquire constraint {sorted(unknown)[0]!r}")
                    with self.store.write():
                        jobs = sessions.acquire(conn, session_id, max_num_jobs=max_num_jobs, json_text=True, now=now, **constraints)
                except Exception as e:  # this request's error (its savepoint undid its writes); the others go on
                    results[i] = e
                    continue
                if not jobs and not final:
                    continue  # None: nothing written, and the key stays free for the next try
                status, body = answer(jobs) if answer is not None else (200, jobs)
                results[i] = (status, body, False)
                if key:
                    first[key] = i
                    rows.append((key, fingerprint, status, _ACQUIRED_IDS + ",".join([str(j["id"]) for j in jobs]).encode(), now))
            if rows:
                _keep_answers(conn, rows, now, keep_s)
        for i, (key, fingerprint, *_rest) in enumerate(requests):
            if key and results[i] is None and key in first and first[key] != i and requests[first[key]][1] == fingerprint:
                original = results[first[key]]
                body = original[1] if isinstance(original[1], bytes) else [dict(job) for job in original[1]]
                results[i] = (original[0], body, True)  # jobs of their own: whoever makes the answers may consume them
        return results

    def once(self, key: str, fingerprint: str, fn: Callable[[], Optional[Tuple[int, bytes]]],
             keep_s: float = ANSWER_KEEP_S) -> Optional[Tuple[int, bytes, bool]]:
        """Run ``fn`` (a mutating request) at most once per idempotency ``key``: its answer is stored in the site DB in
        the same transaction as its writes, and a retry gets the stored answer. (status, body, replayed), or None
        when ``fn`` returned None (it wrote nothing: an empty acquire, to be tried again).

        A key reused for a different request (``fingerprint``: method, path, body hash) is a ValidationError.
        """
        with self.store.write() as conn:
            row = conn.execute("SELECT fingerprint, status, body FROM http_answer WHERE key=?", (key,)).fetchone()
            if row is not None:
                if row[0] != fingerprint:
                    raise ValidationError("Idempotency-Key was already used for a different request")
                return int(row[1]), bytes(row[2]), True
            answer = fn()
            if answer is None:
                return None
            status, body = answer
            if status < 500:
                now = time.time()
                _keep_answers(conn, [(key, fingerprint, status, body, now)], now, keep_s)
        return status, body, False


_ACQUIRED_IDS = b"ids:"
"""How a kept acquire answer starts: the acquired jobs' ids follow (an answer kept whole is JSON: it starts with "{")."""


def _acquired_again(conn: Any, kept: bytes, answer: Optional[Callable[[List[Dict[str, Any]]], Tuple[int, bytes]]]) -> Any:
    """A kept acquire answer for a retry: the same jobs read again (their body, or without ``answer`` the jobs
    themselves), or the body as kept by a Balsam that kept it whole."""
    from balsam.db import sessions

    if not kept.startswith(_ACQUIRED_IDS):
        return kept
    ids = [int(i) for i in kept[len(_ACQUIRED_IDS):].split(b",") if i]
    jobs = sessions.acquired_again(conn, ids)
    return answer(jobs)[1] if answer is not None else jobs


def _kept_answers(conn: Any, keys: Sequence[str]) -> Dict[str, Tuple[str, int, bytes]]:
    """The kept answers of these idempotency keys: key -> (fingerprint, status, body), in one statement."""
    if not keys:
        return {}
    from balsam.db.codec import dumps

    return {str(r[0]): (str(r[1]), int(r[2]), bytes(r[3])) for r in conn.execute(
        "SELECT key, fingerprint, status, body FROM http_answer WHERE key IN (SELECT value FROM json_each(?))", (dumps(keys),))}


_last_sweep = [0.0]


def _keep_answers(conn: Any, rows: Sequence[Tuple[str, str, int, bytes, float]], now: float, keep_s: float) -> None:
    """Store answers (key, fingerprint, status, body, created) for ``keep_s``, and about once a minute forget those
    whose time has passed (one range of the expiry index)."""
    conn.executemany("INSERT INTO http_answer(key, fingerprint, status, body, created, expires) VALUES (?,?,?,?,?,?)",
                     [(*row, row[4] + keep_s) for row in rows])
    if now - _last_sweep[0] >= 60.0:
        _last_sweep[0] = now
        conn.execute("DELETE FROM http_answer WHERE expires < ?", (now,))
