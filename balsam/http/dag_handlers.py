"""The /v1 routes of DAG templates and their instances (over :class:`balsam.db.backend.Backend`'s dag_* operations)."""

from __future__ import annotations

from typing import Any, Dict, List

from balsam.db.backend import Backend
from balsam.exceptions import ValidationError
from balsam.http.handlers import Answer, Call, _body_obj, _int, _need_write

MAX_RECORDS = 100_000


def _states(call: Call) -> List[str]:
    return [v for k, v in call.query if k == "state"]


def _scoped(call: Call, site_id: Any) -> Backend:
    """The backend narrowed to ``site_id`` where a server holds many sites (the relay); a site's own server is
    one site already."""
    narrow = getattr(call.backend, "narrow", None)
    if site_id is None or narrow is None:
        return call.backend
    return narrow([_int(site_id, "site_id", 1)])  # type: ignore[no-any-return]


def list_dags(call: Call) -> Answer:
    return 200, {"results": _scoped(call, call.q1("site_id")).dag_list()}


def save_dag(call: Call) -> Answer:
    _need_write(call)
    body = _body_obj(call)
    name, description, spec = body.get("name"), body.get("description") or "", body.get("spec")
    if not isinstance(name, str) or not isinstance(description, str) or not isinstance(spec, dict):
        raise ValidationError("a DAG needs name (text), spec (an object with nodes) and optionally description (text)")
    return 200, _scoped(call, body.get("site_id")).dag_save(name, description, spec)


def delete_dag(call: Call) -> Answer:
    _need_write(call)
    name = call.q1("name")
    if not name:
        raise ValidationError("name: the DAG to delete is required")
    return 200, {"deleted": _scoped(call, call.q1("site_id")).dag_delete(name)}


def instantiate(call: Call) -> Answer:
    _need_write(call)
    body = _body_obj(call)
    name, records = body.get("name"), body.get("records")
    if not isinstance(name, str) or not isinstance(records, list):
        raise ValidationError("instantiate needs name (text) and records (a list of placeholder objects)")
    if len(records) > MAX_RECORDS:
        raise ValidationError(f"at most {MAX_RECORDS} instances per request")
    return 201, {"instances": _scoped(call, body.get("site_id")).dag_instantiate(name, records)}


def list_instances(call: Call) -> Answer:
    dag_id = _int(call.q1("dag_id"), "dag_id", 1)
    ids = [_int(v, "id", 1) for k, v in call.query if k == "id"] or None
    limit = call.q1("limit")
    offset = _int(call.q1("offset") or 0, "offset", 0)
    rows = call.backend.dag_instances(dag_id, ids=ids, state=_states(call) or None,
                                      limit=None if limit is None else _int(limit, "limit", 0, 100_000), offset=offset)
    return 200, {"results": rows}


def instance_counts(call: Call) -> Answer:
    body = _body_obj(call)
    ids = body.get("ids")
    if not isinstance(ids, list) or len(ids) > MAX_RECORDS:
        raise ValidationError(f"ids: a list of at most {MAX_RECORDS} instance ids is required")
    counts: Dict[int, Dict[str, int]] = call.backend.dag_counts([_int(i, "ids", 1) for i in ids])
    return 200, {"counts": {str(k): v for k, v in counts.items()}}


def retry_instance(call: Call) -> Answer:
    _need_write(call)
    return 200, {"reset": call.backend.dag_retry(call.int_param("id"))}
