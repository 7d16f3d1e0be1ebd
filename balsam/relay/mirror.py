"""The relay's mirror of the sites' rows: applying a site's push, and Balsam's filter keywords as SQL.

A push item is ``{"entity": "job" | "event" | "batch_job" | "app" | "transfer_item", "op": "upsert" | "delete",
"id": int, "row": {column: stored value}}`` with rows in the site store's representation (JSON columns as text,
times as epoch seconds). A site may only write rows whose ids carry its own site id (the high bits), so one
site's token can never overwrite another site's rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from balsam.db.ids import LOCAL_BITS, site_of
from balsam.exceptions import ValidationError
from balsam.relay import bulk
from balsam.relay import schema as t
from balsam.relay.bulk import dumps
from balsam.relay.store import clean_text

ENTITIES = tuple(t.MIRRORS)
MAX_ITEMS = 50_000
SECRET_APP_COLUMNS = frozenset({"serialized_class", "source_code"})
"""App columns that never reach the relay (code stays at its site)."""
COLUMNS: Dict[str, Tuple[str, ...]] = {
    "job": ("id", "site_id", "app_id", "workdir", "state", "batch_job_id", "return_code", "created", "last_update", "version", "row",
            "links"),
    "event": ("id", "site_id", "job_id", "timestamp", "from_state", "to_state", "data"),
    "batch_job": ("id", "site_id", "state", "queue", "project", "scheduler_id", "start_time", "end_time", "created", "version", "row"),
    "app": ("id", "site_id", "name", "version", "row"),
    "transfer_item": ("id", "site_id", "job_id", "state", "direction", "row"),
    "dag": ("id", "site_id", "name", "version", "row"),
    "dag_instance": ("id", "site_id", "dag_id", "created", "row"),
}
"""Each mirror table's columns, in the order :func:`mirror_row` gives them."""
STABLE_JOB_COLUMNS = ("site_id", "app_id", "workdir", "batch_job_id")
"""Indexed job columns a state change leaves as they were (see :func:`balsam.relay.bulk.upsert`)."""
_LINKS = COLUMNS["job"].index("links")
_STATE = COLUMNS["job"].index("state")
_CREATED = COLUMNS["job"].index("created")


def _opt_float(v: Any) -> Optional[float]:
    """A pushed number as a finite float, else None (NaN, infinities and 10**400 are not times)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _float(v: Any, default: float = 0.0) -> float:
    f = _opt_float(v)
    return default if f is None else f


def _opt_int(v: Any) -> Optional[int]:
    """A pushed integer that fits a BIGINT column, else None."""
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63 else None


def _int(v: Any, default: int) -> int:
    i = _opt_int(v)
    return default if i is None else i


_MIN_INT, _MAX_INT = -(2**63), 2**63
_MIN32, _MAX32 = -(2**31), 2**31
"""The range of the mirrors' INTEGER columns (a job's return code and version): PostgreSQL's is 32 bits."""


def _int32(v: Any) -> Optional[int]:
    return v if type(v) is int and _MIN32 <= v < _MAX32 else None


def _text(v: Any, width: Optional[int] = None) -> str:
    """A pushed value for a text column: a string both databases store (:func:`balsam.relay.store.clean_text`: no NUL,
    no lone surrogate, at most ``width`` characters; the whole value stays in the row's JSON)."""
    text = v if type(v) is str else str(v or "")
    if "\x00" in text or not text.isascii() or (width is not None and len(text) > width):
        return clean_text(text, width)
    return text


_WIDTHS = frozenset({8, 20, 32, 200, 255})
"""The widths of the mirrors' text columns (what :func:`_text` cuts to)."""


def _opt_text(v: Any) -> Optional[str]:
    return None if v is None else _text(v)


def _job_row(row_id: int, site_id: int, row: Dict[str, Any]) -> Tuple[Any, ...]:
    """:func:`mirror_row` of a job: the common case (values of the right types, as a site pushes them) is checked
    inline, once per value; anything else goes through the converters above (a push carries thousands of these)."""
    g = row.get
    app_id, workdir, state, batch_job_id, return_code = g("app_id"), g("workdir"), g("state"), g("batch_job_id"), g("return_code")
    created, last_update, version, tags, parents = g("created"), g("last_update"), g("version"), g("tags"), g("parent_ids")
    if type(app_id) is not int or not _MIN_INT <= app_id < _MAX_INT:
        app_id = _int(app_id, 0)
    if type(workdir) is not str or "\x00" in workdir or not workdir.isascii():
        workdir = _text(workdir)
    if type(state) is not str or len(state) > 20 or not state.isascii() or "\x00" in state:
        state = _text(state, 20)
    if batch_job_id is not None and (type(batch_job_id) is not int or not _MIN_INT <= batch_job_id < _MAX_INT):
        batch_job_id = _opt_int(batch_job_id)
    if return_code is not None and (type(return_code) is not int or not _MIN32 <= return_code < _MAX32):
        return_code = _int32(return_code)
    if type(created) is not float or created - created != 0.0:  # (x - x is 0.0 for a finite float, NaN otherwise)
        created = _float(created)
    if type(last_update) is not float or last_update - last_update != 0.0:
        last_update = _float(last_update)
    if type(version) is not int or not _MIN32 <= version < _MAX32:
        version = _version(version)
    links = _text_digest(tags, parents) if type(tags) is str and type(parents) is str else links_digest(tags, parents)
    return (row_id, site_id, app_id, workdir, state, batch_job_id, return_code, created, last_update, version, dumps(row), links)


def mirror_row(entity: str, row_id: int, site_id: int, row: Dict[str, Any]) -> Tuple[Any, ...]:
    """The mirror table's columns (:data:`COLUMNS` order) for a pushed row: the columns queries filter and sort on,
    and the whole row as JSON text (``row``) that reads answer from."""
    if entity == "job":
        return _job_row(row_id, site_id, row)
    # Text columns take what both databases can store, cut to their widths (the whole value stays in ``row``):
    # a value the site's store allows (a queue name of 1,000 characters) must not stop the site's pushes.
    g = row.get
    if entity == "event":
        data = g("data")
        return (row_id, site_id, _int(g("job_id"), 0), _float(g("timestamp")), _text(g("from_state"), 20), _text(g("to_state"), 20),
                _opt_text(data) if isinstance(data, str) or data is None else dumps(data))
    if entity == "batch_job":
        return (row_id, site_id, _text(g("state"), 32), _text(g("queue"), 255), _text(g("project"), 255), _opt_int(g("scheduler_id")),
                _opt_float(g("start_time")), _opt_float(g("end_time")), _float(g("created")), _version(g("version")), dumps(row))
    if entity == "app":
        clean = {k: v for k, v in row.items() if k not in SECRET_APP_COLUMNS}
        return (row_id, site_id, _text(g("name"), 255), _version(g("version")), dumps(clean))
    if entity == "dag":
        return (row_id, site_id, _text(g("name"), 200), _version(g("version")), dumps(row))
    if entity == "dag_instance":
        return (row_id, site_id, _int(g("dag_id"), 0), _float(g("created")), dumps(row))
    return (row_id, site_id, _int(g("job_id"), 0), _text(g("state"), 32), _text(g("direction"), 8), dumps(row))


def _version(v: Any) -> int:
    """A pushed version for the mirrors' 32-bit column (1 for anything else)."""
    i = _int32(v)
    return 1 if i is None else i


def job_columns(row: Dict[str, Any]) -> Dict[str, Any]:
    """A pushed job row's mirror columns by name (the row's site is in its id's high bits)."""
    return dict(zip(COLUMNS["job"], mirror_row("job", int(row["id"]), site_of(int(row["id"])), row)))


@lru_cache(maxsize=4096)
def _parse(text: str) -> Any:
    """JSON text of tags or parents (the same few texts recur across a push: parsed once)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _links(raw_tags: Any, raw_parents: Any) -> Tuple[Dict[str, Any], List[int]]:
    tags = _parse(raw_tags) if isinstance(raw_tags, str) else raw_tags
    parents = _parse(raw_parents) if isinstance(raw_parents, str) else raw_parents
    return (tags if isinstance(tags, dict) else {},
            [p for p in parents if type(p) is int and 0 < p < _MAX_INT] if isinstance(parents, list) else [])


def links_digest(tags: Any, parent_ids: Any) -> str:
    """A digest of a job's tags and parent ids as the site pushed them (texts, or values written as JSON)."""
    return _text_digest(tags if isinstance(tags, str) else dumps(tags if tags is not None else {}),
                        parent_ids if isinstance(parent_ids, str) else dumps(parent_ids if parent_ids is not None else []))


@lru_cache(maxsize=4096)
def _text_digest(tags: str, parent_ids: str) -> str:
    """:func:`links_digest` of the texts (many jobs of a push share their tags and parents: computed once)."""
    return hashlib.blake2b((tags + "\x00" + parent_ids).encode(), digest_size=12).hexdigest()


class Reissued(Exception):
    """A push holds rows under ids its site handed out before for other rows (:func:`reissued`): nothing of it was
    applied. ``ids``: those ids by entity."""

    NAMES = {"job": "job", "event": "event", "batch_job": "BatchJob", "app": "app", "transfer_item": "transfer item", "dag": "DAG",
             "dag_instance": "DAG instance"}

    def __init__(self, ids: Dict[str, List[int]]) -> None:
        super().__init__(", ".join(f"{len(v)} {self.NAMES.get(k, k)}{'' if len(v) == 1 else 's'}" for k, v in ids.items()))
        self.ids = ids


def apply_items(c: Connection, site_id: int, items: Sequence[Dict[str, Any]], issued: Optional[Dict[str, int]] = None) -> int:
    """Apply one push's items inside the caller's transaction; returns how many were applied.

    ``issued``: the highest id of each entity the site had pushed before (:func:`issued_by`). Given, a row at or below
    it must be the row the mirror holds under its id (:func:`reissued`); otherwise :class:`Reissued` is raised, and
    the caller rolls its transaction back (the push's jobs may have been written by then).

    Every table is written with bulk statements (:mod:`balsam.relay.bulk`), whatever the push's size. A job's
    tag and parent rows are rewritten only when its tags or parents differ from the mirror's copy (read back for
    the whole push in one statement): a state change, the common push, touches the job row alone."""
    upserts, deletes = _items(site_id, items)
    mirrored: Dict[str, List[Tuple[Any, ...]]] = {}
    for entity, rows in upserts.items():
        try:
            mirrored[entity] = [mirror_row(entity, row_id, site_id, row) for row_id, row in rows.items()]
        except RecursionError:  # (a site's own store holds JSON at most 64 levels deep)
            raise ValidationError(f"a pushed {entity} row is nested too deep to store") from None
    found: Dict[str, List[int]] = {}
    if issued is not None:
        # A job's creation time is read back with its previous state by the write itself (below; the transaction is
        # rolled back if one differs): the jobs a push changes, thousands at a time, are not read twice. Jobs this
        # push also deletes are checked here, before the delete.
        again = set(deletes["job"])
        checked = {e: ([m for m in rows if m[0] in again] if e == "job" else rows) for e, rows in mirrored.items()}
        found = reissued(c, issued, upserts, checked)
        if found and not mirrored["job"]:
            raise Reissued(found)
    n = 0
    counts: Dict[str, int] = {}  # jobs gained (lost, negative) per state by this push: the count table's change
    for entity, table in t.MIRRORS.items():
        ids = deletes[entity]
        if ids:
            if entity == "job":
                for state in bulk.values_of(c, table, "state", ids):
                    counts[state] = counts.get(state, 0) - 1
            bulk.delete_ids(c, table, "id", ids)
            if entity == "job":
                bulk.delete_ids(c, t.job_tag, "job_id", ids)
                bulk.delete_ids(c, t.job_parent, "child_id", ids)
                bulk.delete_ids(c, t.event, "job_id", ids)  # as the site deletes them (events are pushed, never deleted)
            n += len(ids)
    for entity, table in t.MIRRORS.items():
        rows = upserts[entity]
        if not rows:
            continue
        if entity == "job":
            old = bulk.upsert(c, table, COLUMNS[entity], mirrored[entity], previous=("links", "state", "created"), stable=STABLE_JOB_COLUMNS)
            if issued is not None:
                top, again = issued.get("job") or 0, set(deletes["job"])
                bad = [m[0] for m in mirrored[entity] if m[0] <= top and m[0] not in again and (m[0] not in old or old[m[0]][2] != m[_CREATED])]
                if bad:
                    found = {"job": sorted(found.get("job", []) + bad), **{k: v for k, v in found.items() if k != "job"}}
                if found:
                    raise Reissued(found)
            _relink(c, rows, mirrored[entity], {i: v[0] for i, v in old.items()})
            for m in mirrored[entity]:
                before = old.get(m[0])
                if before is None or before[1] != m[_STATE]:
                    counts[m[_STATE]] = counts.get(m[_STATE], 0) + 1
                    if before is not None:
                        counts[before[1]] = counts.get(before[1], 0) - 1
        else:
            bulk.upsert(c, table, COLUMNS[entity], mirrored[entity])
        n += len(rows)
    bulk.add_counts(c, t.job_count, ("site_id", "state"), [(site_id, state, d) for state, d in sorted(counts.items()) if d])
    return n


def _items(site_id: int, items: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Dict[int, Dict[str, Any]]], Dict[str, List[int]]]:
    """A push's items checked: ({entity: {id: row}} to upsert, {entity: [id]} to delete)."""
    if not isinstance(items, (list, tuple)) or len(items) > MAX_ITEMS:
        raise ValidationError(f"a push carries a list of at most {MAX_ITEMS} items")
    upserts: Dict[str, Dict[int, Dict[str, Any]]] = {e: {} for e in ENTITIES}
    deletes: Dict[str, List[int]] = {e: [] for e in ENTITIES}
    lo, hi = site_id << LOCAL_BITS, (site_id + 1) << LOCAL_BITS
    for i, item in enumerate(items):
        if type(item) is not dict:
            if not isinstance(item, dict):
                raise ValidationError(f"push item {i} is not an object")
        entity, op, row_id = item.get("entity"), item.get("op"), item.get("id")
        if type(row_id) is not int:
            raise ValidationError(f"push item {i}: bad id {row_id!r}")
        if not lo <= row_id < hi:
            if not 0 < row_id < 2**63:
                raise ValidationError(f"push item {i}: bad id {row_id!r}")
            raise ValidationError(f"push item {i}: {entity} {row_id} is not a row of site {site_id}")
        target = upserts.get(entity) if type(entity) is str else None
        if target is None:
            raise ValidationError(f"push item {i}: unknown entity {entity!r}")
        if op == "upsert":
            row = item.get("row")
            if type(row) is dict:
                target[row_id] = row  # a row pushed twice in one batch: the last one wins
                continue
        elif op == "delete":
            deletes[str(entity)].append(row_id)
            target.pop(row_id, None)
            continue
        raise ValidationError(f"push item {i}: op must be upsert (with a row) or delete")
    return upserts, deletes


# ------------------------------------------------------------------------------------------- reissued ids
IDENTITY: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "job": (("created",), ()),
    "event": (("job_id", "timestamp"), ()),
    "batch_job": (("created",), ()),
    "app": ((), ("created",)),
    "transfer_item": (("job_id", "direction"), ("slot",)),
    "dag": ((), ("created",)),
    "dag_instance": (("dag_id", "created"), ()),
}
"""What makes a row the row it is, whatever changes later: (mirror columns, keys of the pushed row). A site never
changes these once the row is made (a job's creation time; an event's job and time; a transfer item's job,
direction and slot), so a row pushed under an id the mirror holds with other values is another row."""


def _identity_value(key: str, value: Any) -> Any:
    """A pushed row's value at an identity key as the mirror's row text gives it back (times as floats)."""
    return _opt_float(value) if key == "created" else _opt_text(value)


def reissued(c: Connection, issued: Dict[str, int], upserts: Dict[str, Dict[int, Dict[str, Any]]],
             mirrored: Dict[str, List[Tuple[Any, ...]]]) -> Dict[str, List[int]]:
    """The upserted ids that the site handed out before for another row: at or below the highest id of their entity
    the site had pushed (``issued``), and not in the mirror as the same row (:data:`IDENTITY`): the mirror holds
    another row under the id, or none (it was deleted at the site, and the row is back from a backup). A site
    reissues ids only when its DB was put back from a backup taken before it pushed them; such a row needs a new
    id, or it would be taken for the row the relay and the user's other sites knew under this one. {entity: ids}."""
    found: Dict[str, List[int]] = {}
    for entity, rows in mirrored.items():
        top = issued.get(entity) or 0
        if not rows or top <= 0:
            continue
        columns, keys = IDENTITY[entity]
        picks = [0] + [COLUMNS[entity].index(col) for col in columns]
        pick = operator.itemgetter(*picks) if len(picks) > 1 else (lambda m: (m[0],))
        wanted = {m[0]: pick(m) for m in rows if m[0] <= top}
        if not wanted:
            continue
        width = len(columns) + 1
        held = {r[0]: r for r in bulk.rows_of(c, t.MIRRORS[entity], ("id",) + columns + (("row",) if keys else ()), list(wanted))}
        bad = []
        for row_id, mine in wanted.items():
            have = held.get(row_id)
            if have is None or tuple(have[:width]) != mine:
                bad.append(row_id)
            elif keys:
                stored = _row_dict(have[-1])
                pushed = upserts[entity][row_id]
                if any(_identity_value(k, pushed.get(k)) != _identity_value(k, stored.get(k)) for k in keys):
                    bad.append(row_id)
        if bad:
            found[entity] = sorted(bad)
    return found


def _row_dict(text: Any) -> Dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def issued_by(items: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """The highest id of each entity among a push's items (upserts and deletes; checked by :func:`apply_items`)."""
    out: Dict[str, int] = {}
    for item in items:
        if isinstance(item, dict) and type(item.get("id")) is int and item.get("entity") in t.MIRRORS:
            entity = str(item["entity"])
            out[entity] = max(out.get(entity, 0), int(item["id"]))
    return out


def _relink(c: Connection, jobs: Dict[int, Dict[str, Any]], mirrored: List[Tuple[Any, ...]], old: Dict[int, Any]) -> None:
    """Rewrite the tag and parent rows of the jobs that are new or whose tags or parents changed (``old``: the
    links digest each job had in the mirror before this push)."""
    changed = [(m[0], m[0] in old) for m in mirrored if old.get(m[0]) != m[_LINKS]]
    if not changed:
        return
    again = [row_id for row_id, existed in changed if existed]
    if again:
        bulk.delete_ids(c, t.job_tag, "job_id", again)
        bulk.delete_ids(c, t.job_parent, "child_id", again)
    tags: Dict[Tuple[str, str, int], None] = {}
    parents: Dict[Tuple[int, int], None] = {}
    for row_id, _ in changed:
        row = jobs[row_id]
        tag_map, parent_ids = _links(row.get("tags"), row.get("parent_ids"))
        for k, v in tag_map.items():
            tags[(_text(k, 255), _text(v, 255), row_id)] = None
        for p in parent_ids:
            parents[(p, row_id)] = None
    bulk.insert(c, t.job_tag, ("key", "value", "job_id"), list(tags))
    bulk.insert(c, t.job_parent, ("parent_id", "child_id"), list(parents))


# --------------------------------------------------------------------------------------------- queries
Clause = Any
FilterFn = Callable[[sa.Table, Any], Clause]


def _list(v: Any) -> List[Any]:
    return list(v) if isinstance(v, (list, tuple, set, frozenset)) else [v]


def _ints(name: str, v: Any) -> List[int]:
    """Integer filter values read as a site reads them (:func:`balsam.db.query.as_int`). A row's own id past 64 bits
    names no row and matches none; any other integer past 64 bits is refused by name. (Before, either reached the
    database, which cannot bind it: a 503 and a logged traceback.)"""
    from balsam.db.query import as_int

    values = [as_int(name, x if isinstance(x, (int, str)) else getattr(x, "id", x), "an integer id", bounded=name != "id")
              for x in _list(v)]
    return [i for i in values if _MIN_INT <= i < _MAX_INT]


def _return_code(table: sa.Table, v: Any) -> Clause:
    from balsam.db.query import as_int

    return table.c.return_code.is_(None) if v is None else table.c.return_code == as_int("return_code", v)


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


def _workdir_contains(table: sa.Table, value: str) -> Clause:
    """Jobs whose workdir holds ``value``: the ids found through an index of workdirs (PostgreSQL's trigram
    index, or a scan of the narrow ``(workdir, id)`` index instead of the wide rows; revision 0004)."""
    w = table.alias("w")
    return table.c.id.in_(sa.select(w.c.id).where(w.c.workdir.contains(value, autoescape=True)))


JOB_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "app_id": lambda tb, v: tb.c.app_id.in_(_ints("app_id", v)),
    "app_name": lambda tb, v: tb.c.app_id.in_(sa.select(t.app.c.id).where(t.app.c.name.in_([str(x) for x in _list(v)]))),
    "batch_job_id": lambda tb, v: tb.c.batch_job_id.in_(_ints("batch_job_id", v)),
    "parent_id": lambda tb, v: tb.c.id.in_(sa.select(t.job_parent.c.child_id).where(t.job_parent.c.parent_id.in_(_ints("parent_id", v)))),
    "state": lambda tb, v: tb.c.state.in_(_states(v)),
    "state__ne": lambda tb, v: tb.c.state.notin_(_states(v)),
    "workdir": lambda tb, v: tb.c.workdir.in_([str(x) for x in _list(v)]),
    "workdir__contains": lambda tb, v: _workdir_contains(tb, str(v)),
    "tags": _tag_clause,
    "return_code": _return_code,
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
    "class_path": lambda tb, v: tb.c.name.in_([str(x).rsplit(".", 1)[-1] for x in _list(v)]),  # 0.7's "module.ClassName"
}
TRANSFER_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "job_id": lambda tb, v: tb.c.job_id.in_(_ints("job_id", v)),
    "state": lambda tb, v: tb.c.state.in_([str(x) for x in _list(v)]),
    "direction": lambda tb, v: tb.c.direction.in_([str(x) for x in _list(v)]),
    "tags": lambda tb, v: _tag_clause(tb, v, "job_id"),
}
DAG_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "name": lambda tb, v: tb.c.name.in_([str(x) for x in _list(v)]),
}
DAG_INSTANCE_FILTERS: Dict[str, FilterFn] = {
    "id": lambda tb, v: tb.c.id.in_(_ints("id", v)),
    "dag_id": lambda tb, v: tb.c.dag_id.in_(_ints("dag_id", v)),
}


def _time_comparison(col: str, lookup: str) -> FilterFn:
    """``col__gt/gte/lt/lte`` (the Django ORM's spelling), to the microsecond as at a site (balsam.db.query.compare)."""
    from balsam.db.query import TIME_RESOLUTION_S

    slack = TIME_RESOLUTION_S if lookup in ("gt", "lte") else -TIME_RESOLUTION_S
    op = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}[lookup]
    return lambda tb, v: getattr(tb.c[col], op)(_ts(v) + slack)  # type: ignore[no-any-return]


for _known in (JOB_FILTERS, EVENT_FILTERS, BATCH_JOB_FILTERS):
    for _name in [n for n in _known if n.endswith(("_after", "_before"))]:
        _col, _, _side = _name.rpartition("_")
        _known.update({f"{_col}__{op}": _time_comparison(_col, op) for op in {"after": ("gt", "gte"), "before": ("lt", "lte")}[_side]})

FILTERS = {"job": JOB_FILTERS, "event": EVENT_FILTERS, "batch_job": BATCH_JOB_FILTERS, "app": APP_FILTERS,
           "transfer_item": TRANSFER_FILTERS, "dag": DAG_FILTERS, "dag_instance": DAG_INSTANCE_FILTERS}
DEFAULT_ORDER = {"event": ("-timestamp",)}


def where(table_name: str, site_ids: Sequence[int], filters: Dict[str, Any]) -> Tuple[sa.Table, Clause]:
    """The mirror table and the WHERE clause for Balsam filter keywords, restricted to ``site_ids``."""
    table, clause = _filtered(table_name, filters)
    return table, sa.and_(table.c.site_id.in_([int(s) for s in site_ids]), clause)


def _filtered(table_name: str, filters: Dict[str, Any]) -> Tuple[sa.Table, Clause]:
    table = t.MIRRORS.get(table_name)
    if table is None:
        raise ValidationError(f"the relay has no {table_name} rows")
    known = FILTERS[table_name]
    clauses = []
    for key, value in filters.items():
        fn = known.get(key)
        if fn is None:
            raise ValidationError(f"unknown {table_name} filter {key!r} (known: {', '.join(sorted(known))})")
        clauses.append(fn(table, _storable(value)))
    return table, sa.and_(sa.true(), *clauses)


def _storable(value: Any) -> Any:
    """A filter value as the databases can bind it: text with a NUL or a lone surrogate (which PostgreSQL refuses, and
    which no stored value holds) as :func:`_text` stores such text, so it matches nothing instead of failing."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    return value


def _one_site(table: sa.Table, site_id: int, by_state: bool) -> Clause:
    """One site's rows as its range of row ids (a site's rows are the ids ``site_id << 32 ...``), which the
    primary key walks in id order; with a state or last-update filter, or jobs by last update, also by
    ``site_id``, so that the ``(site_id, state, id)`` or ``(site_id, last_update, id)`` index serves it. (``site_id``
    alone would pick an index and sort the site's rows.)"""
    low = int(site_id) << LOCAL_BITS
    ids = sa.and_(table.c.id >= low, table.c.id < low + (1 << LOCAL_BITS))
    return sa.and_(table.c.site_id == int(site_id), ids) if by_state and "state" in table.c else ids


_BY_SITE_FILTERS = frozenset({"state", "last_update_before", "last_update_after"})
"""Filters a ``(site_id, <column>, id)`` index serves (jobs: state, last update) once the site is named."""


def _by_site(table_name: str, filters: Dict[str, Any], order_by: Sequence[str]) -> bool:
    """Whether a site's part is best found through a ``(site_id, ...)`` index (see :func:`_one_site`)."""
    return bool(_BY_SITE_FILTERS & filters.keys()) or (table_name == "job" and bool(order_by) and order_by[0].lstrip("-") == "last_update")


DRIVING_FILTERS = frozenset({"id", "tags", "parent_id", "job_id"})
"""Filters that name few rows through their own index: a query with one is best left whole."""


def order_clauses(table: sa.Table, table_name: str, order_by: Sequence[str]) -> List[Any]:
    out = []
    for field in order_by or DEFAULT_ORDER.get(table_name, ("id",)):
        desc = field.startswith("-")
        name = field.lstrip("-")
        if name not in table.c:
            raise ValidationError(f"cannot order {table_name} by {name!r}")
        out.append(table.c[name].desc() if desc else table.c[name].asc())
    if not any(f.lstrip("-") == "id" for f in order_by or ()):  # ties by id, in the last key's direction (as at a site)
        out.append(table.c.id.desc() if order_by and order_by[-1].startswith("-") else table.c.id.asc())
    return out


def to_columns(table_name: str, mapping: Dict[str, Any], columns: Sequence[str]) -> Tuple[Any, ...]:
    """A mirror row as a tuple of the store's columns (typed columns first, then the pushed row)."""
    row = json.loads(mapping["row"]) if "row" in mapping and mapping["row"] else {}
    out = []
    for col in columns:
        if col in mapping and col != "row":
            value = mapping[col]
            if type(value) is str and len(value) in _WIDTHS:  # perhaps cut to its column's width: the row has it whole
                whole = row.get(col)
                if type(whole) is str and whole.startswith(value):
                    value = whole
            out.append(value)
        else:
            out.append(row.get(col))
    return tuple(out)


def select(c: Connection, table_name: str, site_ids: Sequence[int], filters: Dict[str, Any], columns: Sequence[str],
           order_by: Sequence[str] = (), limit: Optional[int] = None, offset: int = 0) -> List[Tuple[Any, ...]]:
    """Rows of ``columns`` matching the filters, ordered and paged.

    A page in id order (the default) reads the sites one after the other (:func:`_walk_sites`). A page in
    another order of a user's many sites is found with one query per site, merged (``UNION ALL``): each site's part
    walks an index in the page's order (its id range of the primary key, or ``(site_id, state, id)``) and stops
    after ``offset + limit`` ids, where one query over ``site_id IN (...)`` would sort every row of every site
    first (a second, not milliseconds, over a million jobs). The parts carry ids and sort keys only; the page's
    rows are then read by id."""
    table, clause = _filtered(table_name, filters)
    order = order_clauses(table, table_name, order_by)
    sites = sorted({int(s) for s in site_ids})
    by_state = _by_site(table_name, filters, order_by)
    if limit is None or DRIVING_FILTERS & filters.keys() or not sites:
        stmt = sa.select(table).where(table.c.site_id.in_(sites), clause).order_by(*order)
    elif len(sites) == 1:
        stmt = sa.select(table).where(_one_site(table, sites[0], by_state), clause).order_by(*order)
    else:
        fields = tuple(order_by or DEFAULT_ORDER.get(table_name, ("id",)))
        if fields in (("id",), ("-id",)):
            ids = _walk_sites(c, table, clause, sites, by_state, fields == ("-id",), int(limit), int(offset))
            stmt = sa.select(table).where(table.c.id.in_(ids)).order_by(*order)
            return [to_columns(table_name, dict(r._mapping), columns) for r in c.execute(stmt)]
        keys = [table.c.id] + [table.c[f.lstrip("-")] for f in fields if f.lstrip("-") != "id"]
        k = int(limit) + int(offset)
        parts = [sa.select(sa.select(*keys).where(_one_site(table, s, by_state), clause).order_by(*order).limit(k).subquery(f"s{i}"))
                 for i, s in enumerate(sites)]
        merged = sa.union_all(*parts).subquery("page")
        page = sa.select(merged.c.id).order_by(*order_clauses(merged, table_name, order_by)).limit(int(limit))  # type: ignore[arg-type]
        if offset:
            page = page.offset(int(offset))
        stmt = sa.select(table).where(table.c.id.in_(page)).order_by(*order)
        return [to_columns(table_name, dict(r._mapping), columns) for r in c.execute(stmt)]
    if limit is not None:
        stmt = stmt.limit(int(limit))
    if offset:
        stmt = stmt.offset(int(offset))
    return [to_columns(table_name, dict(r._mapping), columns) for r in c.execute(stmt)]


def _walk_sites(c: Connection, table: sa.Table, clause: Clause, sites: List[int], by_state: bool, descending: bool, limit: int,
                offset: int) -> List[int]:
    """The ids of a page in id order. Every id of a site sorts before every id of the next site (the site id is
    the high bits), so the sites are read one after the other, each through its own id range and only as far as
    the page needs: the first page of the first site with jobs is one short index walk."""
    skip, need, out = offset, limit, []
    for site in reversed(sites) if descending else sites:
        got = [int(r[0]) for r in c.execute(sa.select(table.c.id).where(_one_site(table, site, by_state), clause)
                                             .order_by(table.c.id.desc() if descending else table.c.id.asc()).limit(skip + need))]
        if len(got) <= skip:
            skip -= len(got)
            continue
        taken = got[skip:skip + need]
        out.extend(taken)
        need -= len(taken)
        skip = 0
        if need == 0:
            break
    return out


def _job_counts(c: Connection, site_ids: Sequence[int], states: Optional[List[str]] = None) -> Dict[str, int]:
    """Jobs by state of ``site_ids`` from the count table (a few rows per site, whatever the number of jobs)."""
    jc = t.job_count
    q = sa.select(jc.c.state, sa.func.sum(jc.c.n)).where(jc.c.site_id.in_([int(s) for s in site_ids]), jc.c.n > 0)
    if states is not None:
        q = q.where(jc.c.state.in_(states))
    return {str(state): int(n) for state, n in c.execute(q.group_by(jc.c.state)) if n}


def count(c: Connection, table_name: str, site_ids: Sequence[int], filters: Dict[str, Any]) -> int:
    if table_name == "job" and filters.keys() <= {"state"}:
        return sum(_job_counts(c, site_ids, _states(filters["state"]) if "state" in filters else None).values())
    table, clause = where(table_name, site_ids, filters)
    return int(c.execute(sa.select(sa.func.count()).select_from(table).where(clause)).scalar_one())


def count_by(c: Connection, table_name: str, site_ids: Sequence[int], filters: Dict[str, Any], column: str) -> Dict[Any, int]:
    table, clause = where(table_name, site_ids, filters)
    if column not in table.c or column == "row":
        raise ValidationError(f"cannot group {table_name} by {column!r}")
    if table_name == "job" and column == "state" and filters.keys() <= {"state"}:
        return dict(_job_counts(c, site_ids, _states(filters["state"]) if "state" in filters else None))
    # Grouped by site first: each site's rows come out of the (site_id, state, id) index already in order, so
    # nothing is sorted; the sites' counts are added up here.
    out: Dict[Any, int] = {}
    for value, n in c.execute(sa.select(table.c[column], sa.func.count()).where(clause).group_by(table.c.site_id, table.c[column])):
        out[value] = out.get(value, 0) + int(n)
    return out


def events_since(c: Connection, site_id: int, after: Optional[int], limit: int) -> Tuple[int, List[Tuple[Any, ...]]]:
    """A site's events with ids above ``after``, oldest first (a site's event ids grow in the order it pushes them;
    its range of ids is walked through the primary key); ``after`` None: none, just the newest id. Returns (the
    last id, rows of id, job_id, timestamp, from_state, to_state)."""
    from balsam.db.ids import LOCAL_BITS

    ev = t.event
    low, high = int(site_id) << LOCAL_BITS, (int(site_id) + 1) << LOCAL_BITS
    if after is None:
        top = c.execute(sa.select(sa.func.max(ev.c.id)).where(ev.c.id >= low, ev.c.id < high)).scalar_one_or_none()
        return (int(top) if top is not None else low), []
    rows = [tuple(r) for r in c.execute(sa.select(ev.c.id, ev.c.job_id, ev.c.timestamp, ev.c.from_state, ev.c.to_state)
                                        .where(ev.c.id > max(int(after), low - 1), ev.c.id < high).order_by(ev.c.id).limit(limit))]
    return (int(rows[-1][0]) if rows else int(after)), rows


# --------------------------------------------------------------------------------------------- DAGs
def dags(c: Connection, site_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """The DAG templates of ``site_ids`` as their sites stored them, with ``num_instances``, by name."""
    inst = sa.select(sa.func.count()).select_from(t.dag_instance).where(t.dag_instance.c.dag_id == t.dag.c.id).scalar_subquery()
    rows = c.execute(sa.select(t.dag.c.row, inst).where(t.dag.c.site_id.in_([int(s) for s in site_ids]))
                     .order_by(t.dag.c.name, t.dag.c.id))
    out = []
    for text, n in rows:
        d = json.loads(text)
        d["spec"] = json.loads(d["spec"]) if isinstance(d.get("spec"), str) else d.get("spec")
        d["num_instances"] = int(n)
        out.append(d)
    return out


def _instance_has_state(states: Sequence[str]) -> Clause:
    """An instance with at least one job in ``states`` (its jobs carry the tag dag_instance=<id>)."""
    as_text = sa.cast(t.dag_instance.c.id, sa.String)
    return sa.exists(sa.select(1).select_from(t.job_tag.join(t.job, t.job.c.id == t.job_tag.c.job_id))
                     .where(t.job_tag.c.key == "dag_instance", t.job_tag.c.value == as_text, t.job.c.state.in_(_states(states))))


def dag_instances(c: Connection, site_ids: Sequence[int], dag_id: int, ids: Optional[Sequence[int]], states: Optional[Sequence[str]],
                  limit: Optional[int], offset: int) -> List[Dict[str, Any]]:
    """A DAG's instances in id order (none for a DAG of a site not in ``site_ids``)."""
    di = t.dag_instance
    q = sa.select(di.c.id, di.c.dag_id, di.c.row, di.c.created).where(
        di.c.dag_id == int(dag_id), di.c.site_id.in_([int(s) for s in site_ids])).order_by(di.c.id)
    if ids is not None:
        q = q.where(di.c.id.in_([int(i) for i in ids]))
    if states:
        q = q.where(_instance_has_state(states))
    if limit is not None:
        q = q.limit(int(limit)).offset(int(offset))
    elif offset:
        q = q.offset(int(offset))
    out = []
    for inst_id, d_id, text, created in c.execute(q):
        params = json.loads(text).get("params")
        out.append({"id": int(inst_id), "dag_id": int(d_id), "params": json.loads(params) if isinstance(params, str) else params,
                    "created": created})
    return out


def dag_counts(c: Connection, site_ids: Sequence[int], instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
    """Jobs by state of each instance (through the relay's tag index); instances of other sites count nothing."""
    mine = [int(i) for i in instance_ids if site_of(int(i)) in set(int(s) for s in site_ids)]
    out: Dict[int, Dict[str, int]] = {int(i): {} for i in instance_ids}
    for start in range(0, len(mine), 10_000):
        chunk = [str(i) for i in mine[start:start + 10_000]]
        rows = c.execute(sa.select(t.job_tag.c.value, t.job.c.state, sa.func.count())
                         .select_from(t.job_tag.join(t.job, t.job.c.id == t.job_tag.c.job_id))
                         .where(t.job_tag.c.key == "dag_instance", t.job_tag.c.value.in_(chunk))
                         .group_by(t.job_tag.c.value, t.job.c.state))
        for value, state, n in rows:
            out.setdefault(int(value), {})[str(state)] = int(n)
    return out
