"""Parents at another site, the relay's side: what a site waiting on jobs of the user's other sites is told
(``POST /v1/sync/parents``; the site's side is :mod:`balsam.db.foreign`).

For each job named, the relay answers from its mirrors of the user's sites:

- its mirrored state, when the mirror holds it;
- that it is *gone* when it never will finish: its site is not one of the user's sites here, or the mirror lacks it
  although its site has handed out a later id (``relay_site.jobs_issued``: a site pushes its rows in the order it
  wrote them, so every job it made before that id has reached the mirror, and one missing was deleted there or
  never existed), or its site had not handed out its id well after the asking site first asked about it (an id no
  job had when the child was made), or it waits on itself through a loop of parents that crosses sites (each site
  refuses a loop of its own jobs, but not one through jobs it cannot see);
- nothing while its site has not pushed it yet (the site asking goes on waiting, as it would for a parent here).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from balsam.db.ids import site_of
from balsam.relay import schema as t

DELETED = "DELETED"
"""A parent that is not at its site (deleted there, or never made)."""
LOOP = "LOOP"
"""A parent that waits on itself through parents at several sites."""
PUSH_SLACK_S = 120.0
"""A site's push reaches the relay within this long of the site reading what it pushes: a counter the relay heard
of this long after a site first asked about a job was read at that site after the ask."""
MAX_WALK = 100_000
"""Jobs looked at, at most, when looking for loops of parents in one answer (a longer chain of waiting jobs is not
searched further: its jobs wait on)."""
_CHUNK = 5000


def answer(c: Connection, user_id: int, ids: Sequence[int], since: Optional[Dict[int, float]] = None
           ) -> Tuple[Dict[int, str], Dict[int, Tuple[str, str]]]:
    """({id: mirrored state}, {id: (DELETED or LOOP, why in plain words)}) for the jobs ``ids`` as the user
    ``user_id`` may see them; a job in neither is not known yet. ``since``: when (this relay's clock) the asking site
    first asked about a job the relay did not know then: one above its site's id counter as that site reported it
    later (by :data:`PUSH_SLACK_S`) did not exist when its child came to wait on it, and never will be that job."""
    wanted = sorted({int(i) for i in ids})
    if not wanted:
        return {}, {}
    since = since or {}
    sites = {int(r.id): (str(r.name), int(r.jobs_issued or 0), r.jobs_issued_at) for r in c.execute(
        sa.select(t.site.c.id, t.site.c.name, t.site.c.jobs_issued, t.site.c.jobs_issued_at).where(t.site.c.user_id == user_id))}
    states: Dict[int, str] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        states.update((int(i), str(s)) for i, s in c.execute(
            sa.select(t.job.c.id, t.job.c.state).where(t.job.c.id.in_(chunk), t.job.c.site_id.in_(list(sites) or [0]))))
    gone: Dict[int, Tuple[str, str]] = {}
    for job_id in wanted:
        if job_id in states:
            continue
        site = sites.get(site_of(job_id))
        if site is None:
            gone[job_id] = (DELETED, f"parent job {job_id} does not exist: its site (id {site_of(job_id)}) is not one of "
                                     "your sites at the relay")
        elif job_id <= site[1]:
            gone[job_id] = (DELETED, f"parent job {job_id} is not at site {site[0]}: it was deleted there, or never existed")
        elif site[2] is not None and job_id in since and float(site[2]) - PUSH_SLACK_S > since[job_id]:
            gone[job_id] = (DELETED, f"parent job {job_id} does not exist at site {site[0]}: it had handed out job ids up to "
                                     f"{site[1]} after this job came to wait on it")
    waiting = [i for i, s in states.items() if s == "AWAITING_PARENTS"]
    for job_id, path in _loops(c, list(sites), waiting).items():
        names = " -> ".join(f"job {j} ({sites[site_of(j)][0]})" for j in path)
        gone[job_id] = (LOOP, f"parent job {job_id} waits on itself through a loop of parents across sites: {names}")
    return {i: s for i, s in states.items() if i not in gone}, gone


def _loops(c: Connection, site_ids: List[int], start: List[int]) -> Dict[int, List[int]]:
    """The jobs among ``start`` that are their own ancestors through waiting jobs of the user's sites, each with one
    such loop (the job first and last). Walks the mirror's parent links, waiting jobs only (a loop holds nothing
    else), level by level, at most :data:`MAX_WALK` jobs."""
    if not start or not site_ids:
        return {}
    parents: Dict[int, List[int]] = {}
    frontier: Set[int] = set(start)
    while frontier and len(parents) < MAX_WALK:
        level = sorted(frontier)
        for j in level:
            parents.setdefault(j, [])
        found: Set[int] = set()
        for i in range(0, len(level), _CHUNK):
            chunk = level[i:i + _CHUNK]
            rows = c.execute(sa.select(t.job_parent.c.child_id, t.job_parent.c.parent_id)
                             .join(t.job, t.job.c.id == t.job_parent.c.parent_id)
                             .where(t.job_parent.c.child_id.in_(chunk), t.job.c.state == "AWAITING_PARENTS",
                                    t.job.c.site_id.in_(site_ids)))
            for child, parent in rows:
                parents[int(child)].append(int(parent))
                found.add(int(parent))
        frontier = found - parents.keys()
    out: Dict[int, List[int]] = {}
    for job_id in start:
        path = _path_back(parents, job_id)
        if path is not None:
            out[job_id] = path
    return out


def _path_back(parents: Dict[int, List[int]], job_id: int) -> Optional[List[int]]:
    """A chain job_id -> parent -> ... -> job_id through ``parents``, or None (breadth first: the shortest)."""
    came_from: Dict[int, int] = {job_id: job_id}
    level = [job_id]
    while level:
        following: List[int] = []
        for j in level:
            for p in parents.get(j, ()):
                if p == job_id:
                    chain = [j]
                    while chain[-1] != job_id:
                        chain.append(came_from[chain[-1]])
                    return chain[::-1] + [job_id]
                if p not in came_from:
                    came_from[p] = j
                    following.append(p)
        level = following
    return None


def why(c: Connection, user_id: int, job_id: int) -> List[str]:
    """Why a job of the user's sites is in its state, as far as the relay's mirrors tell (``GET /v1/jobs/{id}/why``
    through the relay): for a job waiting on parents, each parent it waits for, where and in what state; otherwise
    its state and that its site's agent says more. Empty for a job the user does not have."""
    row = c.execute(sa.select(t.job.c.state, t.site.c.name).join(t.site, t.site.c.id == t.job.c.site_id)
                    .where(t.job.c.id == job_id, t.site.c.user_id == user_id)).first()
    if row is None:
        return []
    state, site_name = str(row.state), str(row.name)
    if state != "AWAITING_PARENTS":
        return [f"{state} at site {site_name}, as its agent last pushed it (on the site's host, 'balsam job show' "
                "says what the agent waits for)"]
    parent_ids = [int(p) for (p,) in c.execute(sa.select(t.job_parent.c.parent_id).where(t.job_parent.c.child_id == job_id))]
    states, gone = answer(c, user_id, parent_ids)
    names = dict(c.execute(sa.select(t.site.c.id, t.site.c.name).where(t.site.c.user_id == user_id)).all())
    out: List[str] = []
    for p in sorted(parent_ids):
        where = f"site {names[site_of(p)]}" if site_of(p) in names else f"site id {site_of(p)}"
        if p in gone:
            out.append(gone[p][1] + f": site {site_name} fails this job when it next syncs")
        elif p not in states:
            out.append(f"waits for parent job {p} at {where}, which the relay has not heard of yet (its site has not "
                       "pushed it)")
        elif states[p] != "JOB_FINISHED":
            out.append(f"waits for parent job {p} ({states[p]} at {where})")
    return out or [f"its parents have finished: site {site_name} releases it when it next syncs"]
