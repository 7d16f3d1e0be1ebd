"""Filters, ordering and paging over the site DB, with Balsam 0.7's keywords.

Each table has a set of filter keywords (an unknown one is an error that lists the valid ones) and of
orderable fields (``-field`` for descending; ``id`` breaks ties). Tag filters go through the ``job_tag``
index, a workdir substring through the trigram index where SQLite has one (:mod:`balsam.db.search`); id lists
of any length bind as one JSON parameter. Naive datetimes are taken as UTC, as Balsam's
server did.
"""

from __future__ import annotations

import datetime as _dt
import math
import operator
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from balsam.db import search
from balsam.db.codec import dumps
from balsam.db.states import to_batch_state, to_states
from balsam.exceptions import ValidationError

Clause = Tuple[str, List[Any]]
FilterFn = Callable[[Any], Clause]


def to_timestamp(value: Any, name: str = "time") -> float:
    """A datetime (naive means UTC), seconds since the epoch, or ISO 8601 text, as seconds since the epoch; anything
    else (a bool, NaN, infinity, a number past any date) is a ValidationError naming ``name``."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return float(value.timestamp())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
    if isinstance(value, str):
        try:
            return to_timestamp(_dt.datetime.fromisoformat(value), name)
        except ValueError:
            pass
    raise ValidationError(f"{name}: expected a datetime, epoch seconds or ISO 8601 text, got {_short(value)}")


def _short(value: Any) -> str:
    """``repr(value)``, cut to a readable length (hostile input can be megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_int(name: str, value: Any, what: str = "an integer", bounded: bool = True) -> int:
    """An integer filter value: an int (numpy's too), its text, or a float with no fraction; a bool, NaN, a
    fraction, another type or (``bounded``) an integer past 64 bits is a ValidationError naming the filter."""
    if not isinstance(value, bool):
        if isinstance(value, str):
            try:
                return _in_range(name, int(value.strip()), bounded)
            except ValueError:
                pass
        elif isinstance(value, float):
            if value.is_integer():
                return _in_range(name, int(value), bounded)
        else:
            try:
                return _in_range(name, operator.index(value), bounded)
            except TypeError:
                pass
    raise ValidationError(f"{name}: expected {what}, got {_short(value)}")


def _in_range(name: str, n: int, bounded: bool = True) -> int:
    if bounded and not -(2**63) <= n < 2**63:
        raise ValidationError(f"{name}: {_short(n)} is out of range (at most 64-bit integers)")
    return n


def as_text(name: str, value: Any) -> str:
    """A text filter value: a string (a state enum as its value), a path, or an integer as its digits; another
    type (None, a float, a dict, bytes) is a ValidationError naming the filter."""
    if isinstance(value, str):
        return str(value.value) if hasattr(value, "value") and isinstance(value.value, str) else str.__str__(value)
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValidationError(f"{name}: expected text, got {_short(value)}")


def as_bool(name: str, value: Any) -> bool:
    """A true/false filter value: a bool, or 0 or 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValidationError(f"{name}: expected true or false, got {_short(value)}")


def _as_list(value: Any) -> List[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _int_list(name: str, value: Any, bounded: bool = True) -> List[int]:
    out = []
    for v in _as_list(value):
        if hasattr(v, "id") and not isinstance(v, (int, str)):
            v = v.id
        out.append(as_int(name, v, "an integer id", bounded))
    return out


MAX_FILTER_KEYS = 100
"""The most keys one tags, parameters or data filter may name: each is a term of the query, and SQLite refuses a
query of about 1,000 ("Expression tree is too large"), which the home host raised as sqlite3.OperationalError and
the agent answered with a 503 that clients retried for minutes."""


def _few_keys(name: str, count: int) -> None:
    if count > MAX_FILTER_KEYS:
        raise ValidationError(f"{name}: a filter names at most {MAX_FILTER_KEYS} keys, got {count}")


def tag_pairs(value: Any, name: str = "tags") -> List[Tuple[str, Optional[str]]]:
    """Tags filter input (a dict, ``"k:v"`` strings, or ``"k"`` for "has key") as (key, value) pairs. Keys are text
    (or integers); values are text, numbers (as their text) or None for "has the key"; anything else (a nested dict,
    NaN, bytes) is a ValidationError naming the filter, as are more than :data:`MAX_FILTER_KEYS` keys."""
    if isinstance(value, dict):
        _few_keys(name, len(value))
        pairs_: List[Tuple[str, Optional[str]]] = []
        for k, v in value.items():
            key = _tag_key(name, k)
            if v is None or isinstance(v, str):
                pairs_.append((key, None if v is None else str.__str__(v)))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                pairs_.append((key, str(v)))
            else:
                raise ValidationError(f"{name}: the value of {key!r} must be text or a number, got {_short(v)}")
        return pairs_
    pairs: List[Tuple[str, Optional[str]]] = []
    items = _as_list(value)
    _few_keys(name, len(items))
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValidationError(f"{name}: expected 'key:value' strings or a dict, got {_short(item)}")
        k, sep, v = item.partition(":")
        pairs.append((k, v if sep else None))
    return pairs


def _tag_key(name: str, key: Any) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    raise ValidationError(f"{name}: keys must be text, got {_short(key)}")


def ids_in(col: str, name: str = "") -> FilterFn:
    def f(value: Any) -> Clause:
        # A row's own id past 64 bits names no row (ids carry their site's prefix): it matches none, as an id of no
        # site does. Other ids (a scheduler's, a BatchJob's) past 64 bits are refused by name.
        ids = [i for i in _int_list(name or col, value, bounded=col != "id") if -(2**63) <= i < 2**63]
        if not ids:
            return "0", []
        if len(ids) == 1:
            return f"{col} = ?", ids
        return f"{col} IN (SELECT value FROM json_each(?))", [dumps(ids)]
    return f


def int_or_null(col: str) -> FilterFn:
    """``col = n`` for an integer (or its text), ``col IS NULL`` for None."""
    def f(value: Any) -> Clause:
        if value is None:
            return f"{col} IS NULL", []
        return f"{col} = ?", [as_int(col, value)]
    return f


def text_in(col: str, convert: Optional[Callable[[Any], Any]] = None) -> FilterFn:
    def f(value: Any) -> Clause:
        values = [as_text(col, v) if convert is None else convert(v) for v in _as_list(value)]
        if len(values) == 1:
            return f"{col} = ?", values
        return f"{col} IN (SELECT value FROM json_each(?))", [dumps(values)]
    return f


def before(col: str, name: str = "") -> FilterFn:
    return lambda value: (f"{col} < ?", [to_timestamp(value, name or col)])


def after(col: str, name: str = "") -> FilterFn:
    return lambda value: (f"{col} > ?", [to_timestamp(value, name or col)])


TIME_RESOLUTION_S = 1e-6
"""Times are stored as float seconds and shown (datetimes) to the microsecond, rounded: a comparison with a shown
time treats the whole microsecond around it as that time, so ``last_update__gte=job.last_update`` finds ``job``."""


def compare(col: str, op: str, name: str) -> FilterFn:
    """``col OP time`` (the Django-style ``col__gte`` and its kin: :func:`with_comparisons`), to the microsecond."""
    slack = TIME_RESOLUTION_S if op in (">", "<=") else -TIME_RESOLUTION_S
    return lambda value: (f"{col} {op} ?", [to_timestamp(value, name) + slack])


def with_comparisons(filters: Dict[str, FilterFn]) -> Dict[str, FilterFn]:
    """``filters`` plus, for each ``X_after``/``X_before``, the Django ORM's ``X__gt``/``X__gte`` and ``X__lt``/``X__lte``
    (Balsam 0.x's queries, which 0.7's API was written to resemble), with their exact (strict or inclusive) meaning."""
    out = dict(filters)
    for key in filters:
        for suffix, ops in (("_after", (("gt", ">"), ("gte", ">="))), ("_before", (("lt", "<"), ("lte", "<=")))):
            if key.endswith(suffix):
                col = key[: -len(suffix)]
                for lookup, op in ops:
                    out[f"{col}__{lookup}"] = compare(col, op, f"{col}__{lookup}")
    return out


DICT_FILTERS = ("tags", "data", "filter_tags")
"""Filters whose value is a mapping: ``tags__experiment="foo"`` is one pair of it (:func:`django_lookups`)."""


def django_lookups(spec: "TableSpec", filters: Dict[str, Any]) -> Dict[str, Any]:
    """Filters written as the Django ORM spells them, in Balsam's own keywords: ``state__in=[...]`` (and any
    ``X__in``/``X__exact`` of a known filter X) is ``X``; ``tags__experiment="foo"`` is one pair of ``tags`` (also
    ``data__k``, ``filter_tags__k``). Other keys pass unchanged (an unknown one is then refused naming it)."""
    out: Dict[str, Any] = {}
    for key, value in filters.items():
        if key not in spec.filters and key not in spec.scope_keys:
            head, sep, rest = key.partition("__")
            if sep and rest and head in DICT_FILTERS and head in spec.filters:
                pairs = dict(tag_pairs(out[head], head)) if head in out else {}
                pairs.update(tag_pairs({rest: value}, head))
                out[head] = pairs
                continue
            base, sep, lookup = key.rpartition("__")
            if sep and lookup in ("in", "exact") and (base in spec.filters or base in spec.scope_keys):
                key = base
        if key in DICT_FILTERS and key in out:
            merged = dict(tag_pairs(out[key], key))
            merged.update(tag_pairs(value, key))
            value = merged
        out[key] = value
    return out


def contains(col: str, name: str = "") -> FilterFn:
    return lambda value: (f"instr({col}, ?) > 0", [as_text(name or col, value)])


def job_states(col: str) -> FilterFn:
    def f(value: Any) -> Clause:
        names = sorted(s.value for s in to_states(value))
        if len(names) == 1:
            return f"{col} = ?", names
        return f"{col} IN ({','.join('?' * len(names))})", names
    return f


def job_states_ne(col: str) -> FilterFn:
    def f(value: Any) -> Clause:
        names = sorted(s.value for s in to_states(value))
        return f"{col} NOT IN ({','.join('?' * len(names))})", names
    return f


def job_tags(id_col: str, correlated: bool = False) -> FilterFn:
    """Tag containment through the (key, value, job_id) index.

    The ``IN`` form walks the tag's matches and probes each job; the ``correlated`` (EXISTS) form walks
    the other filters' matches and probes the tag index for each. :func:`where` picks the smaller side.
    """
    def f(value: Any) -> Clause:
        clauses: List[str] = []
        params: List[Any] = []
        for k, v in tag_pairs(value):
            cond = "key = ?" if v is None else "key = ? AND value = ?"
            if correlated:
                clauses.append(f"EXISTS (SELECT 1 FROM job_tag WHERE {cond} AND job_id = {id_col})")
            else:
                clauses.append(f"{id_col} IN (SELECT job_id FROM job_tag WHERE {cond})")
            params.extend((k,) if v is None else (k, v))
        return " AND ".join(clauses) or "1", params
    return f


PROBE_LIMIT = 10_000


def _tag_driver(conn: sqlite3.Connection, filters: Dict[str, Any]) -> Optional[Tuple[str, Optional[str]]]:
    """For a job query with tags and a state filter: the tag pair to walk first, or None to walk the states.

    Two bounded probes (at most PROBE_LIMIT index steps each) size the sides; SQLite's own statistics
    cannot, since tags and states are skewed. Both large: walk the tags.
    """
    pairs = tag_pairs(filters["tags"])
    if not pairs:
        return None
    sized = []
    for k, v in pairs:
        cond = "key = ?" if v is None else "key = ? AND value = ?"
        sql = f"SELECT count(*) FROM (SELECT 1 FROM job_tag WHERE {cond} LIMIT {PROBE_LIMIT})"
        sized.append((conn.execute(sql, (k,) if v is None else (k, v)).fetchone()[0], (k, v)))
    state_sql, state_params = (job_states("state")(filters["state"]) if "state" in filters
                               else job_states_ne("state")(filters["state__ne"]))
    state_size = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM job WHERE {state_sql} LIMIT {PROBE_LIMIT})", state_params).fetchone()[0]
    smallest = min(sized, key=lambda sp: sp[0])
    return smallest[1] if smallest[0] <= state_size else None


def _json_value(col: str, key: str) -> Tuple[str, List[Any]]:
    """SQL for the value at ``key`` of the JSON object in ``col`` (SQL NULL when the key is absent). A key with a
    double quote or a backslash cannot be written as a JSON path that SQLite reads back, so it is looked up by
    name; a NUL cannot be in any stored key SQLite reads, so it is refused."""
    if "\x00" in key:
        raise ValidationError(f"{col}: the key {key[:60]!r} has a NUL character, which no stored key can have")
    if '"' in key or "\\" in key:
        return f"(SELECT value FROM json_each({col}) WHERE key = ?)", [key]
    return f"json_extract({col}, ?)", ['$."' + key + '"']


def _json_has(col: str, key: str) -> Tuple[str, List[Any]]:
    """SQL that is true when the JSON object in ``col`` has ``key`` (its value may be null)."""
    if '"' in key or "\\" in key or "\x00" in key:
        _, params = _json_value(col, key)  # refuses a NUL
        return f"EXISTS (SELECT 1 FROM json_each({col}) WHERE key = ?)", params
    return f"json_type({col}, ?) IS NOT NULL", ['$."' + key + '"']


def json_contains(col: str) -> FilterFn:
    """``"k:v"`` containment in a JSON object column (event data, batch job filter_tags)."""
    def f(value: Any) -> Clause:
        clauses: List[str] = []
        params: List[Any] = []
        for k, v in tag_pairs(value, col):
            if v is None:
                sql, p = _json_has(col, k)
                clauses.append(sql)
                params.extend(p)
            else:
                expr, p = _json_value(col, k)
                clauses.append(f"CAST({expr} AS TEXT) = ?")
                params.extend((*p, v))
        return " AND ".join(clauses) or "1", params
    return f


def json_equals(col: str) -> FilterFn:
    """``{key: value}`` in a JSON object column (job parameters): a string matches the value's text (so ``"n:3"``, as
    the HTTP API carries it, finds ``n=3``), other values compare as JSON, and ``"k"`` (or None) asks for the key."""
    def f(value: Any) -> Clause:
        if isinstance(value, dict):
            _few_keys(col, len(value))
        pairs = [(_tag_key(col, k), v) for k, v in value.items()] if isinstance(value, dict) else tag_pairs(value, col)
        clauses: List[str] = []
        params: List[Any] = []
        for k, v in pairs:
            if v is None:
                sql, p = _json_has(col, k)
                clauses.append(sql)
                params.extend(p)
                continue
            expr, p = _json_value(col, k)
            if isinstance(v, str):
                clauses.append(f"CAST({expr} AS TEXT) = ?")
                params.extend((*p, v))
                continue
            try:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(v)
                text = dumps(v)
            except (TypeError, ValueError, OverflowError):
                raise ValidationError(f"{col}: the value of {k!r} is not JSON ({type(v).__name__}), so no stored {col} equals it") from None
            clauses.append(f"{expr} IS json_extract(?, '$')")
            params.extend((*p, text))
        return " AND ".join(clauses) or "1", params
    return f


def boolean(col: str, only_true: bool = False) -> FilterFn:
    def f(value: Any) -> Clause:
        flag = as_bool(col, value)
        if only_true and not flag:
            return "1", []
        return f"{col} = ?", [1 if flag else 0]
    return f


def subquery(col: str, sql: str, convert: Callable[[Any], List[Any]]) -> FilterFn:
    return lambda value: (f"{col} IN ({sql})", convert(value))


@dataclass(frozen=True)
class TableSpec:
    """What can be filtered and ordered in one table."""

    table: str
    filters: Dict[str, FilterFn]
    order_fields: Dict[str, str]
    default_order: Tuple[str, ...] = ("id",)
    scope_keys: Tuple[str, ...] = field(default=("site_id", "site_name", "site_path"))
    label: str = ""
    """The name users know the rows by (the API model), for error messages."""

    @property
    def noun(self) -> str:
        return self.label or self.table


JOB = TableSpec(
    table="job",
    label="Job",
    filters=with_comparisons({
        "id": ids_in("id"),
        "parent_id": lambda v: ("id IN (SELECT child_id FROM job_parent WHERE parent_id IN (SELECT value FROM json_each(?)))",
                                [dumps(_int_list("parent_id", v))]),
        "app_id": ids_in("app_id"),
        "app_name": subquery("app_id", "SELECT id FROM app WHERE name IN (SELECT value FROM json_each(?))", lambda v: [dumps([as_text("app_name", x) for x in _as_list(v)])]),
        "batch_job_id": ids_in("batch_job_id"),
        "session_id": int_or_null("session_id"),
        "last_update_before": before("last_update", "last_update_before"),
        "last_update_after": after("last_update", "last_update_after"),
        "created_before": before("created", "created_before"),
        "created_after": after("created", "created_after"),
        "workdir": text_in("workdir"),
        "workdir__contains": contains("workdir", "workdir__contains"),
        "state": job_states("state"),
        "state__ne": job_states_ne("state"),
        "tags": job_tags("id"),
        "parameters": json_equals("parameters"),
        "pending_file_cleanup": boolean("pending_file_cleanup", only_true=True),
        "return_code": int_or_null("return_code"),
    }),
    order_fields={"id": "id", "last_update": "last_update", "state": "state", "workdir": "workdir", "created": "created",
                  "wall_time_min": "wall_time_min", "num_nodes": "num_nodes"},
)

EVENT = TableSpec(
    table="event",
    label="EventLog",
    filters=with_comparisons({
        "id": ids_in("id"),
        "job_id": ids_in("job_id"),
        "batch_job_id": subquery("job_id", "SELECT id FROM job WHERE batch_job_id = ?", lambda v: [as_int("batch_job_id", v)]),
        "scheduler_id": subquery(
            "job_id", "SELECT j.id FROM job j JOIN batch_job b ON b.id = j.batch_job_id WHERE b.scheduler_id = ?", lambda v: [as_int("scheduler_id", v)]
        ),
        "tags": job_tags("job_id"),
        "data": json_contains("data"),
        "timestamp_before": before("timestamp", "timestamp_before"),
        "timestamp_after": after("timestamp", "timestamp_after"),
        "from_state": job_states("from_state"),
        "to_state": job_states("to_state"),
    }),
    order_fields={"id": "id", "timestamp": "timestamp"},
    default_order=("-timestamp",),
)

BATCH_JOB = TableSpec(
    table="batch_job",
    label="BatchJob",
    filters=with_comparisons({
        "id": ids_in("id"),
        "state": text_in("state", lambda v: to_batch_state(v).value),
        "scheduler_id": ids_in("scheduler_id"),
        "queue": text_in("queue"),
        "project": text_in("project"),
        "job_mode": text_in("job_mode"),
        "start_time_before": before("start_time", "start_time_before"),
        "start_time_after": after("start_time", "start_time_after"),
        "end_time_before": before("end_time", "end_time_before"),
        "end_time_after": after("end_time", "end_time_after"),
        "filter_tags": json_contains("filter_tags"),
    }),
    order_fields={"id": "id", "start_time": "start_time", "end_time": "end_time", "created": "created", "state": "state"},
)

APP = TableSpec(
    table="app",
    label="App",
    filters={"id": ids_in("id"), "name": text_in("name"),
             # Balsam 0.7's class path "module.ClassName": an app is named by its class
             "class_path": text_in("name", lambda v: as_text("class_path", v).rsplit(".", 1)[-1])},
    order_fields={"id": "id", "name": "name", "last_update": "last_update"},
)

SESSION = TableSpec(
    table="session",
    label="Session",
    filters={"id": ids_in("id"), "batch_job_id": ids_in("batch_job_id")},
    order_fields={"id": "id", "heartbeat": "heartbeat"},
)

TRANSFER_PROTOCOLS = {
    "local": "j.value IN ('local', 'cp', 'cp://', 'file://')",
    "rsync": "j.value LIKE 'rsync://%'",
    "globus": "j.value LIKE 'globus://%'",
}


def transfer_protocol(value: Any) -> Clause:
    """Items whose location alias maps, in the site's transfer_locations, to one of these protocols."""
    names = [str(v) for v in _as_list(value)]
    unknown = [n for n in names if n not in TRANSFER_PROTOCOLS]
    if unknown:
        raise ValidationError(f"protocol: unknown {unknown[0]!r} (valid: {', '.join(TRANSFER_PROTOCOLS)})")
    if not names:
        return "0", []
    test = " OR ".join(TRANSFER_PROTOCOLS[n] for n in names)
    return f"location_alias IN (SELECT j.key FROM site s, json_each(s.transfer_locations) j WHERE {test})", []


TRANSFER_ITEM = TableSpec(
    table="transfer_item",
    label="TransferItem",
    filters={
        "id": ids_in("id"),
        "job_id": ids_in("job_id"),
        "state": text_in("state"),
        "direction": text_in("direction"),
        "location_alias": text_in("location_alias"),
        "task_id": text_in("task_id"),
        "protocol": transfer_protocol,
        "job_state": lambda v: ("job_id IN (SELECT id FROM job WHERE " + job_states("state")(v)[0] + ")", job_states("state")(v)[1]),
        "tags": job_tags("job_id"),
    },
    order_fields={"id": "id", "last_update": "last_update"},
)

SPECS = {spec.table: spec for spec in (JOB, EVENT, BATCH_JOB, APP, SESSION, TRANSFER_ITEM)}


def plan(
    spec: TableSpec, filters: Dict[str, Any], conn: Optional[sqlite3.Connection] = None, *, counting: bool = False
) -> Tuple[str, str, List[Any]]:
    """FROM, WHERE (without the keywords) and parameters for ``filters``; scope keys are the caller's business.

    With ``conn``, a job query combining tags and states is driven from whichever side is smaller: walking
    one tag's matches and probing each job's state in the (state) index, or walking the state and probing the
    tag index for each job. Counts walk the tag matches in a join; ordered, paged selects keep the IN form, which
    lets SQLite walk the state index in id order and stop at the page's end.
    """
    check_filters(spec, filters)
    source = spec.table
    clauses: List[str] = []
    params: List[Any] = []
    mode = "plain"
    if conn is not None and spec.table == "job" and "tags" in filters and ("state" in filters or "state__ne" in filters):
        driver = _tag_driver(conn, filters)
        if driver is None:
            mode = "correlated"
        elif "state" in filters and counting:
            mode = "join"
            k, v = driver
            source = "job_tag _t CROSS JOIN job INDEXED BY job_state"
            clauses.append("_t.key = ?" if v is None else "_t.key = ? AND _t.value = ?")
            params.extend((k,) if v is None else (k, v))
            clauses.append("job.id = _t.job_id")
            rest = [(pk, pv) for pk, pv in tag_pairs(filters["tags"]) if (pk, pv) != driver]
            filters = dict(filters, tags=dict(rest)) if rest else {key: val for key, val in filters.items() if key != "tags"}
    for key, value in filters.items():
        if key in spec.scope_keys:
            continue
        fn = spec.filters.get(key)
        if mode == "correlated" and key == "tags":
            fn = job_tags("id", correlated=True)
        if key == "workdir__contains" and spec.table == "job":
            indexed = search.contains_clause(conn, str(value))
            if indexed is not None:
                clauses.append(indexed[0])
                params.extend(indexed[1])
                continue
        if fn is None:
            valid = ", ".join(sorted(set(spec.filters) | set(spec.scope_keys)))
            raise ValidationError(f"unknown filter {key!r} for {spec.noun} (valid: {valid})")
        if isinstance(value, (list, tuple, set, frozenset)) and not value and key != "tags":
            return spec.table, "0", []
        sql, p = fn(value)
        clauses.append(sql)
        params.extend(_bindable(key, p))
    return source, (" AND ".join(f"({c})" for c in clauses) if clauses else "1"), params


def check_filters(spec: TableSpec, filters: Dict[str, Any]) -> None:
    """Check every filter as a query would (an unknown keyword, a value of the wrong type, an integer past 64 bits,
    text that is not Unicode) without reading the DB. The Python API checks a query's filters when it is built,
    so a bad filter is the same ValidationError on the site's home host and from any other host."""
    for key, value in filters.items():
        if key in spec.scope_keys:
            continue
        fn = spec.filters.get(key)
        if fn is None:
            valid = ", ".join(sorted(set(spec.filters) | set(spec.scope_keys)))
            raise ValidationError(f"unknown filter {key!r} for {spec.noun} (valid: {valid})")
        if isinstance(value, (list, tuple, set, frozenset)) and not value and key != "tags":
            continue
        _bindable(key, fn(value)[1])


def _bindable(key: str, params: List[Any]) -> List[Any]:
    """The parameters of one filter, checked for what SQLite can bind: integers beyond 64 bits (an id of 10**30)
    and text that is not Unicode (a lone surrogate) are refused naming the filter, instead of failing in sqlite3."""
    for p in params:
        if type(p) is int and not -(2**63) <= p < 2**63:
            raise ValidationError(f"{key}: {p} is out of range (at most 64-bit integers)")
        if type(p) is str:
            try:
                p.encode()
            except UnicodeEncodeError:
                raise ValidationError(f"{key}: {p[:60]!r} is not valid Unicode text") from None
    return params


def _row_count(n: int) -> int:
    """A LIMIT or OFFSET SQLite can bind (anything past 2**62 rows means "no limit")."""
    return min(n, 2**62)


def order_terms(spec: TableSpec, order_by: Sequence[str]) -> List[Tuple[str, bool]]:
    """(column, descending) for ``order_by`` (``-field`` is descending), with id as the tie-breaker."""
    terms: List[Tuple[str, bool]] = []
    keys = list(order_by) or list(spec.default_order)
    for key in keys:
        if not isinstance(key, str):
            raise ValidationError(f"cannot order {spec.noun} by {key!r:.80} (valid: {', '.join(sorted(spec.order_fields))})")
        desc = key.startswith("-")
        name = key.lstrip("-+")
        col = spec.order_fields.get(name)
        if col is None:
            raise ValidationError(f"cannot order {spec.noun} by {name!r} (valid: {', '.join(sorted(spec.order_fields))})")
        terms.append((col, desc))
        if col == "id":
            break  # id is unique: later terms never decide anything
    if terms[-1][0] != "id":
        terms.append(("id", terms[-1][1]))
    return terms


def order_clause(spec: TableSpec, order_by: Sequence[str]) -> str:
    """ORDER BY terms for ``order_by`` (``-field`` is descending), with id as the tie-breaker."""
    return ", ".join(f"{col} {'DESC' if desc else 'ASC'}" for col, desc in order_terms(spec, order_by))


_NOT_NULL: Dict[str, FrozenSet[str]] = {}


def _not_null(conn: sqlite3.Connection, table: str) -> FrozenSet[str]:
    """Columns of ``table`` declared NOT NULL (the primary key included)."""
    known = _NOT_NULL.get(table)
    if known is None:
        known = frozenset(str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})") if r[3] or r[5])
        _NOT_NULL[table] = known
    return known


def keyset_clause(terms: Sequence[Tuple[str, bool]], after: Sequence[Any], not_null: FrozenSet[str] = frozenset()) -> Tuple[str, List[Any]]:
    """A WHERE clause for the rows that come after the row whose order values are ``after``, in the order of
    ``terms`` (NULLs sort first ascending and last descending, as SQLite sorts them). With one direction and
    columns that cannot be NULL it is a row-value comparison an index can seek to, so a deep page costs what
    the first one does."""
    if len(after) != len(terms):
        raise ValidationError("cursor: it does not fit this ordering")
    _bindable("cursor", list(after))
    if len({desc for _, desc in terms}) == 1 and None not in after and all(c in not_null or c == "id" for c, _ in terms):
        op = "<" if terms[0][1] else ">"
        cols = ", ".join(c for c, _ in terms)
        return f"({cols}) {op} ({', '.join('?' * len(terms))})", list(after)
    ors: List[str] = []
    params: List[Any] = []
    for i, ((col, desc), value) in enumerate(zip(terms, after)):
        parts: List[str] = []
        part_params: List[Any] = []
        for (prev, _), prev_value in zip(terms[:i], after[:i]):
            if prev_value is None:
                parts.append(f"{prev} IS NULL")
            else:
                parts.append(f"{prev} = ?")
                part_params.append(prev_value)
        if value is None:
            if desc:
                continue  # nothing sorts after NULL in descending order
            parts.append(f"{col} IS NOT NULL")
        elif desc:
            parts.append(f"({col} < ? OR {col} IS NULL)")
            part_params.append(value)
        else:
            parts.append(f"{col} > ?")
            part_params.append(value)
        ors.append("(" + " AND ".join(parts) + ")")
        params.extend(part_params)
    return ("(" + " OR ".join(ors) + ")") if ors else "0", params


def page(
    conn: sqlite3.Connection,
    spec: TableSpec,
    filters: Dict[str, Any],
    *,
    columns: Sequence[str],
    order_by: Sequence[str] = (),
    limit: int,
    after: Optional[Sequence[Any]] = None,
    offset: int = 0,
) -> Tuple[List[Tuple[Any, ...]], Optional[List[Any]]]:
    """One page of rows in order, resuming after the row whose order values are ``after`` (keyset paging:
    rows added or removed before it never shift the page, and a deep page costs what the first one does), or
    at ``offset`` (a slice's start, for the first page). (rows, the order values of its last row when more rows
    follow, else None)."""
    terms = order_terms(spec, order_by)
    source, sql, params = plan(spec, filters, conn)
    if after is not None:
        clause, extra = keyset_clause(terms, after, _not_null(conn, spec.table))
        sql = f"({sql}) AND {clause}"
        params = [*params, *extra]
    keys = [col for col, _ in terms]
    order = ", ".join(f"{col} {'DESC' if desc else 'ASC'}" for col, desc in terms)
    text = f"SELECT {', '.join([*columns, *keys])} FROM {source} WHERE {sql} ORDER BY {order} LIMIT ? OFFSET ?"
    rows = conn.execute(text, [*params, _row_count(limit + 1), _row_count(offset)]).fetchall()
    n = len(columns)
    more = len(rows) > limit
    rows = rows[:limit]
    return [tuple(r[:n]) for r in rows], (list(rows[-1][n:]) if more and rows else None)


def select(
    conn: sqlite3.Connection,
    spec: TableSpec,
    filters: Dict[str, Any],
    *,
    columns: Iterable[str],
    order_by: Sequence[str] = (),
    limit: Optional[int] = None,
    offset: int = 0,
) -> List[Tuple[Any, ...]]:
    """Rows of ``columns`` matching ``filters``, ordered and paged."""
    source, sql, params = plan(spec, filters, conn)
    text = f"SELECT {', '.join(columns)} FROM {source} WHERE {sql} ORDER BY {order_clause(spec, order_by)}"
    if limit is not None or offset:
        text += " LIMIT ? OFFSET ?"
        params = [*params, -1 if limit is None else _row_count(limit), _row_count(offset)]
    return conn.execute(text, params).fetchall()


def count(conn: sqlite3.Connection, spec: TableSpec, filters: Dict[str, Any]) -> int:
    """How many rows match ``filters``."""
    source, sql, params = plan(spec, filters, conn, counting=True)
    return int(conn.execute(f"SELECT count(*) FROM {source} WHERE {sql}", params).fetchone()[0])


def ids(conn: sqlite3.Connection, spec: TableSpec, filters: Dict[str, Any], order_by: Sequence[str] = (),
        limit: Optional[int] = None, offset: int = 0) -> List[int]:
    """Ids of the matching rows."""
    return [row[0] for row in select(conn, spec, filters, columns=("id",), order_by=order_by, limit=limit, offset=offset)]


def count_by(conn: sqlite3.Connection, spec: TableSpec, filters: Dict[str, Any], column: str) -> Dict[Any, int]:
    """Counts of the matching rows grouped by one column (``state``, say)."""
    source, sql, params = plan(spec, filters, conn, counting=True)
    return dict(conn.execute(f"SELECT {column}, count(*) FROM {source} WHERE {sql} GROUP BY {column}", params).fetchall())
