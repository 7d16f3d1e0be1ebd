"""The /v1 routes of bulk creations too large for one request (:mod:`balsam.db.uploads`): a client sends the jobs
in parts, each checked and kept at the site, then one request creates them all in one transaction, so they appear
all at once or not at all whatever happens to the client or the agent in between. Every request is idempotent
(a part sent again replaces itself; a retried commit is answered from the site DB), so retries apply once.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from balsam.http import handlers as h
from balsam.http.schemas import iso


def _upload_name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200 or not value.isprintable():
        raise h.FieldError("upload: 1 to 200 printable characters", "upload")
    return value


def stage_jobs(call: h.Call) -> h.Answer:
    """``POST /v1/uploads/jobs``: one part of a bulk creation too large for one request, checked and kept at the site
    (in its DB) until ``POST /v1/uploads/jobs/commit`` creates every part's jobs in one transaction."""
    h._need_write(call)
    body = h._body_obj(call)
    upload = _upload_name(body.get("upload"))
    part = h._int(body.get("part"), "part", 0, 99_999)
    offset = h._int(body.get("offset", 0), "offset")
    items = body.get("jobs")
    if not isinstance(items, list):
        raise h.FieldError("jobs: expected a list of jobs", "jobs")
    rows, transfers = h._new_job_rows(items, offset)
    h._check_parameters(call, rows, offset)
    kept = call.backend.stage_jobs(upload, part, rows, transfers)
    return 200, {"upload": upload, "part": part, "jobs": len(rows), "kept": kept}


def commit_jobs(call: h.Call) -> h.Answer:
    """``POST /v1/uploads/jobs/commit``: the jobs of every part of an upload, created in one transaction (all or none);
    the answer names them compactly: ids as [first, count] runs, initial states as [state, count] runs."""
    h._need_write(call)
    body = h._body_obj(call)
    upload = _upload_name(body.get("upload"))
    ids, states, now = call.backend.create_staged_jobs(upload, h._int(body.get("parts"), "parts", 1, 100_000))
    return 201, {"upload": upload, "ids": id_runs(ids), "states": value_runs(states), "created": iso(now)}


def drop_upload(call: h.Call) -> h.Answer:
    """``DELETE /v1/uploads/jobs?upload=KEY``: forget the parts of a bulk creation that will not be applied."""
    h._need_write(call)
    return 200, {"deleted": call.backend.drop_upload(_upload_name(call.q1("upload")))}


def id_runs(ids: Sequence[int]) -> List[List[int]]:
    """Ids as [first, count] runs of consecutive ids."""
    out: List[List[int]] = []
    for i in ids:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return out


def value_runs(values: Sequence[str]) -> List[List[Any]]:
    """Values as [value, count] runs of equal values."""
    out: List[List[Any]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return out
