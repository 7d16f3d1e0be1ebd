"""DAG templates instantiated many times (``balsam.api.DAG``).

::

    sweep = DAG("md-sweep", site="my-site")
    prep = sweep.node("prep", app=Prep, workdir="{run}/prep", params={"seed": "{seed}"})
    sims = [sweep.node(f"sim{k}", app=Simulate, workdir="{run}/sim{k}", params={"k": k, "temp": "{temp}"},
                       num_nodes=2, parents=[prep]) for k in range(4)]
    sweep.node("reduce", app=Reduce, workdir="{run}/reduce", parents=sims)
    sweep.save()
    runs = sweep.instantiate([{"run": f"r{i}", "seed": i, "temp": 300 + 5 * i} for i in range(1000)])
    runs[7].state()          # {"JOB_FINISHED": 6}

Placeholders are written ``{name}`` in workdirs, parameter values, tag values and resources (``{{`` is a
literal brace). A value that is exactly one placeholder takes the record's value as it is (a number stays a
number); anything else is text formatting. Every instance's jobs carry the tags ``dag=<name>``,
``dag_instance=<id>`` and ``dag_node=<node>``, so ``balsam job ls --tag dag_instance=7`` and every other tool
work on them. ``instantiate`` writes all instances in one transaction, parents resolved inside it.
"""

from __future__ import annotations

import keyword
import re
import string
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from balsam._api import sites as _sites
from balsam._api.jobs import Job, insert_job_group, resolve_app
from balsam.db import dags as dag_db
from balsam.db.states import DONE_STATES, JobState, to_states
from balsam.exceptions import ObjectDoesNotExist, ValidationError

if TYPE_CHECKING:
    from balsam._api.base import Query
    from balsam._api.sites import SiteRef

RESOURCE_FIELDS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
                   "node_packing_count", "wall_time_min", "launch_params", "data")
"""Job fields a node may set besides app, workdir, params, tags and parents (values may hold placeholders)."""
DAG_TAGS = ("dag", "dag_instance", "dag_node")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORMATTER = string.Formatter()
_DONE = frozenset(s.value for s in DONE_STATES)


class DAGDoesNotExist(ObjectDoesNotExist):
    """No DAG of that name at the site."""


# --------------------------------------------------------------------------------------------- placeholders
def _fields_of(text: str, where: str) -> List[str]:
    """The placeholder names in one template string; refuses anything but ``{identifier[:spec]}``."""
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise ValidationError(f"{where}: bad placeholder syntax in {text!r} ({exc}); write literal braces as '{{{{' and '}}}}'") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _NAME.match(name) or keyword.iskeyword(name):
            raise ValidationError(f"{where}: placeholder {{{name}}} in {text!r} must be a plain name (letters, digits, _)")
        if conversion:
            raise ValidationError(f"{where}: placeholder {{{name}!{conversion}}} in {text!r}: conversions are not supported")
        if spec and "{" in spec:
            raise ValidationError(f"{where}: placeholder {{{name}:{spec}}} in {text!r}: nested placeholders are not supported")
        names.append(name)
    return names


def _walk_fields(value: Any, where: str, out: Set[str]) -> None:
    if isinstance(value, str):
        out.update(_fields_of(value, where))
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk_fields(v, f"{where}[{k!r}]", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk_fields(v, f"{where}[{i}]", out)


def _fill(value: Any, record: Mapping[str, Any], where: str) -> Any:
    """``value`` with placeholders replaced from ``record`` (a lone placeholder keeps the value's type)."""
    if isinstance(value, str):
        if "{" not in value and "}" not in value:
            return value
        parsed = list(_FORMATTER.parse(value))
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] and not parsed[0][2]:
            return record[parsed[0][1]]
        try:
            return value.format_map(record)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{where}: cannot fill {value!r}: {exc}") from None
    if isinstance(value, dict):
        return {k: _fill(v, record, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fill(v, record, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


MAX_YAML_BYTES = 4 * 1024 * 1024


def load_yaml(path: Path) -> Any:
    """A YAML document, read safely: no tags beyond plain data, no anchors or aliases (so no "billion
    laughs"), at most 4 MiB; errors are one line naming the file."""
    import yaml

    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ValidationError(f"{path}: {size} bytes is too large for a DAG file (at most {MAX_YAML_BYTES})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {path}: {exc}") from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if getattr(event, "anchor", None) is not None or isinstance(event, yaml.AliasEvent):
                raise ValidationError(f"{path}: YAML anchors and aliases are not allowed in DAG files")
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------------------------- nodes
class DAGNode:
    """One job of a DAG template: an app, a templated workdir, parameters, tags, resources and parents."""

    def __init__(self, name: str, app: str, workdir: str, params: Dict[str, Any], tags: Dict[str, Any],
                 resources: Dict[str, Any], parents: Sequence[str]) -> None:
        self.name = name
        self.app = app
        self.workdir = workdir
        self.params = params
        self.tags = tags
        self.resources = resources
        self.parents = tuple(parents)

    def __repr__(self) -> str:
        return f"DAGNode({self.name!r}, app={self.app!r}, workdir={self.workdir!r}, parents={list(self.parents)})"

    def to_dict(self) -> Dict[str, Any]:
        """The node as stored in the template."""
        return {"name": self.name, "app": self.app, "workdir": self.workdir, "params": self.params, "tags": self.tags,
                "resources": self.resources, "parents": list(self.parents)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "node") -> "DAGNode":
        """A node from its stored (or YAML) form; unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ValidationError(f"{where}: a node must be a mapping, got {d!r}")
        known = {"name", "app", "workdir", "params", "parameters", "tags", "resources", "parents"} | set(RESOURCE_FIELDS)
        unknown = set(d) - known
        if unknown:
            raise ValidationError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
        resources = dict(d.get("resources") or {})
        resources.update({k: d[k] for k in RESOURCE_FIELDS if k in d})
        params = d.get("params", d.get("parameters")) or {}
        return _make_node(d.get("name"), d.get("app"), d.get("workdir"), params, d.get("tags") or {}, resources,
                          d.get("parents") or [], where)


def _make_node(name: Any, app: Any, workdir: Any, params: Any, tags: Any, resources: Dict[str, Any], parents: Any,
               where: str) -> DAGNode:
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise ValidationError(f"{where}: a node name must be 1-100 printable characters, got {name!r}")
    where = f"node {name!r}"
    if app is None:
        raise ValidationError(f"{where}: needs an app")
    if not isinstance(app, (str, int)):
        app_name = getattr(app, "__name__", None)
        if not isinstance(app_name, str):
            raise ValidationError(f"{where}: app must be an ApplicationDefinition class or an app name, got {app!r}")
        app = app_name
    if not isinstance(workdir, str) or not workdir:
        raise ValidationError(f"{where}: needs a workdir (a template such as '{{run}}/{name}')")
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ValidationError(f"{where}: params must be a dict with string keys, got {params!r}")
    if not isinstance(tags, dict):
        raise ValidationError(f"{where}: tags must be a dict, got {tags!r}")
    reserved = sorted(set(tags) & set(DAG_TAGS))
    if reserved:
        raise ValidationError(f"{where}: the tag {reserved[0]!r} is set by the DAG itself")
    unknown = sorted(set(resources) - set(RESOURCE_FIELDS))
    if unknown:
        raise ValidationError(f"{where}: unknown job field {unknown[0]!r} (known: {', '.join(RESOURCE_FIELDS)})")
    if isinstance(parents, (str, DAGNode)):
        parents = [parents]
    names = []
    for p in parents:
        pname = p.name if isinstance(p, DAGNode) else p
        if not isinstance(pname, str):
            raise ValidationError(f"{where}: parents must be nodes or node names, got {p!r}")
        names.append(pname)
    return DAGNode(name, str(app), workdir, dict(params), dict(tags), dict(resources), names)


def _levels(nodes: Sequence[DAGNode], dag_name: str) -> List[List[DAGNode]]:
    """Nodes grouped by depth (parents always in an earlier level); refuses unknown parents and cycles."""
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for p in n.parents:
            if p not in by_name:
                raise ValidationError(f"DAG {dag_name!r}: node {n.name!r} names an unknown parent {p!r}")
            if p == n.name:
                raise ValidationError(f"DAG {dag_name!r}: node {n.name!r} is its own parent")
    depth: Dict[str, int] = {}
    visiting: List[str] = []

    def visit(name: str) -> int:
        if name in depth:
            return depth[name]
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise ValidationError(f"DAG {dag_name!r} has a cycle: {' -> '.join(cycle)}")
        visiting.append(name)
        d = 1 + max((visit(p) for p in by_name[name].parents), default=-1)
        visiting.pop()
        depth[name] = d
        return d

    for n in nodes:
        visit(n.name)
    levels: List[List[DAGNode]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for n in nodes:
        levels[depth[n.name]].append(n)
    return levels


# --------------------------------------------------------------------------------------------- instances
class DAGInstance:
    """One instantiation of a DAG: its placeholder values and its jobs (tagged ``dag_instance=<id>``)."""

    def __init__(self, dag: "DAG", instance_id: int, params: Dict[str, Any], created: Optional[float] = None) -> None:
        self.dag = dag
        self.id = int(instance_id)
        self.params = params
        self.created = created

    def __repr__(self) -> str:
        return f"DAGInstance(dag={self.dag.name!r}, id={self.id}, params={self.params!r})"

    def jobs(self) -> "Query[Job]":
        """A query of this instance's jobs (filter, order and slice it like any job query)."""
        return Job.objects.filter(site_name=self.dag.site.name, tags={"dag_instance": str(self.id)})

    def state(self) -> Dict[str, int]:
        """Counts of this instance's jobs by state."""
        return self.dag._counts([self.id])[self.id]

    def done(self) -> bool:
        """True when every job of the instance is in a final state (finished, failed or killed)."""
        return all(s in _DONE for s in self.state())

    def failed(self) -> bool:
        """True when a job of the instance failed or was killed."""
        return any(s in ("FAILED", "USER_KILLED") for s in self.state())

    def wait(self, timeout: Optional[float] = None, poll_interval: float = 0.5) -> Dict[str, int]:
        """Wait until every job is final; returns the counts by state (TimeoutError after ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.state()
            if all(s in _DONE for s in counts):
                return counts
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"DAG {self.dag.name!r} instance {self.id} not done after {timeout} s: {counts}")
            time.sleep(poll_interval)

    def kill(self) -> int:
        """Kill the instance's jobs that are not final yet; returns how many."""
        pending = self.jobs().filter(state__ne=list(_DONE))
        return pending.update(state=JobState.USER_KILLED, state_data={"message": f"DAG instance {self.id} killed"})

    def retry_failed(self) -> int:
        """Run the instance's failed and killed jobs again: those whose parents finished go back to READY, the
        rest wait for their parents again (AWAITING_PARENTS). Returns how many jobs were reset."""
        site = self.dag.site
        with site.store.write() as conn:
            ids = dag_db.instance_job_ids(conn, self.id)
            runnable, waiting = dag_db.failed_split(conn, ids)
            from balsam.db import jobs as job_db
            from balsam.db.jobs import StateChange

            message = {"message": f"retry of DAG instance {self.id}"}
            changes = [StateChange(i, "READY", data=message) for i in runnable]
            changes += [StateChange(i, "AWAITING_PARENTS", data=message) for i in waiting]
            if changes:
                job_db.apply_state_changes(conn, changes, strict=True)
        return len(runnable) + len(waiting)


class InstanceQuery:
    """The instances of a DAG, optionally narrowed by the states of their jobs."""

    def __init__(self, dag: "DAG", states: Optional[Sequence[str]] = None, ids: Optional[Sequence[int]] = None) -> None:
        self._dag = dag
        self._states = states
        self._ids = ids

    def filter(self, state: Any = None, id: Any = None) -> "InstanceQuery":
        """Keep instances with at least one job in ``state`` (one or several), or with the given ids."""
        states = self._states if state is None else sorted(s.value for s in to_states(state))
        ids = self._ids if id is None else [int(i) for i in (id if isinstance(id, (list, tuple, set)) else [id])]
        return InstanceQuery(self._dag, states, ids)

    def _rows(self, limit: Optional[int] = None, offset: int = 0) -> List[DAGInstance]:
        dag = self._dag
        with dag.site.store.read() as conn:
            rows = dag_db.instances(conn, dag._require_id(), ids=self._ids, state=self._states, limit=limit, offset=offset)
        return [DAGInstance(dag, r["id"], r["params"], r["created"]) for r in rows]

    def __iter__(self) -> Iterator[DAGInstance]:
        return iter(self._rows())

    def __len__(self) -> int:
        return len(self._rows())

    def count(self) -> int:
        """How many instances match."""
        return len(self)

    def __getitem__(self, index: Union[int, slice]) -> Any:
        if isinstance(index, slice):
            if index.step not in (None, 1) or (index.start or 0) < 0 or (index.stop is not None and index.stop < 0):
                return self._rows()[index]
            lo = index.start or 0
            return self._rows(None if index.stop is None else max(index.stop - lo, 0), lo)
        if index < 0:
            return self._rows()[index]
        rows = self._rows(1, index)
        if not rows:
            raise IndexError(f"DAG {self._dag.name!r} has no instance at position {index}")
        return rows[0]

    def get(self, id: int) -> DAGInstance:
        """The instance with this id."""
        rows = self.filter(id=id)._rows()
        if not rows:
            raise DAGDoesNotExist(f"DAG {self._dag.name!r} has no instance {id}")
        return rows[0]

    def __repr__(self) -> str:
        return f"<InstanceQuery of DAG {self._dag.name!r}>"


# --------------------------------------------------------------------------------------------- the DAG
class DAG:
    """A prototype workflow: nodes (apps with templated workdirs, parameters and resources) and edges.

    ``save()`` stores it at the site; ``instantiate(records)`` creates one set of jobs per record of
    placeholder values, in one transaction.
    """

    objects: "DAGManager"
    DoesNotExist = DAGDoesNotExist

    def __init__(self, name: str, site: Any = None, description: str = "") -> None:
        self.name = dag_db.check_name(name)
        self.description = str(description or "")
        self._site_key = site
        self._site: Optional["SiteRef"] = None
        self._nodes: Dict[str, DAGNode] = {}
        self.id: Optional[int] = None
        self.version: Optional[int] = None

    def __repr__(self) -> str:
        return f"DAG({self.name!r}, nodes={len(self._nodes)}, placeholders={sorted(self.placeholders)})"

    @property
    def site(self) -> "SiteRef":
        """The site the DAG lives at."""
        if self._site is None:
            self._site = _sites.single_site(self._site_key, how="pass site= to DAG(...)")
        return self._site

    @property
    def nodes(self) -> List[DAGNode]:
        """The nodes, in the order they were added."""
        return list(self._nodes.values())

    def node(self, name: str, app: Any, workdir: str, params: Optional[Dict[str, Any]] = None,
             parents: Iterable[Union[DAGNode, str]] = (), tags: Optional[Dict[str, Any]] = None, **resources: Any) -> DAGNode:
        """Add a node: ``app`` (an ApplicationDefinition class or an app name), a ``workdir`` template,
        ``params`` (values may be placeholders such as ``"{seed}"``), ``parents`` (nodes or names),
        ``tags`` and job resources (num_nodes, ranks_per_node, gpus_per_rank, wall_time_min, ...)."""
        if name in self._nodes:
            raise ValidationError(f"DAG {self.name!r} already has a node {name!r}")
        node = _make_node(name, app, workdir, params or {}, tags or {}, resources, list(parents), "node")
        for p in node.parents:
            if p not in self._nodes:
                raise ValidationError(f"node {name!r}: parent {p!r} is not a node of DAG {self.name!r} (add parents first)")
        self._nodes[name] = node
        return node

    @property
    def edges(self) -> List[Tuple[str, str]]:
        """(parent, child) pairs."""
        return [(p, n.name) for n in self._nodes.values() for p in n.parents]

    @property
    def placeholders(self) -> Set[str]:
        """Every placeholder name the template uses."""
        out: Set[str] = set()
        for n in self._nodes.values():
            where = f"node {n.name!r}"
            _walk_fields(n.workdir, f"{where} workdir", out)
            _walk_fields(n.params, f"{where} params", out)
            _walk_fields(n.tags, f"{where} tags", out)
            _walk_fields(n.resources, f"{where} resources", out)
        return out

    def spec(self) -> Dict[str, Any]:
        """The template as stored: its nodes and placeholders."""
        return {"nodes": [n.to_dict() for n in self._nodes.values()], "placeholders": sorted(self.placeholders)}

    def validate(self) -> None:
        """Check the template without writing: nodes, placeholders, parents (no cycles) and apps at the site."""
        if not self._nodes:
            raise ValidationError(f"DAG {self.name!r} has no nodes")
        _levels(self.nodes, self.name)
        self.placeholders  # noqa: B018  (parses every template string)
        for n in self._nodes.values():
            try:
                resolve_app(n.app, self.site.name)
            except ValidationError as exc:
                raise ValidationError(f"DAG {self.name!r} node {n.name!r}: {exc}") from None
            if not self._uses_placeholder(n.workdir):
                raise ValidationError(
                    f"DAG {self.name!r} node {n.name!r}: workdir {n.workdir!r} uses no placeholder, so every instance "
                    "would share it (workdirs are unique): put one in, such as '{run}/" + n.name + "'")

    @staticmethod
    def _uses_placeholder(text: str) -> bool:
        return bool(_fields_of(text, "workdir"))

    def save(self) -> "DAG":
        """Store (or replace) the template at the site; refuses cycles, unknown parents and unknown apps."""
        self.validate()
        with self.site.store.write() as conn:
            row = dag_db.save_dag(conn, self.name, self.description, self.spec())
        self.id, self.version = row["id"], row["version"]
        return self

    def _require_id(self) -> int:
        if self.id is None:
            raise ValidationError(f"DAG {self.name!r} is not saved: call save() first")
        return self.id

    # ---------------------------------------------------------------- instantiation
    def _check_record(self, record: Any, index: int, names: Set[str]) -> Dict[str, Any]:
        if not isinstance(record, Mapping):
            raise ValidationError(f"DAG {self.name!r} instance {index}: placeholder values must be a mapping, got {record!r}")
        keys = set(record)
        missing = sorted(names - keys)
        if missing:
            raise ValidationError(f"DAG {self.name!r} instance {index}: no value for placeholder {missing[0]!r}")
        unknown = sorted(str(k) for k in keys - names)
        if unknown:
            known = ", ".join(sorted(names)) or "none"
            raise ValidationError(f"DAG {self.name!r} instance {index}: {unknown[0]!r} is not a placeholder (placeholders: {known})")
        return dict(record)

    def _filled(self, record: Dict[str, Any], index: int) -> Dict[str, Dict[str, Any]]:
        """Each node's job fields with this record's values."""
        out = {}
        for n in self._nodes.values():
            where = f"DAG {self.name!r} instance {index} node {n.name!r}"
            out[n.name] = {
                "workdir": _fill(n.workdir, record, where + " workdir"),
                "params": _fill(n.params, record, where + " params"),
                "tags": {k: str(v) for k, v in _fill(n.tags, record, where + " tags").items()},
                "resources": _fill(n.resources, record, where + " resources"),
            }
        return out

    def instantiate(self, records: Union[Mapping[str, Any], Iterable[Mapping[str, Any]]],
                    progress: Optional[Any] = None) -> List[DAGInstance]:
        """Create one instance per record of placeholder values, all in one transaction; returns them.

        A missing or unknown placeholder, a bad value or a duplicate workdir is one error, and nothing is
        written. ``progress`` (optional) is called with the number of jobs made so far."""
        if isinstance(records, Mapping):
            records = [records]
        records = list(records)
        self._require_id()
        names = self.placeholders
        checked = [self._check_record(r, i, names) for i, r in enumerate(records)]
        filled = [self._filled(r, i) for i, r in enumerate(checked)]  # every placeholder error before any write
        if not records:
            return []
        levels = _levels(self.nodes, self.name)
        site = self.site
        apps = {n.name: resolve_app(n.app, site.name) for n in self._nodes.values()}
        now = time.time()
        with site.store.write() as conn:
            inst_ids = dag_db.insert_instances(conn, self._require_id(), checked, now)
            ids: List[Dict[str, int]] = [{} for _ in records]
            made = 0
            for level in levels:
                jobs: List[Job] = []
                owners: List[Tuple[int, str]] = []
                for i, (inst_id, fields) in enumerate(zip(inst_ids, filled)):
                    for n in level:
                        f = fields[n.name]
                        tags = dict(f["tags"])
                        tags.update(dag=self.name, dag_instance=str(inst_id), dag_node=n.name)
                        try:
                            job = Job(workdir=f["workdir"], app_id=apps[n.name], parameters=f["params"],
                                      tags=tags, parent_ids=[ids[i][p] for p in n.parents], **f["resources"])
                        except TypeError as exc:
                            raise ValidationError(f"DAG {self.name!r} node {n.name!r}: {exc}") from None
                        jobs.append(job)
                        owners.append((i, n.name))
                insert_job_group(conn, jobs, now)
                for job, (i, name) in zip(jobs, owners):
                    ids[i][name] = int(job.id)
                made += len(jobs)
                if progress is not None:
                    progress(made)
        return [DAGInstance(self, inst_id, rec, now) for inst_id, rec in zip(inst_ids, checked)]

    def instances(self) -> InstanceQuery:
        """The DAG's instances (``.filter(state="FAILED")`` keeps those with a failed job)."""
        return InstanceQuery(self)

    def _counts(self, instance_ids: Sequence[int]) -> Dict[int, Dict[str, int]]:
        with self.site.store.read() as conn:
            return dag_db.instance_counts(conn, instance_ids)

    def status(self) -> Dict[str, Any]:
        """Counts of the DAG's jobs by state, and how many instances are done and failed."""
        with self.site.store.read() as conn:
            rows = dag_db.instances(conn, self._require_id())
            counts = dag_db.instance_counts(conn, [r["id"] for r in rows])
        total: Dict[str, int] = {}
        done = failed = 0
        for c in counts.values():
            for s, n in c.items():
                total[s] = total.get(s, 0) + n
            done += all(s in _DONE for s in c)
            failed += any(s in ("FAILED", "USER_KILLED") for s in c)
        return {"instances": len(rows), "done": done, "failed": failed, "jobs": total}

    # ---------------------------------------------------------------- text and YAML forms
    def show(self) -> str:
        """The graph as text: nodes (app, workdir, params, resources), edges and placeholders."""
        lines = [f"DAG {self.name}" + (f": {self.description}" if self.description else ""),
                 f"placeholders: {', '.join(sorted(self.placeholders)) or '(none)'}", "nodes:"]
        for level, nodes in enumerate(_levels(self.nodes, self.name)):
            for n in nodes:
                extra = "".join(f" {k}={v}" for k, v in n.resources.items())
                params = ", ".join(f"{k}={v!r}" for k, v in n.params.items())
                after = f"  after {', '.join(n.parents)}" if n.parents else ""
                lines.append(f"  [{level}] {n.name}: {n.app}({params}) in {n.workdir}{extra}{after}")
        edges = self.edges
        lines.append("edges:" + ("" if edges else " (none)"))
        lines.extend(f"  {p} -> {c}" for p, c in edges)
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, doc: Any, site: Any = None) -> "DAG":
        """A DAG from its YAML/JSON form: ``name``, optional ``description`` and ``site``, and ``nodes``: a list
        of mappings (or a mapping of node name -> mapping) with app, workdir, params, tags, resources, parents."""
        if not isinstance(doc, Mapping):
            raise ValidationError(f"a DAG document must be a mapping with 'name' and 'nodes', got {type(doc).__name__}")
        unknown = set(doc) - {"name", "description", "site", "nodes"}
        if unknown:
            raise ValidationError(f"unknown DAG key {sorted(unknown)[0]!r} (known: name, description, site, nodes)")
        name: Any = doc.get("name")
        dag = cls(name, site=site if site is not None else doc.get("site"), description=doc.get("description", ""))
        nodes = doc.get("nodes")
        if isinstance(nodes, Mapping):
            nodes = [{"name": k, **(v or {})} if isinstance(v, Mapping) or v is None else v for k, v in nodes.items()]
        if not isinstance(nodes, list) or not nodes:
            raise ValidationError(f"DAG {dag.name!r}: 'nodes' must be a non-empty list of node mappings")
        parsed = [DAGNode.from_dict(n, f"DAG {dag.name!r} node {i}") for i, n in enumerate(nodes)]
        for n in parsed:
            if n.name in dag._nodes:
                raise ValidationError(f"DAG {dag.name!r} has two nodes named {n.name!r}")
            dag._nodes[n.name] = n
        _levels(dag.nodes, dag.name)
        return dag

    @classmethod
    def from_yaml(cls, path: Union[str, Path], site: Any = None) -> "DAG":
        """A DAG from a YAML file (see :meth:`from_dict`); apps are named by their app names."""
        return cls.from_dict(load_yaml(Path(path)), site=site)

    @classmethod
    def _from_row(cls, site: "SiteRef", row: Dict[str, Any]) -> "DAG":
        dag = cls(row["name"], description=row["description"])
        dag._site = site
        dag.id, dag.version = row["id"], row["version"]
        for i, n in enumerate(row["spec"].get("nodes", [])):
            node = DAGNode.from_dict(n, f"stored DAG {row['name']!r} node {i}")
            dag._nodes[node.name] = node
        return dag


class DAGManager:
    """``DAG.objects``: the DAGs stored at the sites in scope."""

    def _sites(self, site: Any) -> List["SiteRef"]:
        return [_sites.resolve(site)] if site is not None else _sites.default_scope()

    def all(self, site: Any = None) -> List[DAG]:
        """Every DAG at the site (or the sites in scope), by name."""
        out: List[DAG] = []
        for s in self._sites(site):
            with s.store.read() as conn:
                out.extend(DAG._from_row(s, r) for r in dag_db.list_dags(conn))
        return out

    def filter(self, name: Any = None, site: Any = None) -> List[DAG]:
        """DAGs by name (one or several)."""
        names = None if name is None else ({name} if isinstance(name, str) else set(name))
        return [d for d in self.all(site) if names is None or d.name in names]

    def get(self, name: str, site: Any = None) -> DAG:
        """The DAG named ``name``; DAG.DoesNotExist when there is none, an error when several sites have one."""
        found = self.filter(name=name, site=site)
        if not found:
            raise DAGDoesNotExist(f"no DAG named {name!r}" + (f" at site {site}" if site is not None else " at the sites in scope"))
        if len(found) > 1:
            raise ValidationError(f"several sites have a DAG named {name!r}: pass site=")
        return found[0]

    def delete(self, name: str, site: Any = None) -> None:
        """Forget a DAG template and its instance records (the jobs stay)."""
        dag = self.get(name, site)
        with dag.site.store.write() as conn:
            dag_db.delete_dag(conn, name)


DAG.objects = DAGManager()
