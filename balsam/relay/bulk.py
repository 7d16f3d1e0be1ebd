"""Bulk statements for the relay's mirrors: a push of thousands of rows costs a few statements, never one per row.

SQLite runs in this process, so ``executemany`` of plain tuples on the driver's own cursor is its bulk form (no
per-row SQLAlchemy parameter processing). PostgreSQL is a round trip away and plans each statement, so rows
travel by ``COPY`` (psycopg writes its rows in C) into a temporary staging table, and one ``INSERT ... SELECT``
merges them; measured here, 2.4x ``executemany`` (pipelined) and 5-8x ``unnest`` of arrays.

Rows are JSON text in the mirrors; :func:`dumps` writes it with orjson when installed (the relay extra pulls it
in; several times faster than the standard library), else with :mod:`json`.
"""

from __future__ import annotations

import json
import operator
from typing import Any, Callable, Dict, List, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - the relay extra installs orjson
    _orjson = None  # type: ignore[assignment]

CHUNK = 10_000
"""Ids per statement on SQLite (under its limit of host parameters)."""


def _std_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _orjson_dumps(value: Any) -> str:
    try:
        return _orjson.dumps(value).decode()  # type: ignore[no-any-return]
    except TypeError:  # a value orjson refuses (an integer past 64 bits): the standard library writes it
        return _std_dumps(value)


dumps: Callable[[Any], str] = _std_dumps if _orjson is None else _orjson_dumps
"""Compact JSON text of a pushed value."""



def _picker(indexes: Sequence[int]) -> Callable[[Sequence[Any]], Tuple[Any, ...]]:
    """A function answering the tuple of a row's values at ``indexes`` (a tuple even for one index)."""
    if len(indexes) == 1:
        i = indexes[0]
        return lambda row: (row[i],)
    if not indexes:
        return lambda row: ()
    return operator.itemgetter(*indexes)  # type: ignore[return-value]


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def upsert_sql(c: Connection, table: sa.Table, columns: Sequence[str]) -> str:
    """``INSERT ... ON CONFLICT (id) DO UPDATE`` of ``columns``, for ``executemany`` of plain tuples in the driver's
    own parameter style (SQLite and PostgreSQL share the syntax)."""
    mark = "?" if c.dialect.name == "sqlite" else "%s"
    return (f'INSERT INTO "{table.name}" ({_quoted(columns)}) VALUES ({", ".join([mark] * len(columns))}) '
            f"ON CONFLICT (\"id\") DO UPDATE SET {_sets(columns)}")


def _sets(columns: Sequence[str]) -> str:
    return ", ".join(f'"{k}" = excluded."{k}"' for k in columns if k != "id")


def _stage(c: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Tuple[Any, ...]]) -> str:
    """COPY ``rows`` into the connection's staging table for ``table`` (emptied at commit); its name."""
    stage = f"stage_{table.name}"
    c.exec_driver_sql(f'CREATE TEMPORARY TABLE IF NOT EXISTS "{stage}" (LIKE "{table.name}") ON COMMIT DELETE ROWS')
    cursor = c.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f'COPY "{stage}" ({_quoted(columns)}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
    finally:
        cursor.close()
    return stage


def upsert(c: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Tuple[Any, ...]],
           previous: Sequence[str] = (), stable: Sequence[str] = ()) -> Dict[int, Tuple[Any, ...]]:
    """Insert ``rows`` (tuples in ``columns`` order, ``id`` first, ids unique), replacing the rows that exist by
    id. With ``previous`` (column names), answers those columns' values before the write for each row that
    existed ({id: (value, ...)}, NULL text read as ""). Once per table per transaction.

    ``stable``: indexed columns that rarely change (a job's app, workdir, batch job). On SQLite, which rewrites
    an index whenever a statement sets one of its columns, whatever the value, the rows that exist with these
    columns unchanged are written by an ``UPDATE`` of the other columns: a job's state change rewrites the indexes
    on its state and time, not every index of the table."""
    old: Dict[int, Tuple[Any, ...]] = {}
    if not rows:
        return old
    wanted = ", ".join((f'coalesce(t."{p}", \'\')' if isinstance(table.c[p].type, sa.String) else f't."{p}"') + f' AS "p{i}"'
                       for i, p in enumerate(previous))
    if c.dialect.name != "postgresql":
        if previous or stable:
            read = ", ".join([f't."{p}"' for p in stable] + ([wanted] if previous else []))
            n = len(stable)
            key = _picker([columns.index(k) for k in stable])
            same: List[Tuple[Any, ...]] = []
            changed: List[Tuple[Any, ...]] = []
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                before = {r[0]: tuple(r[1:]) for r in c.exec_driver_sql(  # (fetched at once: not a fetch call per row)
                    f'SELECT t."id", {read} FROM "{table.name}" t WHERE t."id" IN (SELECT value FROM json_each(?))',
                    (_std_dumps([r[0] for r in chunk]),)).all()}
                for row in chunk:
                    got = before.get(row[0])
                    if got is None:
                        changed.append(row)
                        continue
                    old[row[0]] = got[n:]
                    (same if key(row) == got[:n] else changed).append(row)
            if same:
                hot = [i for i, name in enumerate(columns) if name != "id" and name not in stable]
                sets = ", ".join(f'"{columns[i]}" = ?' for i in hot)
                pick = _picker(hot + [0])
                c.exec_driver_sql(f'UPDATE "{table.name}" SET {sets} WHERE "id" = ?', [pick(row) for row in same])
            rows = changed
        if rows:
            c.exec_driver_sql(upsert_sql(c, table, columns), list(rows))
        return old
    stage = _stage(c, table, columns, rows)
    if previous:
        # One primary-key lookup per staged row: OFFSET 0 keeps the lateral subquery a subquery (PostgreSQL would
        # otherwise pull it up into a join, which the planner may answer with a walk of the whole table).
        found = c.exec_driver_sql(f'SELECT s."id", p.* FROM "{stage}" s CROSS JOIN LATERAL '
                                  f'(SELECT {wanted} FROM "{table.name}" t WHERE t."id" = s."id" OFFSET 0) p').all()
        old.update((r[0], tuple(r[1:])) for r in found)
    c.exec_driver_sql(f'INSERT INTO "{table.name}" ({_quoted(columns)}) SELECT {_quoted(columns)} FROM "{stage}" '
                      f'ON CONFLICT ("id") DO UPDATE SET {_sets(columns)}')
    return old


def add_counts(c: Connection, table: sa.Table, keys: Sequence[str], deltas: Sequence[Tuple[Any, ...]]) -> None:
    """Add to counters: ``deltas`` are tuples of ``keys`` values and then the amount, added to the row of those
    keys (created at the amount where missing). One statement for all of them."""
    if not deltas:
        return
    mark = "?" if c.dialect.name == "sqlite" else "%s"
    names = list(keys) + ["n"]
    c.exec_driver_sql(f'INSERT INTO "{table.name}" ({_quoted(names)}) VALUES ({", ".join([mark] * len(names))}) '
                      f'ON CONFLICT ({_quoted(keys)}) DO UPDATE SET "n" = "{table.name}"."n" + excluded."n"', list(deltas))


def values_of(c: Connection, table: sa.Table, column: str, ids: Sequence[int]) -> List[Any]:
    """``column`` of the rows of ``table`` whose ids are ``ids`` (those that exist; in no particular order)."""
    out: List[Any] = []
    if not ids:
        return out
    if c.dialect.name == "postgresql":
        return [r[0] for r in c.exec_driver_sql(f'SELECT "{column}" FROM "{table.name}" WHERE "id" = ANY(%s::int8[])', (list(ids),))]
    for start in range(0, len(ids), CHUNK):
        chunk = _std_dumps(list(ids[start:start + CHUNK]))
        out.extend(r[0] for r in c.exec_driver_sql(f'SELECT "{column}" FROM "{table.name}" WHERE "id" IN (SELECT value FROM json_each(?))',
                                                   (chunk,)))
    return out


def rows_of(c: Connection, table: sa.Table, columns: Sequence[str], ids: Sequence[int]) -> List[Sequence[Any]]:
    """``columns`` of the rows of ``table`` whose ids are ``ids`` (those that exist; in no particular order)."""
    out: List[Sequence[Any]] = []
    if not ids:
        return out
    names = _quoted(columns)
    if c.dialect.name == "postgresql":
        return list(c.exec_driver_sql(f'SELECT {names} FROM "{table.name}" WHERE "id" = ANY(%s::int8[])', (list(ids),)).all())
    for start in range(0, len(ids), CHUNK):  # (fetched at once: not a fetch call per row)
        chunk = _std_dumps(list(ids[start:start + CHUNK]))
        out.extend(c.exec_driver_sql(f'SELECT {names} FROM "{table.name}" WHERE "id" IN (SELECT value FROM json_each(?))', (chunk,)).all())
    return out


def insert(c: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Tuple[Any, ...]]) -> None:
    """Insert ``rows``, skipping any already there (link rows: tags and parents). Once per table per transaction."""
    if not rows:
        return
    if c.dialect.name != "postgresql":
        marks = ", ".join("?" * len(columns))
        c.exec_driver_sql(f'INSERT OR IGNORE INTO "{table.name}" ({_quoted(columns)}) VALUES ({marks})', list(rows))
        return
    stage = _stage(c, table, columns, rows)
    c.exec_driver_sql(f'INSERT INTO "{table.name}" ({_quoted(columns)}) SELECT {_quoted(columns)} FROM "{stage}" ON CONFLICT DO NOTHING')


def delete_ids(c: Connection, table: sa.Table, column: str, ids: Sequence[int]) -> None:
    """Delete the rows whose ``column`` is one of ``ids``."""
    if not ids:
        return
    if c.dialect.name == "postgresql":
        c.exec_driver_sql(f'DELETE FROM "{table.name}" WHERE "{column}" = ANY(%s::int8[])', (list(ids),))
        return
    for start in range(0, len(ids), CHUNK):
        chunk = list(ids[start:start + CHUNK])
        c.exec_driver_sql(f'DELETE FROM "{table.name}" WHERE "{column}" IN (SELECT value FROM json_each(?))', (_std_dumps(chunk),))
