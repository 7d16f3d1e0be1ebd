"""Jobs a hook, or a job's Python ``run()``, asks for again when it runs again: the job it made before is that job,
not a second one. (A ``run()`` runs again after a timeout or a reset; the launcher marks it as a hook is marked.)

A hook (preprocess, postprocess, handle_error, handle_timeout) runs again when its last run was cut short (the site
agent killed or stopped while it ran, another hook worker died), and each time its job comes back to the same state
(a handle_error after each failed run). A hook that makes jobs then asks again for the jobs it made the first time;
each workdir is one job's, so the hook raised 'workdir ... is already used' and its job FAILED (Balsam 0.7, which
checks workdirs only within one bulk call, made every child twice instead).

While a hook runs (:func:`hook_running`), a new job whose workdir a job of the same app and parameters already has,
with at least the parents asked for, is that job: the Job object takes its id and fields and nothing is created.
Its state is what it is (it may have run already); its tags, resources and data are not changed. A job in a taken
workdir that differs is still refused, the error saying how it differs. Outside hooks nothing changes: a script
run twice is told that the workdir is taken.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from balsam.db.codec import loads
from balsam.db.creation import NEW_JOB_COLUMNS

if TYPE_CHECKING:
    from balsam._api.sites import SiteRef

_hook_job: Optional[int] = None
"""The job whose hook runs in this process now (None: no hook runs)."""

_APP, _PARAMS, _PARENTS, _PICKLED = (NEW_JOB_COLUMNS.index(c) for c in ("app_id", "parameters", "parent_ids", "parameters_pickled"))


@contextmanager
def hook_running(job_id: int) -> Iterator[None]:
    """Mark the body as job ``job_id``'s hook: the jobs it asks for again are the ones it made before (see the module)."""
    global _hook_job
    before, _hook_job = _hook_job, int(job_id)
    try:
        yield
    finally:
        _hook_job = before


def in_hook() -> bool:
    """Whether a hook runs in this process now."""
    return _hook_job is not None


def made_before(site: "SiteRef", rows: Sequence[Tuple[Any, ...]], columns: Sequence[str]) -> Tuple[Dict[int, Tuple[Any, ...]], List[str]]:
    """For new-job tuples (``NEW_JOB_COLUMNS``) of a creation the site refused: ``{index: the existing job's row}`` (in
    ``columns``) for each whose workdir holds the same job (app, parameters, and the parents asked for among its own),
    and a line for each taken workdir whose job differs, saying how."""
    by_workdir = {row[columns.index("workdir")]: row for row in site.backend.select("job", {"workdir": [r[0] for r in rows]},
                                                                                     columns=columns)}
    same: Dict[int, Tuple[Any, ...]] = {}
    differ: List[str] = []
    for i, new in enumerate(rows):
        old = by_workdir.get(new[0])
        if old is None:
            continue
        have = dict(zip(columns, old))
        if have["app_id"] != new[_APP]:
            why = "another app"
        elif loads(have["parameters"] or "{}") != loads(new[_PARAMS]) or (have["parameters_pickled"] or None) != (new[_PICKLED] or None):
            why = "other parameters"
        elif not set(loads(new[_PARENTS])) <= set(loads(have["parent_ids"] or "[]")):
            why = "other parents"
        else:
            same[i] = tuple(old)
            continue
        differ.append(f"job {have['id']} in {new[0]!r} has {why} than asked, so it is not the job this hook made before")
    return same, differ
