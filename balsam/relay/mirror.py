"""The relay's mirror of the sites' rows: applying a site's push, and Balsam's filter keywords as SQL.

A push item is ``{"entity": "job" | "event" | "batch_job" | "app" | "transfer_item", "op": "upsert" | "delete",
"id": int, "row": {column: stored value}}`` with rows in the site store's representation (JSON columns as text,
times as epoch seconds). A site may only write rows whose ids carry its own site id (the high bits), so one
site's token can never overwrite another site's rows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from balsam.db.ids import site_of
from balsam.exceptions import ValidationError
from balsam.relay import schema as t

ENTITIES = tuple(t.MIRRORS)
MAX_ITEMS = 50_000
SECRET_APP_COLUMNS = frozenset({"serialized_class", "source_code"})
"""App columns that never reach the relay (code stays at its site)."""


def _float(v: Any, default: float = 0.0) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _opt_int(v: Any) -> Optional[int]:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _typed(entity: str, row_id: int, site_id: int, row: Dict[str, Any]) -> Dict[str, Any]:
    """The mirror row's own columns from a pushed row (the rest stays in ``row``)."""
    text = json.dumps(row, separators=(",", ":"))
    if entity == "job":
        return {"id": row_id, "site_id": site_id, "app_id": int(row.get("app_id") or 0), "workdir": str(row.get("workdir") or ""),
                "state": str(row.get("state") or ""), "batch_job_id": _opt_int(row.get("batch_job_id")),
                "return_code": _opt_int(row.get("return_code")), "created": _float(row.get("created")),
                "last_update": _float(row.get("last_update")), "version": int(row.get("version") or 1), "row": text}
    if entity == "event":
        data = row.get("data")
        return {"id": row_id, "site_id": site_id, "job_id": int(row.get("job_id") or 0), "timestamp": _float(row.get("timestamp")),
                "from_state": str(row.get("from_state") or ""), "to_state": str(row.get("to_state") or ""),
                "data": data if isinstance(data, str) or data is None else json.dumps(data)}
    if entity == "batch_job":
        return {"id": row_id, "site_id": site_id, "state": str(row.get("state") or ""), "queue": str(row.get("queue") or ""),
                "project": str(row.get("project") or ""), "scheduler_id": _opt_int(row.get("scheduler_id")),
                "start_time": row.get("start_time") if isinstance(row.get("start_time"), (int, float)) else None,
                "end_time": row.get("end_time") if isinstance(row.get("end_time"), (int, float)) else None,
                "created": _float(row.get("created")), "version": int(row.get("version") or 1), "row": text}
    if entity == "app":
        clean = {k: v for k, v in row.items() if k not in SECRET_APP_COLUMNS}
        return {"id": row_id, "site_id": site_id, "name": str(row.get("name") or ""), "version": int(row.get("version") or 1),
                "row": json.dumps(clean, separators=(",", ":"))}
    return {"id": row_id, "site_id": site_id, "job_id": int(row.get("job_id") or 0), "state": str(row.get("state") or ""),
            "direction": str(row.get("direction") or ""), "row": text}


def upsert_sql(c: Connection, table: sa.Table, columns: Sequence[str]) -> str:
    """``INSERT ... ON CONFLICT (id) DO UPDATE`` of ``columns`` in the driver's own parameter style (SQLite and
    PostgreSQL share the syntax): executemany of plain tuples, without per-row SQLAlchemy parameter processing."""
    mark = "?" if c.dialect.name == "sqlite" else "%s"
    cols = ", ".join(f'"{k}"' for k in columns)
    sets = ", ".join(f'"{k}" = excluded."{k}"' for k in columns if k != "id")
    return f'INSERT INTO "{table.name}" ({cols}) VALUES ({", ".join([mark] * len(columns))}) ON CONFLICT ("id") DO UPDATE SET {sets}'


def _upsert(c: Connection, table: sa.Table, rows: List[Dict[str, Any]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    c.exec_driver_sql(upsert_sql(c, table, columns), [tuple(r[k] for k in columns) for r in rows])


@lru_cache(maxsize=4096)
def _parse(text: str) -> Any:
    """JSON text of tags or parents (the same few texts recur across a push: parsed once)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def apply_items(c: Connection, site_id: int, items: Sequence[Dict[str, Any]]) -> int:
    """Apply one push's items inside the caller's transaction; returns how many were applied."""
    if not isinstance(items, (list, tuple)) or len(items) > MAX_ITEMS:
        raise ValidationError(f"a push carries a list of at most {MAX_ITEMS} items")
    upserts: Dict[str, List[Dict[str, Any]]] = {e: [] for e in ENTITIES}
    deletes: Dict[str, List[int]] = {e: [] for e in ENTITIES}
    tags: List[Dict[str, Any]] = []
    parents: List[Dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"push item {i} is not an object")
        entity, op, row_id = item.get("entity"), item.get("op"), item.get("id")
        if entity not in t.MIRRORS:
            raise ValidationError(f"push item {i}: unknown entity {entity!r}")
        if not isinstance(row_id, int) or isinstance(row_id, bool) or row_id <= 0 or row_id >= 2**63:
            raise ValidationError(f"push item {i}: bad id {row_id!r}")
        if site_of(row_id) != site_id:
            raise ValidationError(f"push item {i}: {entity} {row_id} is not a row of site {site_id}")
        if op == "delete":
            deletes[entity].append(row_id)
            continue
        row = item.get("row")
        if op != "upsert" or not isinstance(row, dict):
            raise ValidationError(f"push item {i}: op must be upsert (with a row) or delete")
        upserts[entity].append(_typed(entity, row_id, site_id, row))
        if entity == "job":
            raw_tags = row.get("tags") or "{}"
            parsed = _parse(raw_tags) if isinstance(raw_tags, str) else raw_tags
            if isinstance(parsed, dict):
                tags.extend({"key": str(k)[:255], "value": str(v)[:255], "job_id": row_id} for k, v in parsed.items())
            raw_parents = row.get("parent_ids") or "[]"
            plist = _parse(raw_parents) if isinstance(raw_parents, str) else raw_parents
            if isinstance(plist, list):
                parents.extend({"parent_id": int(p), "child_id": row_id} for p in plist if isinstance(p, int))
    n = 0
    for entity, table in t.MIRRORS.items():
        ids = deletes[entity]
        if ids:
            c.execute(table.delete().where(table.c.id.in_(ids)))
            if entity == "job":
                c.execute(t.job_tag.delete().where(t.job_tag.c.job_id.in_(ids)))
                c.execute(t.job_parent.delete().where(t.job_parent.c.child_id.in_(ids)))
            n += len(ids)
        rows = upserts[entity]
        if rows:
            # A row pushed twice in one batch: the last one wins.
            latest = list({r["id"]: r for r in rows}.values())
            _upsert(c, table, latest)
            n += len(rows)
    job_ids = [r["id"] for r in upserts["job"]]
    for start in range(0, len(job_ids), 10_000):
        chunk = job_ids[start:start + 10_000]
        c.execute(t.job_tag.delete().where(t.job_tag.c.job_id.in_(chunk)))
    if tags:
        mark = "?" if c.dialect.name == "sqlite" else "%s"
        c.exec_driver_sql(f'INSERT INTO "{t.job_tag.name}" ("key", "value", "job_id") VALUES ({mark}, {mark}, {mark})',
                          list({(d["key"], d["value"], d["job_id"]) for d in tags}))
    if parents:
        c.execute(t.job_parent.delete().where(t.job_parent.c.child_id.in_(sorted({p["child_id"] for p in parents}))))
        c.execute(t.job_parent.insert(), list({(p["parent_id"], p["child_id"]): p for p in parents}.values()))
    return n


# --------------------------------------------------------------------------------------------- queries
Clause = Any
FilterFn = Callable[[sa.Table, Any], Clause]


def _list(v: Any) -> List[Any]:
    return list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]


def _ints(name: str, v: Any) -> List[int]:
    try:
        return [int(getattr(x, "id", x)) for x in _list(v)]
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be ids, got {v!r}") from None


def _states(v: Any) -> List[str]:
    return [str(getattr(x, "value", x)).upper() for x in _list(v)]


def _ts(v: Any) -> float:
    from balsam.db.query import to_timestamp

    return float(to_timestamp(v))


def _tag_clause(table: sa.Table, v: Any, id_col: str = "id") -> Clause:
    from balsam.db.query import tag_pairs

    clauses = []
    for key, value in tag_pairs(v):
        sub = sa.select(t.job_tag.c.job_id).where(t.job_tag.c.key == key)
        if value is not None:
            sub = sub.where(t.job_tag.c.value == value)
        clauses.append(table.c[id_col].in_(sub))
    return sa.and_(*clauses) if clauses else sa.true()


JOB_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "app_id": lambda tb, v: tb.c.app_id.in_(_ints("app_id", v)),
    "app_name": lambda tb, v: tb.c.app_id.in_(sa.select(t.app.c.id).where(t.app.c.name.in_([str(x) for x in _list(v)]))),
    "batch_job_id": lambda tb, v: tb.c.batch_job_id.in_(_ints("batch_job_id", v)),
    "parent_id": lambda tb, v: tb.c.id.in_(sa.select(t.job_parent.c.child_id).where(t.job_parent.c.parent_id.in_(_ints("parent_id", v)))),
    "state": lambda tb, v: tb.c.state.in_(_states(v)),
    "state__ne": lambda tb, v: tb.c.state.notin_(_states(v)),
    "workdir": lambda tb, v: tb.c.workdir.in_([str(x) for x in _list(v)]),
    "workdir__contains": lambda tb, v: tb.c.workdir.contains(str(v), autoescape=True),
    "tags": _tag_clause,
    "return_code": lambda tb, v: tb.c.return_code == int(v),
    "last_update_before": lambda tb, v: tb.c.last_update < _ts(v),
    "last_update_after": lambda tb, v: tb.c.last_update > _ts(v),
    "created_before": lambda tb, v: tb.c.created < _ts(v),
    "created_after": lambda tb, v: tb.c.created > _ts(v),
}
EVENT_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "job_id": lambda tb, v: tb.c.job_id.in_(_ints("job_id", v)),
    "batch_job_id": lambda tb, v: tb.c.job_id.in_(sa.select(t.job.c.id).where(t.job.c.batch_job_id.in_(_ints("batch_job_id", v)))),
    "tags": lambda tb, v: _tag_clause(tb, v, "job_id"),
    "from_state": lambda tb, v: tb.c.from_state.in_(_states(v)),
    "to_state": lambda tb, v: tb.c.to_state.in_(_states(v)),
    "timestamp_before": lambda tb, v: tb.c.timestamp < _ts(v),
    "timestamp_after": lambda tb, v: tb.c.timestamp > _ts(v),
}
BATCH_JOB_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "state": lambda tb, v: tb.c.state.in_([str(getattr(x, "value", x)) for x in _list(v)]),
    "queue": lambda tb, v: tb.c.queue.in_([str(x) for x in _list(v)]),
    "project": lambda tb, v: tb.c.project.in_([str(x) for x in _list(v)]),
    "scheduler_id": lambda tb, v: tb.c.scheduler_id.in_(_ints("scheduler_id", v)),
    "start_time_before": lambda tb, v: tb.c.start_time < _ts(v),
    "start_time_after": lambda tb, v: tb.c.start_time > _ts(v),
    "end_time_before": lambda tb, v: tb.c.end_time < _ts(v),
    "end_time_after": lambda tb, v: tb.c.end_time > _ts(v),
}
APP_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "name": lambda tb, v: tb.c.name.in_([str(x) for x in _list(v)]),
}
TRANSFER_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "job_id": lambda tb, v: tb.c.job_id.in_(_ints("job_id", v)),
    "state": lambda tb, v: tb.c.state.in_([str(x) for x in _list(v)]),
    "direction": lambda tb, v: tb.c.direction.in_([str(x) for x in _list(v)]),
    "tags": lambda tb, v: _tag_clause(tb, v, "job_id"),
}
FILTERS = {"job": JOB_FILTERS, "event": EVENT_FILTERS, "batch_job": BATCH_JOB_FILTERS, "app": APP_FILTERS,
           "transfer_item": TRANSFER_FILTERS}
DEFAULT_ORDER = {"event": ("-timestamp",)}


def where(table_name: str, site_ids: Sequence[int], filters: Dict[str, Any]) -> Tuple[sa.Table, Clause]:
    """The mirror table and the WHERE clause for Balsam filter keywords, restricted to ``site_ids``."""
    table = t.MIRRORS.get(table_name)
    if table is None:
        raise ValidationError(f"the relay has no {table_name} rows")
    known = FILTERS[table_name]
    clauses = [table.c.site_id.in_([int(s) for s in site_ids])]
    for key, value in filters.items():
        fn = known.get(key)
        if fn is None:
            raise ValidationError(f"unknown {table_name} filter {key!r} (known: {', '.join(sorted(known))})")
        clauses.append(fn(table, value))
    return table, sa.and_(*clauses)


def order_clauses(table: sa.Table, table_name: str, order_by: Sequence[str]) -> List[Any]:
    out = []
    for field in order_by or DEFAULT_ORDER.get(table_name, ("id",)):
        desc = field.startswith("-")
        name = field.lstrip("-")
        if name not in table.c:
            raise ValidationError(f"cannot order {table_name} by {name!r}")
        out.append(table.c[name].desc() if desc else table.c[name].asc())
    if not any(f.lstrip("-") == "id" for f in order_by or ()):
        out.append(table.c.id.asc())
    return out


def to_columns(table_name: str, mapping: Dict[str, Any], columns: Sequence[str]) -> Tuple[Any, ...]:
    """A mirror row as a tuple of the store's columns (typed columns first, then the pushed row)."""
    row = json.loads(mapping["row"]) if "row" in mapping and mapping["row"] else {}
    out = []
    for col in columns:
        if col in mapping and col != "row":
            out.append(mapping[col])
        else:
            out.append(row.get(col))
    return tuple(out)


def select(c: Connection, table_name: str, site_ids: Sequence[int], filters: Dict[str, Any], columns: Sequence[str],
           order_by: Sequence[str] = (), limit: Optional[int] = None, offset: int = 0) -> List[Tuple[Any, ...]]:
    """Rows of ``columns`` matching the filters, ordered and paged."""
    table, clause = where(table_name, site_ids, filters)
    stmt = sa.select(table).where(clause).order_by(*order_clauses(table, table_name, order_by))
    if limit is not None:
        stmt = stmt.limit(int(limit))
    if offset:
        stmt = stmt.offset(int(offset))
    return [to_columns(table_name, dict(r._mapping), columns) for r in c.execute(stmt)]


def count(c: Connection, table_name: str, site_ids: Sequence[int], filters: Dict[str, Any]) -> int:
    table, clause = where(table_name, site_ids, filters)
    return int(c.execute(sa.select(sa.func.count()).select_from(table).where(clause)).scalar_one())


def count_by(c: Connection, table_name: str, site_ids: Sequence[int], filters: Dict[str, Any], column: str) -> Dict[Any, int]:
    table, clause = where(table_name, site_ids, filters)
    if column not in table.c or column == "row":
        raise ValidationError(f"cannot group {table_name} by {column!r}")
    rows = c.execute(sa.select(table.c[column], sa.func.count()).where(clause).group_by(table.c[column]))
    return {r[0]: int(r[1]) for r in rows}
