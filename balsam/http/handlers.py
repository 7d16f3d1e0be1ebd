"""What each /v1 route does, over a :class:`balsam.db.backend.Backend`.

A handler takes a :class:`Call` (the backend, the caller, path parameters, query pairs and the parsed JSON
body) and returns ``(status, payload)``. Handlers are plain synchronous functions: the server runs them on
worker threads (each with its own SQLite connection). Errors are Balsam exceptions; the server turns them into
the documented error shape.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from balsam.db.backend import Backend
from balsam.db.fields import LAUNCHER_FIELDS
from balsam.db.jobs import StateChange
from balsam.db.merge import Read, read_from_wire
from balsam.exceptions import ObjectDoesNotExist, ValidationError
from balsam.http.auth import Principal
from balsam.http.schemas import (
    BYTES_COLUMNS,
    COLUMNS,
    FILTER_KINDS,
    PRIVATE_COLUMNS,
    check_ordering,
    decode_filter,
    decode_filters,
    epoch,
    iso,
    row_to_wire,
)

Answer = Tuple[int, Any]
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_QUERY_LIMIT = 100_000
RESOURCES = {"jobs": "job", "apps": "app", "batch-jobs": "batch_job", "events": "event", "sessions": "session",
             "transfers": "transfer_item"}


@dataclass
class Call:
    """One request, as a handler sees it."""

    backend: Backend
    principal: Principal
    params: Dict[str, str] = field(default_factory=dict)
    query: List[Tuple[str, str]] = field(default_factory=list)
    body: Any = None
    site_root: Optional[Path] = None

    def q1(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The last value of a query parameter."""
        for k, v in reversed(self.query):
            if k == name:
                return v
        return default

    def int_param(self, name: str) -> int:
        try:
            value = int(self.params[name])
        except (KeyError, ValueError):
            raise ObjectDoesNotExist(f"no such {name}: {self.params.get(name)!r}") from None
        if not 0 < value < 2**63:
            raise ObjectDoesNotExist(f"no such {name}: {value}")
        return value

    @property
    def private(self) -> bool:
        """Whether the caller may see app code (the site's own principals)."""
        return self.principal.kind == "site"


class FieldError(ValidationError):
    """A ValidationError about one field of the body (``field``: "3.parameters.x" for item 3 of a bulk body)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


_FIELD_NAMES = ("workdir", "app_id", "tags", "parameters", "data", "num_nodes", "ranks_per_node", "threads_per_rank",
                "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min", "parent_ids",
                "transfers")


def _locate(i: int, error: ValidationError) -> FieldError:
    """The field a job's validation error is about, from its message (the store's messages name the field)."""
    import re

    message = str(error)
    param = re.search(r"parameter '([^']+)'", message)
    if param:
        return FieldError(message, f"{i}.parameters.{param.group(1)}")
    for name in _FIELD_NAMES:
        if re.search(rf"\b{name}\b", message):
            return FieldError(message, f"{i}.{name}")
    if "workdir" in message or message.startswith(("job '", 'job "')):
        return FieldError(message, f"{i}.workdir")
    return FieldError(message, str(i))


def _need_site(call: Call, what: str) -> None:
    if call.principal.kind != "site":
        from balsam.exceptions import ServiceError

        raise ServiceError(f"only the site's owner (the site secret) may {what}")


def _need_write(call: Call) -> None:
    if not call.principal.can_write:
        raise ValidationError("this token is read-only")


def _int(value: Any, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError(f"{name}: expected an integer, got {value!r}", )
    try:
        out = int(value)
    except ValueError:
        raise ValidationError(f"{name}: expected an integer, got {value!r}") from None
    if not lo <= out <= hi:
        raise ValidationError(f"{name}: must be between {lo} and {hi}, got {out}")
    return out


def _b64_bytes(value: Any, name: str) -> bytes:
    """Bytes sent as base64 text; ValidationError naming the field if they are not."""
    if not isinstance(value, str):
        raise ValidationError(f"{name}: expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ValidationError(f"{name}: not base64 text") from None


def _body_list(call: Call, what: str) -> List[Dict[str, Any]]:
    body = call.body
    if not isinstance(body, list) or not all(isinstance(x, dict) for x in body):
        raise ValidationError(f"expected a JSON array of {what} objects")
    return body


def _body_obj(call: Call) -> Dict[str, Any]:
    if not isinstance(call.body, dict):
        raise ValidationError("expected a JSON object")
    return call.body


# ------------------------------------------------------------------------------------------ listing
def _filters_from_query(table: str, call: Call, skip: Sequence[str] = ()) -> Dict[str, Any]:
    reserved = {"ordering", "limit", "cursor", "count", "group_by", "include_source", "offset", "tail_bytes", *skip}
    pairs = [(k, v) for k, v in call.query if k not in reserved and k != "site_id"]
    _narrow(call, [v for k, v in call.query if k == "site_id"] or None)
    return decode_filters(table, pairs)


def _narrow(call: Call, site_id: Any) -> None:
    """A ``site_id`` filter: a backend serving several sites (the relay's) narrows to it; one site ignores it."""
    narrow = getattr(call.backend, "narrow", None)
    if site_id is None or narrow is None:
        return
    values = site_id if isinstance(site_id, list) else [site_id]
    call.backend = narrow([_int(v, "site_id", 1) for v in values])


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


def encode_cursor(terms: Sequence[Tuple[str, bool]], after: Sequence[Any]) -> str:
    """An opaque cursor: the ordering and the order values of the last row given out (keyset paging)."""
    return "k" + _b64(json.dumps({"o": [[c, d] for c, d in terms], "k": list(after)}, separators=(",", ":"), allow_nan=False))


def decode_cursor(cursor: str, terms: Sequence[Tuple[str, bool]]) -> List[Any]:
    """The order values a cursor resumes after, checked against this request's ordering; ValidationError if it is
    not a cursor this server gave out for it (the values are bound as SQL parameters, never spliced in)."""
    bad = ValidationError("cursor: not a cursor this server gave out for this ordering (start again without one)")
    if not cursor.startswith("k") or len(cursor) > 4096:
        raise bad
    try:
        data = json.loads(_unb64(cursor[1:]))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(data, dict) or data.get("o") != [[c, d] for c, d in terms]:
        raise bad
    after = data.get("k")
    if (not isinstance(after, list) or len(after) != len(terms)
            or not all(v is None or (isinstance(v, (int, float, str)) and not isinstance(v, bool)) for v in after)
            or not isinstance(after[-1], int)):
        raise bad
    return after


def _encode_offset(offset: int) -> str:
    return "o" + _b64(str(offset))


def _decode_offset(cursor: str) -> int:
    """A cursor of a backend without keyset paging (an offset)."""
    try:
        if not cursor.startswith("o"):
            raise ValueError
        return _int(_unb64(cursor[1:]), "cursor", 0, 2**62)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("cursor: not a cursor this server gave out") from None


def _rows_page(call: Call, table: str, filters: Dict[str, Any], columns: Sequence[str], ordering: Sequence[str], limit: int,
               cursor: Optional[str], offset: int = 0) -> Tuple[List[Tuple[Any, ...]], Optional[str]]:
    """One page of rows and the cursor of the next (None at the end): keyset where the backend has it."""
    if call.backend.keyset:
        from balsam.db.backend import spec_for
        from balsam.db.query import order_terms

        terms = order_terms(spec_for(table), ordering)
        after = decode_cursor(cursor, terms) if cursor else None
        rows, last = call.backend.page(table, filters, columns=columns, order_by=ordering, limit=limit, after=after,
                                       offset=0 if cursor else offset)
        return rows, (encode_cursor(terms, last) if last is not None else None)
    start = _decode_offset(cursor) if cursor else offset
    rows = call.backend.select(table, filters, columns=columns, order_by=ordering, limit=limit + 1, offset=start)
    return rows[:limit], (_encode_offset(start + limit) if len(rows) > limit else None)


def _page(call: Call, table: str, filters: Dict[str, Any]) -> Answer:
    ordering = check_ordering(table, [o for o in (call.q1("ordering") or "").split(",") if o])
    limit = _int(call.q1("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT)
    columns = COLUMNS[table]
    offset = _int(call.q1("offset") or "0", "offset", 0, 2**62)  # where the first page starts (a cursor goes on from there)
    rows, next_cursor = _rows_page(call, table, filters, columns, ordering, limit, call.q1("cursor"), offset)
    results = [row_to_wire(table, dict(zip(columns, r)), call.private) for r in rows]
    count = call.backend.count(table, filters) if (call.q1("count") or "").lower() in ("1", "true") else None
    return 200, {"results": results, "next_cursor": next_cursor, "count": count}


def list_rows(call: Call, table: str) -> Answer:
    return _page(call, table, _filters_from_query(table, call))


def get_row(call: Call, table: str) -> Answer:
    row_id = call.int_param("id")
    columns = COLUMNS[table]
    rows = call.backend.select(table, {"id": [row_id]}, columns=columns)
    if not rows:
        raise ObjectDoesNotExist(f"no {table.replace('_', ' ')} {row_id}")
    out = row_to_wire(table, dict(zip(columns, rows[0])), call.private)
    if table == "job":
        out["child_ids"] = call.backend.ids("job", {"parent_id": [row_id]})
    return 200, out


def query_rows(call: Call, table: str) -> Answer:
    """``POST /v1/<resource>/query``: the Python API's queries (filters as JSON, any length of id lists)."""
    body = _body_obj(call)
    unknown = set(body) - {"filters", "ordering", "limit", "offset", "columns", "aggregate", "group_by", "page", "cursor", "form"}
    if unknown:
        raise ValidationError(f"unknown query key {sorted(unknown)[0]!r}")
    raw = body.get("filters") or {}
    if not isinstance(raw, dict):
        raise ValidationError("filters: expected an object")
    filters = {k: decode_filter(table, k, [v]) for k, v in raw.items() if k != "site_id"}
    _narrow(call, raw.get("site_id"))
    ordering = body.get("ordering") or []
    if not isinstance(ordering, list) or not all(isinstance(o, str) for o in ordering):
        raise ValidationError("ordering: expected a list of field names")
    order = check_ordering(table, ordering)
    aggregate = body.get("aggregate")
    if aggregate == "count":
        return 200, {"count": call.backend.count(table, filters)}
    if aggregate == "ids":
        return 200, {"ids": call.backend.ids(table, filters)}
    if aggregate == "group":
        column = str(body.get("group_by") or "")
        return 200, {"counts": {str(k): v for k, v in call.backend.count_by(table, filters, column).items()}}
    if aggregate is not None:
        raise ValidationError("aggregate: expected null, 'count', 'ids' or 'group'")
    limit = body.get("limit")
    limit = None if limit is None else _int(limit, "limit", 0, MAX_QUERY_LIMIT)
    offset = _int(body.get("offset") or 0, "offset", 0, 2**62)
    columns = body.get("columns") or list(COLUMNS[table])
    if not isinstance(columns, list) or not set(columns) <= set(COLUMNS[table]) or not columns:
        raise ValidationError(f"columns: expected a list of {table} columns")
    if not call.private:
        columns = [c for c in columns if c not in ("serialized_class", "source_code")]
    form = body.get("form", "objects")
    if form not in ("objects", "rows"):
        raise ValidationError(f"form: 'objects' (each row a JSON object) or 'rows' (arrays of stored values), got {form!r}")
    cursor = body.get("cursor")
    if body.get("page") or cursor:  # a page and the cursor of the next (the client iterates big results this way)
        if cursor is not None and (not isinstance(cursor, str) or offset):
            raise ValidationError("cursor: expected the string a previous page gave (and no offset with it)")
        page_rows, next_cursor = _rows_page(call, table, filters, columns, order, _int(limit or MAX_LIMIT, "limit", 1, MAX_LIMIT),
                                            cursor, offset)
        return 200, {**_results(call, table, columns, page_rows, form), "next_cursor": next_cursor}
    rows = call.backend.select(table, filters, columns=columns, order_by=order, limit=limit, offset=offset)
    return 200, _results(call, table, columns, rows, form)


def _results(call: Call, table: str, columns: Sequence[str], rows: Sequence[Tuple[Any, ...]], form: str) -> Dict[str, Any]:
    """Rows as an answer gives them: ``results``, a JSON object each; or, with ``form`` "rows" and a site's own
    store behind, ``columns`` and ``rows``: each row an array of its values as the store holds them (times in epoch
    seconds, JSON columns as their JSON text, flags as 0 or 1, bytes as base64), which a client reading thousands
    of rows takes as they are instead of converting every value twice. A relay's mirror, which keeps whatever its
    sites pushed, answers objects (each value checked) either way."""
    hidden = () if call.private else PRIVATE_COLUMNS.get(table, ())
    if form != "rows" or call.backend.kind != "local":
        return {"results": [row_to_wire(table, dict(zip(columns, r)), call.private) for r in rows]}
    shown = [i for i, c in enumerate(columns) if c not in hidden]
    binary = [n for n, i in enumerate(shown) if columns[i] in BYTES_COLUMNS]
    out: List[Any] = rows if len(shown) == len(columns) else [[r[i] for i in shown] for r in rows]  # type: ignore[assignment]
    if binary:
        out = [list(r) for r in out]
        for r in out:
            for n in binary:
                if r[n] is not None:
                    r[n] = base64.b64encode(bytes(r[n])).decode("ascii")
    return {"columns": [columns[i] for i in shown], "rows": out}


def count_jobs(call: Call) -> Answer:
    filters = _filters_from_query("job", call)
    group_by = call.q1("group_by")
    if group_by:
        if group_by != "state":
            raise ValidationError("group_by: only 'state' is supported")
        return 200, {"counts": call.backend.count_by("job", filters, "state")}
    return 200, {"count": call.backend.count("job", filters)}


# ------------------------------------------------------------------------------------------ sites and apps
def _site(call: Call) -> Dict[str, Any]:
    columns = COLUMNS["site"]
    out = row_to_wire("site", dict(zip(columns, call.backend.site_row(columns))))
    out["backlog"] = {str(k): v for k, v in call.backend.count_by("job", {}, "state").items()}
    from balsam.site import SiteLayout

    host = ""
    agent: Dict[str, Any] = {"running": True, "last_contact": None}
    if call.site_root is not None:
        layout = SiteLayout(call.site_root)
        host = layout.home_host() or ""
        out["preset"] = layout.preset()
        agent = _agent_health(call.site_root)
    out["hostname"] = host
    out["agent"] = agent
    return out


def _agent_health(site_root: Path) -> Dict[str, Any]:
    """The site agent's health as the dashboard shows it: running, its last report, each service's state."""
    from balsam.site.agent_state import agent_status

    status = agent_status(site_root)
    raw = status.get("services")
    services: Dict[str, Any] = raw if isinstance(raw, dict) else {}
    updated = status.get("updated")
    return {
        "running": bool(status.get("running")),
        "last_contact": iso(float(updated)) if isinstance(updated, (int, float)) else None,
        "services": {str(name): {"alive": bool(s.get("alive")), "errors": int(s.get("errors") or 0), "last_error": s.get("last_error")}
                     for name, s in services.items() if isinstance(s, dict)},
    }


def list_sites(call: Call) -> Answer:
    site = _site(call)
    return 200, {"results": [site], "next_cursor": None, "count": 1}


def get_site(call: Call) -> Answer:
    site_id = call.int_param("id")
    site = _site(call)
    if site["id"] != site_id:
        raise ObjectDoesNotExist(f"no site {site_id} here")
    return 200, site


def update_site(call: Call) -> Answer:
    _need_site(call, "change the site's settings")
    site_id = call.int_param("id")
    body = _body_obj(call)
    if int(call.backend.site_row(("id",))[0]) != site_id:
        raise ObjectDoesNotExist(f"no site {site_id} here")
    call.backend.update_rows("site", [(site_id, _stored("site", body))])
    return get_site(call)


def list_apps(call: Call) -> Answer:
    include = (call.q1("include_source") or "").lower() in ("1", "true")
    if include:
        _need_site(call, "read app code")
    return _page(call, "app", _filters_from_query("app", call))


def app_code(call: Call) -> Answer:
    """``POST /v1/apps/code``: stored code of apps by id, for launchers."""
    _need_site(call, "read app code")
    ids = _body_obj(call).get("ids")
    if not isinstance(ids, list):
        raise ValidationError("ids: expected a list of app ids")
    return 200, {"apps": call.backend.app_code([_int(i, "ids") for i in ids])}


def sync_app(call: Call) -> Answer:
    _need_site(call, "sync app code")
    body = _body_obj(call)
    for key in ("name", "kind", "serialized_class", "source_code"):
        if not isinstance(body.get(key), str) or not body.get(key):
            raise ValidationError(f"{key}: a non-empty string is required", )
    fields = {k: body.get(k) for k in ("name", "description", "kind", "serialized_class", "source_code", "var_keyword")}
    from balsam.db.codec import dumps

    fields["parameters"] = dumps(body.get("parameters") or {})
    fields["transfers"] = dumps(body.get("transfers") or {})
    rename = body.get("rename_from")
    app_id = call.backend.sync_app(fields, rename_from=str(rename) if rename else None)
    call.params["id"] = str(app_id)
    status, out = get_row(call, "app")
    return 201, out


def update_row(call: Call, table: str) -> Answer:
    _need_write(call)
    if table == "app":
        _need_site(call, "change apps")
    row_id = call.int_param("id")
    call.backend.update_rows(table, [(row_id, _stored(table, _body_obj(call)))])
    return get_row(call, table)


def delete_row(call: Call, table: str) -> Answer:
    _need_write(call)
    row_id = call.int_param("id")
    if call.backend.delete_rows(table, [row_id]) == 0:
        raise ObjectDoesNotExist(f"no {table.replace('_', ' ')} {row_id}")
    return 200, {"deleted": 1}


def _stored(table: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    """Wire field values in the store's form (JSON columns as text, times as epoch seconds)."""
    from balsam.db.codec import dumps
    from balsam.http.schemas import JSON_COLUMNS, TIME_COLUMNS

    out: Dict[str, Any] = {}
    for k, v in fields.items():
        if k in ("id", "version"):
            continue
        if k in JSON_COLUMNS and v is not None:
            out[k] = dumps(v)
        elif k in TIME_COLUMNS and v is not None:
            out[k] = epoch(v, k)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------ jobs
_JOB_WRITABLE = frozenset({"workdir", "tags", "parameters", "data", "return_code", "num_nodes", "ranks_per_node", "threads_per_rank",
                           "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min",
                           "batch_job_id", "pending_file_cleanup", "serialized_return_value", "serialized_exception"})


def _job_fields(item: Dict[str, Any], where: str) -> Tuple[Dict[str, Any], Optional[StateChange], Optional[List[int]]]:
    """(stored fields, state change, parents to add) of one job update object."""

    fields: Dict[str, Any] = {}
    change = None
    parents = None
    for k, v in item.items():
        if k in ("id", "site_id", "state_data", "state_timestamp", "session_id", "read"):
            continue
        if k == "state":
            ts = item.get("state_timestamp")
            data = item.get("state_data")
            if data is not None and not isinstance(data, dict):
                raise ValidationError(f"{where}: state_data must be an object")
            sid = item.get("session_id")
            change = StateChange(0, str(v), None if ts is None else epoch(ts, "state_timestamp"), data,
                                 session_id=None if sid is None else _int(sid, "session_id"))
        elif k == "parent_ids":
            if not isinstance(v, list):
                raise ValidationError(f"{where}: parent_ids must be a list")
            parents = [_int(p, "parent_ids") for p in v]
        elif k not in _JOB_WRITABLE:
            raise ValidationError(f"{where}: job field {k!r} cannot be updated")
        elif k in ("tags", "data", "launch_params", "parameters"):
            if not isinstance(v, dict):
                raise ValidationError(f"{where}: {k} must be an object")
            fields[k] = v  # the store's field writer checks and encodes (parameters stay plain JSON)
        elif k in ("serialized_return_value", "serialized_exception"):
            fields[k] = None if v is None else _b64_bytes(v, f"{where}: {k}")
        else:
            fields[k] = v
    return fields, change, parents


def update_jobs(call: Call) -> Answer:
    """``PATCH /v1/jobs``: bulk update by id (fields, added parents, state changes through the state machine)."""
    _need_write(call)
    items = _body_list(call, "job update")
    updates, changes, parents, reads = [], [], [], []
    ids = []
    for i, item in enumerate(items):
        job_id = _int(item.get("id"), f"item {i}: id", 1)
        ids.append(job_id)
        fields, change, new_parents = _job_fields(item, f"job {job_id}")
        if fields:
            updates.append((job_id, fields))
        if change is not None:
            changes.append(change._replace(job_id=job_id))
        if new_parents is not None:
            parents.append((job_id, new_parents))
        if item.get("read") is not None:
            reads.append(read_from_wire(job_id, item["read"]))  # what the save was made on (balsam.db.merge)
    _apply_job_updates(call, ids, updates, parents, changes, reads)
    columns = COLUMNS["job"]
    found = {r[0]: r for r in call.backend.select("job", {"id": ids}, columns=columns)} if ids else {}
    return 200, [row_to_wire("job", dict(zip(columns, found[i]))) for i in ids if i in found]


def _apply_job_updates(call: Call, ids: List[int], updates: List[Tuple[int, Dict[str, Any]]], parents: List[Tuple[int, List[int]]],
                       changes: List[StateChange], reads: Sequence[Read] = ()) -> None:
    import json

    if parents:
        current = {r[0]: json.loads(r[1]) for r in call.backend.select("job", {"id": [p[0] for p in parents]}, columns=("id", "parent_ids"))}
        added = []
        for job_id, new in parents:
            old = current.get(job_id)
            if old is None:
                raise ObjectDoesNotExist(f"no job {job_id}")
            if not set(old) <= set(new):
                raise ValidationError(f"job {job_id}: parents can be added but not removed")
            extra = [p for p in new if p not in old]
            if extra:
                added.append((job_id, extra))
        parents = added
    if updates:
        existing = set(call.backend.ids("job", {"id": [u[0] for u in updates]}))
        missing = [u[0] for u in updates if u[0] not in existing]
        if missing:
            raise ObjectDoesNotExist(f"no job {missing[0]}")
    call.backend.update_jobs(updates, parents, changes, reads)


def update_job(call: Call) -> Answer:
    job_id = call.int_param("id")
    call.body = [dict(_body_obj(call), id=job_id)]
    status, jobs = update_jobs(call)
    if not jobs:
        raise ObjectDoesNotExist(f"no job {job_id}")
    return 200, jobs[0]


def query_update_jobs(call: Call) -> Answer:
    """``PUT /v1/jobs?<filters>``: the same fields (or state) for every matching job."""
    _need_write(call)
    body = _body_obj(call)
    filters = _filters_from_query("job", call)
    raw = body.pop("filters", None)
    if raw is not None:
        if not isinstance(raw, dict):
            raise ValidationError("filters: expected an object")
        filters.update({k: decode_filter("job", k, [v]) for k, v in raw.items() if k != "site_id"})
    fields, change, parents = _job_fields(body, "query update")
    if parents is not None:
        raise ValidationError("parent_ids cannot be set by a query update")
    ids = call.backend.ids("job", filters)
    if ids:
        call.backend.update_jobs([(i, dict(fields)) for i in ids] if fields else [],
                                 (), [change._replace(job_id=i) for i in ids] if change is not None else [])
    return 200, {"updated": len(ids)}


def delete_jobs(call: Call) -> Answer:
    _need_write(call)
    filters = _filters_from_query("job", call)
    if not filters:
        raise ValidationError("DELETE /v1/jobs needs at least one filter (to delete every job, say ?state__ne=)")
    return 200, {"deleted": call.backend.delete_jobs(call.backend.ids("job", filters))}


def delete_job(call: Call) -> Answer:
    _need_write(call)
    job_id = call.int_param("id")
    if call.backend.delete_jobs([job_id]) == 0:
        raise ObjectDoesNotExist(f"no job {job_id}")
    return 200, {"deleted": 1}


def job_output(call: Call) -> Answer:
    job_id = call.int_param("id")
    rows = call.backend.select("job", {"id": [job_id]}, columns=("workdir",))
    if not rows:
        raise ObjectDoesNotExist(f"no job {job_id}")
    tail = _int(call.q1("tail_bytes", "65536"), "tail_bytes", 0, 16 * 1024 * 1024)
    if call.site_root is None:
        return 200, {"text": "", "truncated": False}
    data_dir = (call.site_root / "data").resolve()
    path = (data_dir / str(rows[0][0]) / "job.out").resolve()
    if data_dir not in path.parents:
        raise ObjectDoesNotExist(f"job {job_id}: no output")
    try:  # not through a link made since the check, nor a second name of a file elsewhere (the site's secret)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return 200, {"text": "", "truncated": False}
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise ObjectDoesNotExist(f"job {job_id}: no output (job.out is not a file of its own)")
        size = st.st_size
        f.seek(max(0, size - tail))
        data = f.read(tail)
    return 200, {"text": data.decode("utf-8", errors="replace"), "truncated": size > tail}


def why(call: Call) -> Answer:
    """``GET /v1/jobs/{id}/why``: why the job is in its state and what would move it on (the agent's diagnosis)."""
    job_id = call.int_param("id")
    if not call.backend.select("job", {"id": [job_id]}, columns=("id",)):
        raise ObjectDoesNotExist(f"no job {job_id}")
    if call.site_root is None:  # no site here: a relay explains from its mirrors what it can
        explain: Any = getattr(call.backend, "why", None)
        return 200, {"reasons": [str(r) for r in explain(job_id)] if callable(explain) else []}
    store = getattr(call.backend, "store", None)
    if store is None:
        return 200, {"reasons": []}
    from balsam.site.diagnosis import explain

    return 200, {"reasons": explain(store, call.site_root, job_id)}


def last_message(call: Call) -> Answer:
    job_id = call.int_param("id")
    return 200, {"message": call.backend.last_event_message(job_id)}


# ------------------------------------------------------------------------------------------ batch jobs, transfers
def create_batch_job(call: Call) -> Answer:
    _need_write(call)
    body = dict(_body_obj(call))
    _narrow(call, body.pop("site_id", None))
    new_id = call.backend.create_batch_job(body)
    call.params["id"] = str(new_id)
    return 201, get_row(call, "batch_job")[1]


def preview_batch_job(call: Call) -> Answer:
    """``POST /v1/batch-jobs/preview``: the batch script and scheduler command line the agent would submit a new
    BatchJob with, and the id it would get (``balsam queue submit --dry-run`` from another host). Nothing is written
    or submitted; the fields are checked against the site's queues and projects as its creation would be."""
    body = dict(_body_obj(call))
    _narrow(call, body.pop("site_id", None))
    store = getattr(call.backend, "store", None)
    if store is None or call.site_root is None:
        raise ValidationError("a new BatchJob's batch script is rendered by its site's agent: ask the site's own API")
    from balsam.site.submission import preview_new_batch_job

    bj_id, text, path, argv = preview_new_batch_job(store, call.site_root, body)
    return 200, {"batch_job_id": bj_id, "script": text, "script_path": str(path), "command": list(argv)}


def update_transfers(call: Call) -> Answer:
    _need_write(call)
    items = _body_list(call, "transfer item update")
    updates = []
    for i, item in enumerate(items):
        item_id = _int(item.get("id"), f"item {i}: id", 1)
        fields = {k: v for k, v in item.items() if k != "id"}
        updates.append((item_id, fields))
    call.backend.update_rows("transfer_item", updates)
    ids = [u[0] for u in updates]
    columns = COLUMNS["transfer_item"]
    return 200, [row_to_wire("transfer_item", dict(zip(columns, r))) for r in call.backend.select("transfer_item", {"id": ids}, columns=columns)]


# ------------------------------------------------------------------------------------------ sessions
_LEASE = "hold a launcher's lease (a launcher runs with the site secret)"
"""Leases, acquires and status batches are the site owner's alone: a launcher under a lease writes run() results,
which the Python API unpickles (DESIGN.md section 7), so a dashboard or relay token must not hold one."""


def create_session(call: Call) -> Answer:
    _need_site(call, _LEASE)
    _need_write(call)
    body = _body_obj(call)
    bj = body.get("batch_job_id")
    sid = call.backend.create_session(host=str(body.get("host") or "")[:255], pid=_int(body.get("pid") or 0, "pid"),
                                      batch_job_id=None if bj is None else _int(bj, "batch_job_id"),
                                      label=str(body.get("label") or "remote launcher")[:255])
    return 201, {"id": sid, "session_id": sid}


def tick_session(call: Call) -> Answer:
    _need_site(call, _LEASE)
    call.backend.tick(call.int_param("id"))
    return 200, {"id": call.int_param("id")}


def acquire_once(call: Call) -> Tuple[int, Dict[str, Any], float]:
    """The acquire request's arguments: (session id, constraints with max_num_jobs, wait_s)."""
    _need_site(call, _LEASE)
    body = _body_obj(call)
    constraints = dict(body.get("constraints") or {})
    if not isinstance(constraints, dict):
        raise ValidationError("constraints: expected an object")
    constraints["max_num_jobs"] = _int(body.get("max_num_jobs", 1), "max_num_jobs", 0, 100_000)
    try:
        wait_s = float(body.get("wait_s") or 0.0)
    except (TypeError, ValueError):
        raise ValidationError("wait_s: expected a number") from None
    return call.int_param("id"), constraints, max(0.0, min(wait_s, 5.0))


def release_session(call: Call) -> Answer:
    _need_site(call, _LEASE)
    return 200, {"timed_out": call.backend.release(call.int_param("id"))}


def status_batch(call: Call) -> Answer:
    """``POST /v1/status-batches``: a launcher's state changes, applied leniently under its lease."""
    session_id, changes = parse_status_batch(call)
    return status_answer(call.backend.apply_changes(changes, session_id=session_id))


def status_answer(rejected: Sequence[Tuple[int, str]]) -> Answer:
    """The answer of a status batch: the refused changes, by index."""
    return 200, {"rejected": [[i, why] for i, why in rejected]}


_MAX_ID = 2**63 - 1
_change = functools.partial(tuple.__new__, StateChange)
"""A StateChange of six values (without the keyword handling of its constructor: a launcher sends thousands)."""


def parse_status_batch(call: Call) -> Tuple[Optional[int], List[StateChange]]:
    """A status batch's lease and checked changes (ValidationError naming the first bad one)."""
    _need_site(call, _LEASE)
    body = _body_obj(call)
    sid = body.get("session_id")
    session_id = None if sid is None else _int(sid, "session_id", 1)
    raw = body.get("changes")
    if not isinstance(raw, list):
        raise ValidationError("changes: expected a list")
    changes = []
    for i, c in enumerate(raw):
        if type(c) is dict:  # a launcher's plain change (ids, an epoch time, data, at most a return code) as it is
            job_id, csid, ts, data, fields = c.get("job_id"), c.get("session_id"), c.get("timestamp"), c.get("data"), c.get("fields")
            if (type(job_id) is int and 0 < job_id <= _MAX_ID and (csid is None or (type(csid) is int and 0 <= csid <= _MAX_ID))
                    and (ts is None or type(ts) is float) and (data is None or type(data) is dict)
                    and (not fields or (type(fields) is dict and len(fields) == 1 and "return_code" in fields))):
                state = c.get("state")
                changes.append(_change((job_id, state if type(state) is str else str(state), ts, data, fields or None, csid)))
                continue
        if not isinstance(c, dict):
            raise ValidationError(f"changes[{i}]: expected an object")
        fields = c.get("fields") or None
        if fields is not None:
            if not isinstance(fields, dict):
                raise ValidationError(f"changes[{i}].fields: expected an object")
            extra = set(fields) - LAUNCHER_FIELDS
            if extra:
                raise ValidationError(f"changes[{i}]: a launcher may not write {sorted(extra)[0]!r}")
            fields = {k: (_b64_bytes(v, f"changes[{i}].fields.{k}") if k != "return_code" and v is not None else v)
                      for k, v in fields.items()}
        data = c.get("data")
        if data is not None and not isinstance(data, dict):
            raise ValidationError(f"changes[{i}].data: expected an object")
        ts = c.get("timestamp")
        changes.append(StateChange(_int(c.get("job_id"), f"changes[{i}].job_id", 1), str(c.get("state")),
                                   None if ts is None else epoch(ts, "timestamp"), data, fields,
                                   None if c.get("session_id") is None else _int(c.get("session_id"), "session_id")))
    return session_id, changes


def whoami(call: Call) -> Answer:
    site_id = int(call.backend.site_row(("id",))[0])
    return 200, {"user": call.principal.name, "sites": [site_id], "kind": call.principal.kind}


__all__ = ["Call", "FILTER_KINDS", "RESOURCES"]
