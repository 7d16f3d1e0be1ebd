"""DAG templates and their instances in the site DB (the SQL side of :mod:`balsam._api.dag`).

A DAG template is stored as one JSON document (``dag.spec``): its nodes, each with an app name, templated
workdir, parameters, tags and resources, and the names of its parents. An instance is one row in
``dag_instance`` holding the values its placeholders were filled with; its jobs carry the tags
``dag=<name>`` and ``dag_instance=<id>``, so every job query and tool works on them through the tag index.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from balsam.db import dag_templates as tpl
from balsam.db.codec import dumps, loads
from balsam.exceptions import ObjectDoesNotExist, ValidationError

DAG_COLUMNS = ("id", "name", "description", "spec", "created", "last_update", "version")
INSTANCE_COLUMNS = ("id", "dag_id", "params", "created")


def _dag_row(row: Sequence[Any]) -> Dict[str, Any]:
    out = dict(zip(DAG_COLUMNS, row))
    out["spec"] = loads(out["spec"])
    return out


def save_dag(conn: sqlite3.Connection, name: str, description: str, spec: Dict[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    """Create the DAG ``name`` or replace its template (its version goes up); returns the stored row.

    The template is checked first: nodes, parents (no cycle), placeholders, and every app known at this site."""
    name = check_name(name)
    if not isinstance(description, str) or len(description) > 10_000:
        raise ValidationError("a DAG description is text of at most 10,000 characters")
    nodes = tpl.parse_spec(name, spec)
    apps = _apps(conn, {n.app for n in nodes})
    for n in nodes:
        if n.app not in apps:
            raise ValidationError(f"DAG {name!r} node {n.name!r}: no app {n.app!r} at this site; sync it first")
    now = time.time() if now is None else now
    text = dumps({"nodes": [n.to_dict() for n in nodes], "placeholders": sorted(tpl.placeholders(nodes))})
    conn.execute(
        "INSERT INTO dag(name, description, spec, created, last_update) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET description=excluded.description, spec=excluded.spec, "
        "last_update=excluded.last_update, version=dag.version + 1",
        (name, description, text, now, now),
    )
    return get_dag(conn, name=name)


def get_dag(conn: sqlite3.Connection, *, name: Optional[str] = None, dag_id: Optional[int] = None) -> Dict[str, Any]:
    """One DAG by name or id; NotFound names what was asked for."""
    if name is not None:
        row = conn.execute(f"SELECT {', '.join(DAG_COLUMNS)} FROM dag WHERE name = ?", (name,)).fetchone()
    else:
        row = conn.execute(f"SELECT {', '.join(DAG_COLUMNS)} FROM dag WHERE id = ?", (dag_id,)).fetchone()
    if row is None:
        raise ObjectDoesNotExist(f"no DAG named {name!r} at this site" if name is not None else f"no DAG with id {dag_id} at this site")
    return _dag_row(row)


def list_dags(conn: sqlite3.Connection) -> List[Dict[str, Any]]:
    """Every DAG of the site, with its instance count, by name."""
    rows = conn.execute(
        f"SELECT {', '.join('d.' + c for c in DAG_COLUMNS)}, (SELECT count(*) FROM dag_instance i WHERE i.dag_id = d.id) "
        "FROM dag d ORDER BY d.name"
    ).fetchall()
    out = []
    for row in rows:
        d = _dag_row(row[:-1])
        d["num_instances"] = row[-1]
        out.append(d)
    return out


def _apps(conn: sqlite3.Connection, names: Any) -> Dict[str, Tuple[int, Dict[str, Any], bool]]:
    """{app name: (id, parameter spec, takes **kwargs)} for the named apps that exist (names or ids as text)."""
    keys = sorted({str(n) for n in names})
    rows = conn.execute("SELECT id, name, parameters, var_keyword FROM app WHERE name IN (SELECT value FROM json_each(?)) "
                        "OR CAST(id AS TEXT) IN (SELECT value FROM json_each(?))", (dumps(keys), dumps(keys))).fetchall()
    out: Dict[str, Tuple[int, Dict[str, Any], bool]] = {}
    for app_id, app_name, params, var_kw in rows:
        entry = (int(app_id), loads(params), bool(var_kw))
        out[app_name] = entry
        out[str(app_id)] = entry
    return out


def instantiate(conn: sqlite3.Connection, name: str, records: Sequence[Any], now: Optional[float] = None,
                progress: Optional[Any] = None) -> List[int]:
    """Create one instance of the DAG per record of placeholder values, level by level with parents resolved,
    inside the caller's transaction; returns the instance ids. Every placeholder and parameter error is raised
    before anything is written; anything refused later (a duplicate workdir) rolls the whole call back."""
    from balsam.db import jobs as job_db

    dag = get_dag(conn, name=name)
    nodes = tpl.parse_spec(dag["name"], dag["spec"])
    names = tpl.placeholders(nodes)
    checked = [tpl.check_record(dag["name"], r, i, names) for i, r in enumerate(records)]
    fills = [tpl.filled(dag["name"], nodes, r, i) for i, r in enumerate(checked)]
    if not checked:
        return []
    apps = _apps(conn, {n.app for n in nodes})
    for n in nodes:
        if n.app not in apps:
            raise ValidationError(f"DAG {dag['name']!r} node {n.name!r}: no app {n.app!r} at this site; sync it first")
    now = time.time() if now is None else now
    inst_ids = insert_instances(conn, int(dag["id"]), checked, now)
    ids: List[Dict[str, int]] = [{} for _ in checked]
    made = 0
    for level in tpl.levels(nodes, dag["name"]):
        rows: List[Tuple[Any, ...]] = []
        owners: List[Tuple[int, str]] = []
        for i, (inst_id, fields) in enumerate(zip(inst_ids, fills)):
            for n in level:
                f = fields[n.name]
                app_id, spec, var_kw = apps[n.app]
                where = f"DAG {dag['name']!r} instance {i} node {n.name!r}"
                params = f["params"]
                missing = sorted(k for k, v in spec.items() if v.get("required") and k not in params)
                if missing:
                    raise ValidationError(f"{where}: app {n.app} needs parameter {missing[0]!r}")
                if not var_kw:
                    unknown = sorted(set(params) - set(spec))
                    if unknown:
                        raise ValidationError(f"{where}: app {n.app} has no parameter {unknown[0]!r}")
                tags = dict(f["tags"])
                tags.update(dag=dag["name"], dag_instance=str(inst_id), dag_node=n.name)
                res = dict(f["resources"])
                extra = {k: res.pop(k) for k in ("launch_params", "data") if k in res}
                try:
                    rows.append(job_db.new_job_row(f["workdir"], app_id, tags=tags, parameters=params,
                                                   parent_ids=[ids[i][p] for p in n.parents], **extra, **res))
                except (TypeError, ValueError) as exc:
                    raise ValidationError(f"{where}: {exc}") from None
                owners.append((i, n.name))
        first, _states = job_db.insert_jobs(conn, rows, None, now=now)
        for k, (i, node_name) in enumerate(owners):
            ids[i][node_name] = first + k
        made += len(rows)
        if progress is not None:
            progress(made)
    return inst_ids


def retry_instance(conn: sqlite3.Connection, instance_id: int) -> int:
    """Run an instance's failed and killed jobs again: those whose parents finished go back to READY, the rest
    wait for their parents again (AWAITING_PARENTS). Returns how many jobs were reset."""
    from balsam.db import jobs as job_db
    from balsam.db.jobs import StateChange

    runnable, waiting = failed_split(conn, instance_job_ids(conn, instance_id))
    message = {"message": f"retry of DAG instance {instance_id}"}
    changes = [StateChange(i, "READY", data=message) for i in runnable]
    changes += [StateChange(i, "AWAITING_PARENTS", data=message) for i in waiting]
    if changes:
        job_db.apply_state_changes(conn, changes, strict=True)
    return len(changes)


def delete_dag(conn: sqlite3.Connection, name: str) -> int:
    """Forget a DAG template and its instance records (their jobs stay); returns 1 if it existed."""
    dag = get_dag(conn, name=name)
    conn.execute("DELETE FROM dag_instance WHERE dag_id = ?", (dag["id"],))
    return conn.execute("DELETE FROM dag WHERE id = ?", (dag["id"],)).rowcount


def insert_instances(conn: sqlite3.Connection, dag_id: int, records: Sequence[Dict[str, Any]], now: Optional[float] = None) -> List[int]:
    """Record one instance per placeholder record; returns their ids in order (consecutive)."""
    now = time.time() if now is None else now
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='dag_instance'").fetchone()
    top = conn.execute("SELECT max(id) FROM dag_instance").fetchone()[0] or 0
    first = max(seq[0] if seq else 0, top) + 1
    conn.executemany(
        "INSERT INTO dag_instance(id, dag_id, params, created) VALUES (?, ?, ?, ?)",
        [(first + i, dag_id, dumps(r), now) for i, r in enumerate(records)],
    )
    return list(range(first, first + len(records)))


def instances(
    conn: sqlite3.Connection, dag_id: int, *, ids: Optional[Sequence[int]] = None, state: Optional[Sequence[str]] = None,
    limit: Optional[int] = None, offset: int = 0,
) -> List[Dict[str, Any]]:
    """Instances of a DAG in id order; ``state`` keeps those with at least one job in one of the states."""
    where = ["i.dag_id = ?"]
    params: List[Any] = [dag_id]
    if ids is not None:
        where.append("i.id IN (SELECT value FROM json_each(?))")
        params.append(dumps([int(x) for x in ids]))
    if state:
        where.append(
            "EXISTS (SELECT 1 FROM job_tag t JOIN job j ON j.id = t.job_id WHERE t.key = 'dag_instance' "
            "AND t.value = CAST(i.id AS TEXT) AND j.state IN (SELECT value FROM json_each(?)))"
        )
        params.append(dumps(list(state)))
    sql = f"SELECT {', '.join('i.' + c for c in INSTANCE_COLUMNS)} FROM dag_instance i WHERE {' AND '.join(where)} ORDER BY i.id"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [int(limit), int(offset)]
    out = []
    for row in conn.execute(sql, params):
        d = dict(zip(INSTANCE_COLUMNS, row))
        d["params"] = loads(d["params"])
        out.append(d)
    return out


def instance_job_ids(conn: sqlite3.Connection, instance_id: int) -> List[int]:
    """The ids of an instance's jobs (through the tag index)."""
    return [r[0] for r in conn.execute(
        "SELECT job_id FROM job_tag WHERE key = 'dag_instance' AND value = ? ORDER BY job_id", (str(int(instance_id)),))]


def instance_counts(conn: sqlite3.Connection, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
    """Counts of jobs by state for each instance."""
    out: Dict[int, Dict[str, int]] = {int(i): {} for i in instance_ids}
    rows = conn.execute(
        "SELECT CAST(t.value AS INTEGER), j.state, count(*) FROM job_tag t JOIN job j ON j.id = t.job_id "
        "WHERE t.key = 'dag_instance' AND t.value IN (SELECT CAST(value AS TEXT) FROM json_each(?)) GROUP BY 1, 2",
        (dumps([int(i) for i in instance_ids]),),
    )
    for inst, state, n in rows:
        out.setdefault(inst, {})[state] = n
    return out


def failed_split(conn: sqlite3.Connection, job_ids: Sequence[int]) -> Tuple[List[int], List[int]]:
    """Of failed or killed jobs: (those whose parents all finished, so they can run again; those waiting on a
    parent that has not finished, which must wait for it again)."""
    rows = conn.execute(
        "SELECT j.id, (SELECT count(*) FROM job_parent p JOIN job pj ON pj.id = p.parent_id "
        "WHERE p.child_id = j.id AND pj.state != 'JOB_FINISHED') FROM job j "
        "WHERE j.id IN (SELECT value FROM json_each(?)) AND j.state IN ('FAILED', 'USER_KILLED') ORDER BY j.id",
        (dumps([int(i) for i in job_ids]),),
    ).fetchall()
    return [r[0] for r in rows if not r[1]], [r[0] for r in rows if r[1]]


def check_name(name: Any) -> str:
    """A DAG name: a non-empty string of at most 200 printable characters without '/'."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "/" in name or not name.isprintable():
        raise ValidationError(f"a DAG name must be 1-200 printable characters without '/', got {name!r}")
    return name.strip()
