"""What crosses the wire: rows as JSON objects, filters, and the JSON Schemas the OpenAPI document shows.

A row of the site DB (JSON columns as text, times as epoch seconds, blobs as bytes) goes out as a JSON object
whose JSON columns are decoded, whose times are ISO 8601 UTC strings and whose blobs are base64; the client
turns it back into the same row, so the Python API's models work on either side unchanged. Job parameters
are plain JSON; values JSON cannot hold, pickled out of band on the site's home host (``parameters_pickled``),
go only to the site's own principals, as base64, and are never unpickled by the server; a client cannot write
them.

Filters are the Python API's keywords. Each table's filter keywords have a kind (ids, strings, states, tags,
time, int-or-null, bool, int), which says how a query-string value (``?state=RUNNING&state=RUN_DONE``) or a
JSON value (``POST .../query``) becomes the value :mod:`balsam.db.query` expects.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from balsam.exceptions import ValidationError

UTC = _dt.timezone.utc

TIME_COLUMNS = frozenset({"last_update", "created", "creation_date", "last_refresh", "timestamp", "start_time", "end_time",
                          "heartbeat"})
JSON_COLUMNS = frozenset({"tags", "data", "launch_params", "parent_ids", "backfill_windows", "queued_jobs",
                          "optional_batch_job_params", "allowed_projects", "allowed_queues", "transfer_locations", "parameters",
                          "transfers", "optional_params", "filter_tags", "partitions", "status_info", "transfer_info"})
BOOL_COLUMNS = frozenset({"pending_file_cleanup", "var_keyword", "recursive"})
BYTES_COLUMNS = frozenset({"serialized_return_value", "serialized_exception", "parameters_pickled"})

COLUMNS: Dict[str, Tuple[str, ...]] = {
    "site": ("id", "name", "path", "uuid", "creation_date", "last_refresh", "globus_endpoint_id", "backfill_windows",
             "queued_jobs", "optional_batch_job_params", "allowed_projects", "allowed_queues", "transfer_locations", "version"),
    "app": ("id", "site_id", "name", "description", "kind", "serialized_class", "source_code", "parameters", "var_keyword",
            "transfers", "created", "last_update", "version"),
    "job": ("id", "workdir", "app_id", "tags", "parameters", "data", "return_code", "num_nodes", "ranks_per_node",
            "threads_per_rank", "threads_per_core", "gpus_per_rank", "node_packing_count", "launch_params", "wall_time_min",
            "parent_ids", "batch_job_id", "session_id", "state", "last_update", "created", "pending_file_cleanup",
            "serialized_return_value", "serialized_exception", "version", "parameters_pickled"),
    "batch_job": ("id", "scheduler_id", "project", "queue", "num_nodes", "wall_time_min", "job_mode", "optional_params",
                  "filter_tags", "partitions", "state", "status_info", "start_time", "end_time", "created", "last_update",
                  "version"),
    "event": ("id", "job_id", "timestamp", "from_state", "to_state", "data"),
    "session": ("id", "batch_job_id", "heartbeat", "created", "host", "pid", "label"),
    "transfer_item": ("id", "job_id", "direction", "slot", "local_path", "remote_path", "location_alias", "recursive", "state",
                      "task_id", "transfer_info", "last_update"),
}
"""The columns each table shows over the API (the session's pid_start and internal tables stay home)."""

PRIVATE_COLUMNS = {"app": frozenset({"serialized_class", "source_code"}), "job": frozenset({"parameters_pickled"})}
"""Columns sent only to the site's own principals (app code is for launchers and the owner, not browsers)."""


# ------------------------------------------------------------------------------------------ values
def iso(ts: Optional[float]) -> Optional[str]:
    """Epoch seconds as ISO 8601 UTC text (microseconds)."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="microseconds")


def epoch(value: Any, name: str = "time") -> float:
    """ISO 8601 text (naive means UTC) or a number as epoch seconds; ValidationError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            dt = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"{name}: expected an ISO 8601 time or epoch seconds, got {value!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise ValidationError(f"{name}: expected an ISO 8601 time or epoch seconds, got {value!r}")


def row_to_wire(table: str, row: Mapping[str, Any], private: bool = True) -> Dict[str, Any]:
    """One DB row (column -> stored value) as its JSON object. A value that is not what its column holds (a relay's
    mirror keeps whatever a site pushed) is answered as the text it was stored as, or null: one bad row never fails
    a listing."""
    out: Dict[str, Any] = {}
    hidden = () if private else PRIVATE_COLUMNS.get(table, ())
    for col, value in row.items():
        if col in hidden:
            continue
        try:
            if value is None:
                out[col] = None
            elif col in TIME_COLUMNS:
                out[col] = iso(value)
            elif col in JSON_COLUMNS:
                out[col] = json.loads(value) if isinstance(value, str) else value
            elif col in BOOL_COLUMNS:
                out[col] = bool(value)
            elif col in BYTES_COLUMNS and isinstance(value, str):  # a relay's mirror keeps the base64 its site pushed
                out[col] = base64.b64encode(base64.b64decode(value, validate=True)).decode("ascii")
            elif col in BYTES_COLUMNS:
                out[col] = base64.b64encode(bytes(value)).decode("ascii")
            else:
                out[col] = value
        except (ValueError, TypeError, OverflowError):
            out[col] = value if isinstance(value, str) and col not in BYTES_COLUMNS else None
    return out


def wire_to_row(table: str, obj: Mapping[str, Any], columns: Sequence[str]) -> Tuple[Any, ...]:
    """A JSON object from the API back to the DB row tuple of ``columns`` (the client's side)."""
    from balsam.db.codec import dumps

    out: List[Any] = []
    for col in columns:
        value = obj.get(col)
        if value is None:
            out.append(None)
        elif col in TIME_COLUMNS:
            out.append(epoch(value, col))
        elif col in JSON_COLUMNS:
            out.append(dumps(value))
        elif col in BOOL_COLUMNS:
            out.append(1 if value else 0)
        elif col in BYTES_COLUMNS:
            out.append(base64.b64decode(value))
        else:
            out.append(value)
    return tuple(out)


# ------------------------------------------------------------------------------------------ filters
FILTER_KINDS: Dict[str, Dict[str, str]] = {
    "job": {"id": "ids", "parent_id": "ids", "app_id": "ids", "app_name": "strs", "batch_job_id": "ids", "session_id": "int_or_null",
            "last_update_before": "time", "last_update_after": "time", "created_before": "time", "created_after": "time",
            "workdir": "strs", "workdir__contains": "str", "state": "strs", "state__ne": "strs", "tags": "tags",
            "parameters": "tags", "pending_file_cleanup": "bool", "return_code": "int_or_null"},
    "event": {"id": "ids", "job_id": "ids", "batch_job_id": "int", "scheduler_id": "int", "tags": "tags", "data": "tags",
              "timestamp_before": "time", "timestamp_after": "time", "from_state": "strs", "to_state": "strs"},
    "batch_job": {"id": "ids", "state": "strs", "scheduler_id": "ids", "queue": "strs", "project": "strs", "job_mode": "strs",
                  "start_time_before": "time", "start_time_after": "time", "end_time_before": "time", "end_time_after": "time",
                  "filter_tags": "tags"},
    "app": {"id": "ids", "name": "strs", "class_path": "strs"},
    "session": {"id": "ids", "batch_job_id": "ids"},
    "transfer_item": {"id": "ids", "job_id": "ids", "state": "strs", "direction": "strs", "protocol": "strs", "job_state": "strs",
                      "tags": "tags"},
}
"""Filter keyword -> kind, per table (the same keywords as balsam.db.query's TableSpecs)."""


def _add_comparisons(kinds: Dict[str, str]) -> None:
    """The Django ORM's ``X__gt``/``X__gte``/``X__lt``/``X__lte`` of each ``X_after``/``X_before`` (as
    balsam.db.query.with_comparisons adds them to the TableSpecs)."""
    for name in [n for n, kind in kinds.items() if kind == "time"]:
        col, _, side = name.rpartition("_")
        kinds.update({f"{col}__{op}": "time" for op in {"after": ("gt", "gte"), "before": ("lt", "lte")}[side]})


for _kinds in FILTER_KINDS.values():
    _add_comparisons(_kinds)

ORDER_FIELDS: Dict[str, Tuple[str, ...]] = {
    "job": ("id", "last_update", "state", "workdir", "created", "wall_time_min", "num_nodes"),
    "event": ("id", "timestamp"),
    "batch_job": ("id", "start_time", "end_time", "created", "state"),
    "app": ("id", "name", "last_update"),
    "session": ("id", "heartbeat"),
    "transfer_item": ("id", "last_update"),
}


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"{name}: expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: expected an integer, got {value!r}") from None


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValidationError(f"{name}: expected true or false, got {value!r}")


def _flat(values: Sequence[Any]) -> List[Any]:
    out: List[Any] = []
    for v in values:
        if isinstance(v, list):
            out.extend(v)
        elif isinstance(v, str):
            out.extend(p for p in v.split(",") if p != "")
        else:
            out.append(v)
    return out


def decode_filter(table: str, name: str, values: Sequence[Any]) -> Any:
    """One filter keyword's values (query-string texts, or one JSON value in a list) as balsam.db.query wants them."""
    kinds = FILTER_KINDS[table]
    kind = kinds.get(name)
    if kind is None:
        raise ValidationError(f"unknown filter {name!r} (valid: {', '.join(sorted(kinds))})", )
    if kind == "ids":
        return [_int(name, v) for v in _flat(values)]
    if kind == "strs":
        return [str(v) for v in _flat(values)]
    if kind == "tags":
        pairs: Dict[str, Optional[str]] = {}
        for v in values:
            if isinstance(v, dict):
                for k, val in v.items():
                    pairs[str(k)] = None if val is None else str(val)
            elif isinstance(v, list):
                for item in v:
                    k, sep, val = str(item).partition(":")
                    pairs[k] = val if sep else None
            else:
                k, sep, val = str(v).partition(":")
                if not k:
                    raise ValidationError(f"{name}: expected key:value, got {v!r}")
                pairs[k] = val if sep else None
        return pairs
    value = values[-1] if values else None
    if kind == "time":
        return epoch(value, name)
    if kind == "int":
        return _int(name, value)
    if kind == "int_or_null":
        return None if value is None or str(value).lower() in ("null", "none", "") else _int(name, value)
    if kind == "bool":
        return _bool(name, value)
    return str(value)


def decode_filters(table: str, pairs: Sequence[Tuple[str, Any]]) -> Dict[str, Any]:
    """Filters from (keyword, value) pairs; repeated keywords collect (``?state=A&state=B``)."""
    grouped: Dict[str, List[Any]] = {}
    for k, v in pairs:
        grouped.setdefault(k, []).append(v)
    return {k: decode_filter(table, k, vs) for k, vs in grouped.items()}


def encode_filter_value(value: Any) -> Any:
    """A Python API filter value as JSON (the client's side of ``POST .../query``)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, dict):
        return {str(k): None if v is None else str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [encode_filter_value(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):
        return value.value  # an enum (JobState)
    if hasattr(value, "id") and not isinstance(value, (int, str, float)):
        return value.id  # a model object used as an id
    return value


def check_ordering(table: str, ordering: Sequence[str]) -> Tuple[str, ...]:
    """Validated ordering keys (``-field`` descending)."""
    fields = ORDER_FIELDS[table]
    for key in ordering:
        if key.lstrip("-+") not in fields:
            raise ValidationError(f"cannot order by {key.lstrip('-+')!r} (valid: {', '.join(fields)})")
    return tuple(ordering)


# ------------------------------------------------------------------------------------------ JSON Schemas
def _obj(props: Dict[str, Any], required: Sequence[str] = ()) -> Dict[str, Any]:
    schema: Dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


NUM = {"type": "number"}
INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
MAP = {"type": "object"}
LIST = {"type": "array"}


def _nullable(schema: Dict[str, Any]) -> Dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _column_schema(col: str) -> Dict[str, Any]:
    if col in TIME_COLUMNS:
        return _nullable(TIME)
    if col in JSON_COLUMNS:
        return {}
    if col in BOOL_COLUMNS:
        return BOOL
    if col in BYTES_COLUMNS:
        return _nullable({"type": "string", "format": "byte"})
    if col in ("id", "version"):
        return INT
    if col.endswith("_id") or col in ("num_nodes", "wall_time_min", "return_code", "pid", "ranks_per_node", "threads_per_rank",
                                      "threads_per_core", "node_packing_count"):
        return _nullable(INT)
    if col == "gpus_per_rank":
        return NUM
    return _nullable(STR)


def row_schema(table: str) -> Dict[str, Any]:
    """The JSON Schema of one row of ``table`` as the API shows it."""
    return _obj({c: _column_schema(c) for c in COLUMNS[table]}, required=("id",))


ERROR = _obj({"error": _obj({"code": STR, "message": STR, "field": _nullable(STR)}, required=("code", "message"))},
             required=("error",))

PAGE: Dict[str, Any] = {"type": "object", "properties": {"results": LIST, "next_cursor": _nullable(STR), "count": _nullable(INT)},
        "required": ["results", "next_cursor"]}

QUERY_BODY = _obj({"filters": MAP, "ordering": {"type": "array", "items": STR}, "limit": _nullable(INT), "offset": INT,
                   "columns": {"type": "array", "items": STR}, "page": BOOL, "cursor": _nullable(STR)})
"""``page`` (or a ``cursor``): one page and ``next_cursor``, the opaque keyset cursor of the next (null at the end)."""

JOB_CREATE = _obj({
    "workdir": STR, "app_id": INT, "tags": {"type": "object", "additionalProperties": STR}, "parameters": MAP, "data": MAP,
    "num_nodes": INT, "ranks_per_node": INT, "threads_per_rank": INT, "threads_per_core": INT, "gpus_per_rank": NUM,
    "node_packing_count": INT, "launch_params": {"type": "object", "additionalProperties": STR}, "wall_time_min": INT,
    "parent_ids": {"type": "array", "items": INT}, "pending_file_cleanup": BOOL, "transfers": MAP,
}, required=("workdir", "app_id"))

JOB_UPDATE = _obj({"id": INT, "state": STR, "state_data": MAP, "state_timestamp": {}, "parent_ids": {"type": "array", "items": INT},
                   "read": _obj({"version": INT, "state": STR, "fields": MAP}, required=("version", "state"))},
                  required=("id",))
"""``read``: what the save was made on (the job's version and state when read, and each changed field's value then):
a row that moved since is merged with the change when they do not conflict, else 409 (balsam.db.merge)."""

STATE_CHANGE = _obj({"job_id": INT, "state": STR, "timestamp": _nullable(NUM), "data": _nullable(MAP), "fields": _nullable(MAP)},
                    required=("job_id", "state"))
