"""DAG templates as data: placeholders, nodes, levels and the checks every door shares (no SQL here).

A template's nodes name an app, a workdir template, parameters, tags, job resources and parent nodes.
Placeholders are ``{name}`` (a plain identifier, optionally with a format spec) in workdirs, parameter values,
tag values and resources; ``{{`` is a literal brace. A value that is exactly one placeholder takes the record's
value as it is (a number stays a number); anything else is text formatting. Attribute and index access in
placeholders is refused, so filling a template runs no code.
"""

from __future__ import annotations

import keyword
import re
import stat
import string
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Set

from balsam import yamlsafe
from balsam.db.fields import check_json_dict
from balsam.exceptions import ValidationError

RESOURCE_FIELDS = ("num_nodes", "ranks_per_node", "threads_per_rank", "threads_per_core", "gpus_per_rank",
                   "node_packing_count", "wall_time_min", "launch_params", "data")
"""Job fields a node may set besides app, workdir, params, tags and parents (values may hold placeholders)."""
DAG_TAGS = ("dag", "dag_instance", "dag_node")
"""Tags every instance's jobs carry (set by the DAG, refused in a node's own tags)."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SPEC_NUMBERS = re.compile(r"\d+")
MAX_FORMAT_WIDTH = 1000
"""The widest width or precision a placeholder's format spec may ask for: ``{x:>2000000000}`` made a 2 GB string for
every instance (and ``.2000000000f`` as many digits), in the agent's memory."""
MAX_FILLED_CHARS = 1 << 20
"""The longest text one template string may fill to: ``"{x}" * 100000`` with a 1 MB value was 100 GB."""
_FORMATTER = string.Formatter()


def fields_of(text: str, where: str) -> List[str]:
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
        if spec and _spec_width(spec) > MAX_FORMAT_WIDTH:
            raise ValidationError(f"{where}: placeholder {{{name}:{spec[:40]}}} asks for a width or precision above {MAX_FORMAT_WIDTH}")
        names.append(name)
    return names


def _spec_width(spec: str) -> int:
    """The largest number in a format spec (its width or precision; a digit used as the fill character counts too,
    harmlessly)."""
    return max((int(n) for n in _SPEC_NUMBERS.findall(spec[:200])), default=0) if len(spec) <= 200 else MAX_FORMAT_WIDTH + 1


def walk_fields(value: Any, where: str, out: Set[str]) -> None:
    if isinstance(value, str):
        out.update(fields_of(value, where))
    elif isinstance(value, dict):
        for k, v in value.items():
            walk_fields(v, f"{where}[{k!r}]", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            walk_fields(v, f"{where}[{i}]", out)


def fill(value: Any, record: Mapping[str, Any], where: str) -> Any:
    """``value`` with placeholders replaced from ``record`` (a lone placeholder keeps the value's type)."""
    if isinstance(value, str):
        if "{" not in value and "}" not in value:
            return value
        parsed = list(_FORMATTER.parse(value))
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] and not parsed[0][2]:
            return record[parsed[0][1]]
        size = 0
        for literal, name, spec, _conversion in parsed:
            size += len(literal)
            if name is not None:
                size += max(len(str(record.get(name, ""))), _spec_width(spec or "")) + 16
        if size > MAX_FILLED_CHARS:
            raise ValidationError(f"{where}: {value[:40]!r}... would fill to about {size:,} characters (at most {MAX_FILLED_CHARS:,})")
        try:
            return value.format_map(record)
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"{where}: cannot fill {value!r}: {exc}") from None
    if isinstance(value, dict):
        return {k: fill(v, record, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fill(v, record, f"{where}[{i}]") for i, v in enumerate(value)]
    return value



MAX_NODES = 100_000
"""The most nodes a DAG template may have (checking one takes seconds at this size)."""
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 1_000_000
"""Most values a DAG file may expand to (it has no aliases: its size bounds this already; a bound all the same)."""


def load_yaml(path: Path) -> Any:
    """A YAML document, read safely: no tags beyond plain data, no anchors or aliases (so no "billion
    laughs"), at most 4 MiB; errors are one line naming the file."""
    import yaml

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # /dev/zero would be read forever
            raise ValidationError(f"{path}: not a regular file")
        size = info.st_size
        if size > MAX_YAML_BYTES:
            raise ValidationError(f"{path}: {size} bytes is too large for a DAG file (at most {MAX_YAML_BYTES})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {path}: {exc}") from None
    try:
        return yamlsafe.load(text, max_depth=MAX_YAML_DEPTH, max_values=MAX_YAML_VALUES, unique_keys=True, aliases=False)
    except yamlsafe.NoAliases:
        raise ValidationError(f"{path}: YAML anchors and aliases are not allowed in DAG files") from None
    except yamlsafe.Refused as exc:  # nested too deeply, a key given twice (a node copied and not renamed)
        raise ValidationError(f"{path} line {exc.line}: {exc.what}") from None
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
        return make_node(d.get("name"), d.get("app"), d.get("workdir"), params, d.get("tags") or {}, resources,
                          d.get("parents") or [], where)


def make_node(name: Any, app: Any, workdir: Any, params: Any, tags: Any, resources: Dict[str, Any], parents: Any,
               where: str) -> DAGNode:
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise ValidationError(f"{where}: a node name must be 1-100 printable characters, got {name!r}")
    where = f"node {name!r}"
    if app is None:
        raise ValidationError(f"{where}: needs an app")
    if not isinstance(app, (str, int)) or isinstance(app, bool):
        raise ValidationError(f"{where}: app must be an app name, got {app!r}")
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


def levels(nodes: Sequence[DAGNode], dag_name: str) -> List[List[DAGNode]]:
    """Nodes grouped by depth (parents always in an earlier level); refuses unknown parents and cycles."""
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for p in n.parents:
            if p not in by_name:
                raise ValidationError(f"DAG {dag_name!r}: node {n.name!r} names an unknown parent {p!r}")
            if p == n.name:
                raise ValidationError(f"DAG {dag_name!r}: node {n.name!r} is its own parent")
    depth: Dict[str, int] = {}
    on_path: Dict[str, int] = {}  # the names on the walk's current path, with their places on it
    for start in by_name:  # an explicit stack: a chain of 100,000 nodes is no deeper for Python than one of two
        if start in depth:
            continue
        path: List[str] = [start]
        on_path[start] = 0
        todo = [iter(by_name[start].parents)]
        while todo:
            parent = next(todo[-1], None)
            if parent is None:
                name = path.pop()
                todo.pop()
                del on_path[name]
                depth[name] = 1 + max((depth[p] for p in by_name[name].parents), default=-1)
            elif parent in on_path:
                cycle = path[on_path[parent]:] + [parent]
                shown = cycle if len(cycle) <= 12 else cycle[:5] + [f"... ({len(cycle) - 10} more)"] + cycle[-5:]
                raise ValidationError(f"DAG {dag_name!r} has a cycle: {' -> '.join(shown)}")
            elif parent not in depth:
                on_path[parent] = len(path)
                path.append(parent)
                todo.append(iter(by_name[parent].parents))
    levels: List[List[DAGNode]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for n in nodes:
        levels[depth[n.name]].append(n)
    return levels


def placeholders(nodes: Sequence[DAGNode]) -> Set[str]:
    """Every placeholder name the nodes use."""
    out: Set[str] = set()
    for n in nodes:
        where = f"node {n.name!r}"
        walk_fields(n.workdir, f"{where} workdir", out)
        walk_fields(n.params, f"{where} params", out)
        walk_fields(n.tags, f"{where} tags", out)
        walk_fields(n.resources, f"{where} resources", out)
    return out


def parse_spec(name: str, spec: Any) -> List[DAGNode]:
    """The nodes of a stored or submitted template, checked: node fields, unique names, parents known, no cycle,
    every workdir with a placeholder (workdirs are unique, so instances cannot share one)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("nodes"), list) or not spec["nodes"]:
        raise ValidationError(f"DAG {name!r} has no nodes")
    if len(spec["nodes"]) > MAX_NODES:
        raise ValidationError(f"DAG {name!r} has {len(spec['nodes']):,} nodes: a DAG holds at most {MAX_NODES:,} (each instance "
                              "makes a job per node): split it, or make its repeated part a parameter sweep")
    nodes = [DAGNode.from_dict(n, f"DAG {name!r} node {i}") for i, n in enumerate(spec["nodes"])]
    seen: Set[str] = set()
    for n in nodes:
        if n.name in seen:
            raise ValidationError(f"DAG {name!r} has two nodes named {n.name!r}")
        seen.add(n.name)
        if not fields_of(n.workdir, f"node {n.name!r} workdir"):
            raise ValidationError(
                f"DAG {name!r} node {n.name!r}: workdir {n.workdir!r} uses no placeholder, so every instance would share it "
                "(workdirs are unique): put one in, such as '{run}/" + n.name + "'")
    levels(nodes, name)
    placeholders(nodes)
    return nodes


def check_record(dag_name: str, record: Any, index: int, names: Set[str]) -> Dict[str, Any]:
    """One instance's placeholder values: a mapping with exactly the template's placeholders."""
    if not isinstance(record, Mapping):
        raise ValidationError(f"DAG {dag_name!r} instance {index}: placeholder values must be a mapping, got {record!r:.80}")
    check_json_dict("placeholder values", dict(record), f"DAG {dag_name!r} instance {index}: ")  # bytes, NaN: named here
    keys = set(record)
    missing = sorted(names - keys)
    if missing:
        raise ValidationError(f"DAG {dag_name!r} instance {index}: no value for placeholder {missing[0]!r}")
    unknown = sorted(str(k) for k in keys - names)
    if unknown:
        known = ", ".join(sorted(names)) or "none"
        raise ValidationError(f"DAG {dag_name!r} instance {index}: {unknown[0]!r} is not a placeholder (placeholders: {known})")
    return dict(record)


def filled(dag_name: str, nodes: Sequence[DAGNode], record: Mapping[str, Any], index: int) -> Dict[str, Dict[str, Any]]:
    """Each node's job fields with one record's values."""
    out = {}
    for n in nodes:
        where = f"DAG {dag_name!r} instance {index} node {n.name!r}"
        tags = fill(n.tags, record, where + " tags")
        out[n.name] = {
            "workdir": fill(n.workdir, record, where + " workdir"),
            "params": fill(n.params, record, where + " params"),
            "tags": {k: str(v) for k, v in tags.items()},
            "resources": fill(n.resources, record, where + " resources"),
        }
    return out


def show(name: str, description: str, nodes: Sequence[DAGNode]) -> str:
    """The graph as text: nodes (app, workdir, params, resources) by level, edges and placeholders."""
    lines = [f"DAG {name}" + (f": {description}" if description else ""),
             f"placeholders: {', '.join(sorted(placeholders(nodes))) or '(none)'}", "nodes:"]
    for level, group in enumerate(levels(nodes, name)):
        for n in group:
            extra = "".join(f" {k}={v}" for k, v in n.resources.items())
            params = ", ".join(f"{k}={v!r}" for k, v in n.params.items())
            after = f"  after {', '.join(n.parents)}" if n.parents else ""
            lines.append(f"  [{level}] {n.name}: {n.app}({params}) in {n.workdir}{extra}{after}")
    edges = [(p, n.name) for n in nodes for p in n.parents]
    lines.append("edges:" + ("" if edges else " (none)"))
    lines.extend(f"  {p} -> {c}" for p, c in edges)
    return "\n".join(lines)


def parse_document(doc: Any) -> Dict[str, Any]:
    """A DAG's YAML/JSON document: ``name``, optional ``description`` and ``site``, and ``nodes`` (a list of node
    mappings, or a mapping of node name -> node mapping); returns {name, description, site, spec}."""
    if not isinstance(doc, Mapping):
        raise ValidationError(f"a DAG document must be a mapping with 'name' and 'nodes', got {type(doc).__name__}")
    unknown = set(doc) - {"name", "description", "site", "nodes"}
    if unknown:
        raise ValidationError(f"unknown DAG key {sorted(unknown)[0]!r} (known: name, description, site, nodes)")
    nodes = doc.get("nodes")
    if isinstance(nodes, Mapping):
        nodes = [{"name": k, **(v or {})} if isinstance(v, Mapping) or v is None else v for k, v in nodes.items()]
    return {"name": doc.get("name"), "description": doc.get("description") or "", "site": doc.get("site"),
            "spec": {"nodes": nodes if isinstance(nodes, list) else []}}
