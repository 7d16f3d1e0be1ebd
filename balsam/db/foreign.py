"""Parents at another site: a job here that waits for a job of another of the user's sites (DESIGN.md section 6).

A multi-machine workflow makes a job at site B with ``parent_ids=[a_job.id]`` where ``a_job`` lives at site A. Ids
are unique across sites (the site id is in the high bits, :mod:`balsam.db.ids`), so a parent id names its site.
Such a parent is accepted only while this site is linked to a relay (``balsam site link``): the relay is what
carries the parent's state here. Each one has a row in ``foreign_parent`` (id, the state the relay last reported,
when), and the job waits in AWAITING_PARENTS as for a parent of its own site:

- The agent's sync service asks the relay for the states of the foreign parents jobs here wait on
  (:func:`waiting`; ``POST /v1/sync/parents``: the relay answers from its mirrors of the user's other sites).
- :func:`report` records them and applies what they set off, through the state machine and the same cascade a
  parent of this site sets off: every parent JOB_FINISHED releases the child; a FAILED or USER_KILLED parent fails
  it, saying which parent and why.
- A parent that will never finish fails the child as a deleted parent of this site does: the relay reports it
  DELETED when its site lacks it (deleted there, or never made) and LOOP when it waits on itself through parents
  at several sites (balsam.relay.parents), with why, which the child's FAILED event keeps.
- Both sites keep working offline: a parent's state reaches the relay when its site next pushes, and this site
  when it next syncs; until then the child waits.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Dict, List, Optional, Sequence, Tuple

from balsam.db.connection import chunks
from balsam.db.ids import LOCAL_BITS, site_of
from balsam.db.site_row import site_identity
from balsam.db.transitions import StateChange, apply_state_changes, ids_param, parent_cascade
from balsam.exceptions import ValidationError

UNKNOWN = "UNKNOWN"
"""The state of a foreign parent the relay has not reported yet (it waits, as for an unfinished parent)."""
FINISHED = "JOB_FINISHED"
FAILED_STATES = ("FAILED", "USER_KILLED")
DELETED = "DELETED"
"""A parent its site lacks (deleted there, or never made), as the relay reported it."""
LOOP = "LOOP"
"""A parent that waits on itself through parents at several sites, as the relay reported it."""
GONE_STATES = (DELETED, LOOP)
ENDED_STATES = frozenset(FAILED_STATES + GONE_STATES)
"""A parent in one of these never finishes: its children fail."""
_ENDED_SQL = "('FAILED', 'USER_KILLED', 'DELETED', 'LOOP')"
MAX_ASK = 10000
"""Foreign parents asked about in one request to the relay."""


def this_site(conn: sqlite3.Connection) -> int:
    """This site's id (0 in a store without a site row)."""
    identity = site_identity(conn)
    return identity[0] if identity else 0


def is_foreign(parent_id: int, site_id: int) -> bool:
    """Whether ``parent_id`` is a job of another site (an unprefixed id from before site prefixes is this site's)."""
    return site_of(parent_id) not in (0, site_id)


def record(conn: sqlite3.Connection, parent_ids: Sequence[int], where: str = "") -> Dict[int, str]:
    """Accept jobs of other sites as parents (ValidationError when this site is not linked to a relay); their
    recorded states ({id: state}, UNKNOWN until the relay reports one)."""
    from balsam.db.outbox import is_enabled

    ids = sorted({int(p) for p in parent_ids})
    if not ids:
        return {}
    if not is_enabled(conn):
        raise ValidationError(f"{where}parent job {ids[0]} is at another site (site {site_of(ids[0])}): a job can wait "
                              "for a job of another site only when this site is linked to a relay (balsam site link URL), "
                              "which brings the parent's state here")
    now = time.time()
    conn.executemany("INSERT OR IGNORE INTO foreign_parent(id, state, updated) VALUES (?, ?, ?)", [(p, UNKNOWN, now) for p in ids])
    out: Dict[int, str] = {}
    for chunk in chunks(ids, 20000):
        out.update((int(i), str(s)) for i, s in conn.execute(
            "SELECT id, state FROM foreign_parent WHERE id IN (SELECT value FROM json_each(?))", (ids_param(chunk),)))
    return out


def link_new_jobs(conn: sqlite3.Connection, first: int, last: int, site_id: int) -> Dict[int, Tuple[int, int]]:
    """Record the foreign parents of new jobs first..last; {child id: (failed parents, unfinished parents)} among
    them, for the children's initial states."""
    foreign = [int(r[0]) for r in conn.execute(
        "SELECT DISTINCT p.value FROM job c, json_each(c.parent_ids) p WHERE c.id BETWEEN ? AND ? AND c.parent_ids != '[]' "
        "AND (p.value >> ?) NOT IN (0, ?)", (first, last, LOCAL_BITS, site_id))]
    if not foreign:
        return {}
    record(conn, foreign, "")
    return {int(c): (int(f), int(u)) for c, f, u in conn.execute(
        f"SELECT c.id, sum(fp.state IN {_ENDED_SQL}), sum(fp.state != 'JOB_FINISHED') "
        "FROM job c, json_each(c.parent_ids) p JOIN foreign_parent fp ON fp.id = p.value "
        "WHERE c.id BETWEEN ? AND ? AND c.parent_ids != '[]' GROUP BY c.id", (first, last))}


def waiting(conn: sqlite3.Connection, limit: int = MAX_ASK) -> List[int]:
    """The foreign parents a job here waits on (a child in AWAITING_PARENTS) and the relay has not reported
    finished: the ones to ask the relay about."""
    if conn.execute("SELECT 1 FROM foreign_parent LIMIT 1").fetchone() is None:
        return []
    return [int(r[0]) for r in conn.execute(
        "SELECT fp.id FROM foreign_parent fp WHERE fp.state != 'JOB_FINISHED' AND EXISTS (SELECT 1 FROM job_parent jp "
        "JOIN job c ON c.id = jp.child_id WHERE jp.parent_id = fp.id AND c.state = 'AWAITING_PARENTS') ORDER BY fp.id LIMIT ?",
        (limit,))]


def asked_since(conn: sqlite3.Connection, ids: Sequence[int]) -> Dict[int, float]:
    """When (the relay's clock) this site first asked about each of ``ids`` that the relay did not know then."""
    return {int(i): float(t) for i, t in conn.execute(
        "SELECT id, asked FROM foreign_parent WHERE asked IS NOT NULL AND id IN (SELECT value FROM json_each(?))",
        (ids_param(sorted({int(i) for i in ids})),))}


def note_unknown(conn: sqlite3.Connection, ids: Sequence[int], relay_now: float) -> None:
    """Record that the relay, at ``relay_now`` (its clock), did not know these parents (the first such time is kept):
    one whose site has handed out no such id by a later sync never existed (balsam.relay.parents)."""
    conn.executemany("UPDATE foreign_parent SET asked = ? WHERE id = ? AND asked IS NULL", [(float(relay_now), int(i)) for i in ids])


def report(conn: sqlite3.Connection, states: Dict[int, str], ended: Optional[Dict[int, Tuple[str, str]]] = None) -> List[StateChange]:
    """Record the states the relay reported for foreign parents (``states``; ``ended``: those that will never finish,
    DELETED or LOOP, with why) and apply what they set off: children released when every parent finished, failed
    when a parent failed, was killed or will never finish, saying why; the changes applied."""
    ended = ended or {}
    reported = dict(states)
    reported.update((i, s) for i, (s, _) in ended.items())
    if not reported:
        return []
    current = dict(conn.execute("SELECT id, state FROM foreign_parent WHERE id IN (SELECT value FROM json_each(?))",
                                (ids_param(sorted(reported)),)).fetchall())
    moved = {int(i): str(s) for i, s in reported.items() if int(i) in current and current[int(i)] != str(s)}
    if moved:
        now = time.time()
        conn.executemany("UPDATE foreign_parent SET state = ?, updated = ? WHERE id = ?", [(s, now, i) for i, s in moved.items()])
    finished = [i for i, s in moved.items() if s == FINISHED]
    # Every parent that ended, moved or not: a child that came to wait on it since (balsam job add-parents) fails too.
    failed = [(int(i), str(s)) for i, s in reported.items() if int(i) in current and s in ENDED_STATES]
    reasons = {int(i): why for i, (_, why) in ended.items() if why}
    changes = parent_cascade(conn, finished, failed, where=" (at another site)", reasons=reasons)
    if changes:
        apply_state_changes(conn, changes, strict=False)
    return changes


def away_reasons(conn: sqlite3.Connection, parent_ids: Sequence[int]) -> List[str]:
    """Why a job waits on its parents at other sites, in plain words (``Job.why()``)."""
    if not parent_ids:
        return []
    out = []
    for pid, state in conn.execute("SELECT id, state FROM foreign_parent WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
                                   (ids_param([int(p) for p in parent_ids]),)):
        if state == FINISHED:
            continue
        if state in ENDED_STATES:
            out.append(f"parent job {pid} at another site (site {site_of(pid)}) will never finish (the relay reported it "
                       f"{state}): the agent fails this job when it next syncs")
            continue
        seen = "the relay has not reported its state yet" if state == UNKNOWN else f"{state} when the relay last reported it"
        out.append(f"waits for parent job {pid} at another site (site {site_of(pid)}; {seen}): its state comes "
                   "through the relay when both sites sync")
    return out
