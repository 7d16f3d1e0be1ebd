"""The /v1 routes of bulk writes, each all or nothing: jobs are created in one request, or, when they are too many
for one (:mod:`balsam.db.uploads`), in parts, each checked and kept at the site, then one request creates them all in
one transaction; updates
and deletes of many rows by id are one request (one transaction) whatever their number. So the rows change all at
once or not at all whatever happens to the client or the agent in between. Every request is idempotent (a part sent
again replaces itself; a retried commit, update or delete is answered from the site DB), so retries apply once.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from balsam.db.codec import loads
from balsam.db.jobs import NEW_JOB_COLUMNS, new_job_row, plain_job_row
from balsam.exceptions import ValidationError
from balsam.http import handlers as h
from balsam.http.schemas import COLUMNS, iso, row_to_wire
from balsam.runtime import paused_gc

MAX_JOBS_PER_REQUEST = 100_000
"""The most jobs one request may create or stage (20 times the Python API's 5,000-job parts). Each costs the server
~1.4 KB while it is checked and written (100,000: ~140 MB); a million in one body would hold ~1.4 GB of the agent's
memory for minutes, so more come in parts (``POST /v1/uploads/jobs``), all created at once by the commit."""


def _new_job_rows(call: h.Call, items: List[Any], offset: int = 0) -> Tuple[List[Tuple[Any, ...]], Dict[int, Dict[str, Any]]]:
    """New-job rows (and transfers by row index) of job-create objects, each checked; errors name the job by its
    index in the whole creation (``offset``: the index of the first of ``items``)."""
    if len(items) > MAX_JOBS_PER_REQUEST:
        raise ValidationError(f"one request creates at most {MAX_JOBS_PER_REQUEST:,} jobs, and this one has {len(items):,}: send them "
                              "in parts (POST /v1/uploads/jobs, then /v1/uploads/jobs/commit creates them all at once), as "
                              "the Python API's bulk_create does")
    rows = []
    transfers: Dict[int, Dict[str, Any]] = {}
    allowed = set(NEW_JOB_COLUMNS) | {"transfers", "site_id"}
    for i, item in enumerate(items):
        n = i + offset
        plain = plain_job_row(item) if type(item) is dict else None
        if plain is not None:  # most jobs: the same row as below, in a few cheap checks
            rows.append(plain)
            continue
        try:
            if not isinstance(item, dict):
                raise ValidationError(f"job {n}: expected an object")
            unknown = set(item) - allowed
            if unknown:
                raise ValidationError(f"job {n}: unknown field {sorted(unknown)[0]!r}")
            if "workdir" not in item or "app_id" not in item:
                raise ValidationError(f"job {n}: workdir and app_id are required")
            params = item.get("parameters") or {}
            if not isinstance(params, dict):
                raise ValidationError(f"job {n}: parameters must be an object")
            resources = {k: item[k] for k in ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
                                               "node_packing_count", "wall_time_min") if k in item}
            for k, v in resources.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValidationError(f"job {n}: {k} must be a number")
            parents = item.get("parent_ids") or []
            if not isinstance(parents, list):
                raise ValidationError(f"job {n}: parent_ids must be a list")
            for key in ("tags", "data", "launch_params"):
                if item.get(key) is not None and not isinstance(item[key], dict):
                    raise ValidationError(f"job {n}: {key} must be an object")
            row = new_job_row(
                item["workdir"], h._int(item["app_id"], "app_id"), tags=item.get("tags"), parameters=params, data=item.get("data"),
                launch_params=item.get("launch_params"), parent_ids=[h._int(p, "parent_ids") for p in parents],
                pending_file_cleanup=bool(item.get("pending_file_cleanup", True)), **resources)
            if item.get("parameters_pickled") is not None:
                row = row[:-1] + (_pickled_parameters(call, item["parameters_pickled"], n),)
            rows.append(row)
            if item.get("transfers"):
                if not isinstance(item["transfers"], dict):
                    raise ValidationError(f"job {n}: transfers must be an object")
                transfers[i] = item["transfers"]
        except h.FieldError:
            raise
        except ValidationError as e:
            raise h._locate(n, e) from None
    return rows, transfers


def _pickled_parameters(call: h.Call, value: Any, n: int) -> bytes:
    """A job's ``parameters_pickled`` (run() arguments JSON cannot hold, pickled by the Python API): code as much as
    app source is, so only the site's own principal may send it (as it alone may sync apps), and the server never
    unpickles it; the launcher does, as it loads the site owner's apps (DESIGN.md section 7)."""
    if call.principal.kind != "site":
        raise h.FieldError(f"job {n}: Python objects JSON cannot hold (pickled parameters) are accepted only from the site's "
                           "owner (the site secret); pass plain JSON values", f"{n}.parameters_pickled")
    return h._b64_bytes(value, f"job {n}: parameters_pickled")


def create_jobs(call: h.Call) -> h.Answer:
    """``POST /v1/jobs``: create the jobs in one transaction; the answer is the jobs as created, or with
    ``?answer=ids`` only their ids and initial states, as [first, count] and [state, count] runs (as a commit's),
    which a client that keeps its own copy of each job needs (the Python API from another host)."""
    h._need_write(call)
    compact = _compact_answer(call)
    items = h._body_list(call, "job")
    with paused_gc():  # thousands of jobs' objects: collections would walk them again and again
        rows, transfers = _new_job_rows(call, items)
        versions = _check_parameters(call, rows)
        ids, states, now = call.backend.create_jobs(rows, transfers, checked_app_versions=versions)
    if compact:
        return 201, created_answer(ids, states, now)
    if not ids:
        return 201, []
    columns = COLUMNS["job"]
    found = {r[0]: r for r in call.backend.select("job", {"id": ids}, columns=columns)}
    return 201, [row_to_wire("job", dict(zip(columns, found[i]))) for i in ids if i in found]


def _compact_answer(call: h.Call) -> bool:
    answer = call.q1("answer", "rows")
    if answer not in ("rows", "ids"):
        raise h.FieldError(f"answer: 'rows' (the jobs as created) or 'ids' (ids and states as runs), got {answer!r}", "answer")
    return answer == "ids"


def created_answer(ids: Sequence[int], states: Sequence[str], now: float) -> Dict[str, Any]:
    """Created jobs as an answer names them compactly: ids as [first, count] runs, initial states as [state, count]
    runs, and the creation time."""
    return {"ids": id_runs(ids), "states": value_runs(states), "created": iso(now)}


def _check_parameters(call: h.Call, rows: Sequence[Tuple[Any, ...]], offset: int = 0) -> Dict[int, int]:
    """Every job's parameters against its app (required and known names), as the Python API checks them (errors
    name the job by its index in the whole creation, from ``offset``); the version of each app they were checked
    against ({app id: version}: the store checks them again only if an app changed since)."""
    import json

    app_ids = sorted({r[1] for r in rows})
    apps = {r[0]: (r[1], json.loads(r[2]), bool(r[3]), r[4]) for r in
            call.backend.select("app", {"id": app_ids}, columns=("id", "name", "parameters", "var_keyword", "version"))}
    checks = {}
    for app_id, (name, spec, var_kw, _version) in apps.items():
        required = frozenset(k for k, v in spec.items() if v.get("required"))
        checks[app_id] = (name, spec, var_kw, required, frozenset(spec))
    for n, r in enumerate(rows, offset):
        check = checks.get(r[1])
        if check is None:
            raise h.FieldError(f"no app with id {r[1]} at this site", f"{n}.app_id")
        name, spec, var_kw, required, known = check
        keys = loads(r[3]).keys()
        if required <= keys and (var_kw or keys <= known):
            continue
        missing = sorted(k for k in required if k not in keys)
        if missing:
            raise h.FieldError(f"job {r[0]!r}: app {name} needs parameter {missing[0]!r}", f"{n}.parameters.{missing[0]}")
        extra = sorted(set(keys) - known)[0]
        raise h.FieldError(f"job {r[0]!r}: app {name} has no parameter {extra!r}", f"{n}.parameters.{extra}")
    return {app_id: int(a[3]) for app_id, a in apps.items() if a[3] is not None}


def _upload_name(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200 or not value.isprintable():
        raise h.FieldError("upload: 1 to 200 printable characters", "upload")
    return value


def stage_jobs(call: h.Call) -> h.Answer:
    """``POST /v1/uploads/jobs``: one part of a bulk creation too large for one request, checked and kept at the site
    (in its DB) until ``POST /v1/uploads/jobs/commit`` creates every part's jobs in one transaction."""
    h._need_write(call)
    body = h._body_obj(call)
    h._narrow(call, body.get("site_id"))  # a relay: the site of the upload (one site's agent: its own)
    upload = _upload_name(body.get("upload"))
    part = h._int(body.get("part"), "part", 0, 99_999)
    offset = h._int(body.get("offset", 0), "offset")
    items = body.get("jobs")
    if not isinstance(items, list):
        raise h.FieldError("jobs: expected a list of jobs", "jobs")
    with paused_gc():
        rows, transfers = _new_job_rows(call, items, offset)
        versions = _check_parameters(call, rows, offset)
        kept = call.backend.stage_jobs(upload, part, rows, transfers, checked_app_versions=versions)
    return 200, {"upload": upload, "part": part, "jobs": len(rows), "kept": kept}


def commit_jobs(call: h.Call) -> h.Answer:
    """``POST /v1/uploads/jobs/commit``: the jobs of every part of an upload, created in one transaction (all or none);
    the answer names them compactly: ids as [first, count] runs, initial states as [state, count] runs."""
    h._need_write(call)
    body = h._body_obj(call)
    h._narrow(call, body.get("site_id"))
    upload = _upload_name(body.get("upload"))
    with paused_gc():
        ids, states, now = call.backend.create_staged_jobs(upload, h._int(body.get("parts"), "parts", 1, 100_000),
                                                           jobs=h._int(body.get("jobs", 0), "jobs"))
    return 201, {"upload": upload, **created_answer(ids, states, now)}


def drop_upload(call: h.Call) -> h.Answer:
    """``DELETE /v1/uploads/jobs?upload=KEY``: forget the parts of a bulk creation that will not be applied."""
    h._need_write(call)
    h._narrow(call, call.q1("site_id"))
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


_DELETABLE = {"job": "jobs", "app": "apps", "batch_job": "batch jobs"}


def delete_many(call: h.Call, table: str) -> h.Answer:
    """``POST /v1/{jobs,apps,batch-jobs}/delete`` ``{"ids": [...]}``: delete these rows in one transaction (a job held by
    a live launcher refuses the whole request; deleting an app deletes its jobs; a queued or running BatchJob is
    cancelled first, then removed)."""
    h._need_write(call)
    if table == "app":
        h._need_site(call, "delete apps")
    ids = _ids(h._body_obj(call).get("ids"))
    if table == "job":
        return 200, {"deleted": call.backend.delete_jobs(ids)}
    return 200, {"deleted": call.backend.delete_rows(table, ids)}


def update_many(call: h.Call, table: str) -> h.Answer:
    """``PATCH /v1/{apps,batch-jobs}`` ``[{"id", field: value...}]``: every row's fields in one transaction (a missing
    row or a refused value refuses the whole request); the rows as they are afterwards."""
    h._need_write(call)
    if table == "app":
        h._need_site(call, "change apps")
    items = h._body_list(call, f"{table.replace('_', ' ')} update")
    updates = []
    for i, item in enumerate(items):
        row_id = h._int(item.get("id"), f"item {i}: id", 1)
        updates.append((row_id, h._stored(table, {k: v for k, v in item.items() if k != "id"})))
    call.backend.update_rows(table, updates)
    columns = COLUMNS[table]
    found = {r[0]: r for r in call.backend.select(table, {"id": [u[0] for u in updates]}, columns=columns)} if updates else {}
    return 200, [row_to_wire(table, dict(zip(columns, found[u[0]]))) for u in updates if u[0] in found]


def _ids(value: Any) -> List[int]:
    if not isinstance(value, list):
        raise h.FieldError("ids: expected a list of ids", "ids")
    return [h._int(v, "ids", 1) for v in value]
