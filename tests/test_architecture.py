"""The architecture's rules that are not about imports (those are tests/test_imports.py), read from the source:

- all SQL of the site store lives in ``balsam/db/`` (DESIGN.md section 1): no other module holds an SQL
  statement or calls ``execute`` on a connection; the relay's own store (``balsam/relay/``, SQLAlchemy over its
  own DB) is the one other place with SQL.
- Job and BatchJob states are enum members outside the store and the wire (named sets from
  :mod:`balsam.states`): no other module spells a job state's name as a string, nor a BatchJob state's name
  where it stands for a state (compared, assigned to a ``state``, or gathered into a constant); the BatchJob
  names are also plain words ("running" in the agent's status), which stay.
- this host's name and the environment are read by the composition roots (the entry point of each process) and
  passed down; the modules that still read them themselves are listed with the reason, and the list only shrinks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import balsam
from balsam.states import BatchJobState, JobState

PACKAGE = Path(balsam.__file__).parent

SQL_HOMES = ("db/", "relay/")
"""The site store, and the relay's own store."""

SQL = re.compile(
    r"\b(SELECT\b[\s\S]*\bFROM\b|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|PRAGMA\s+\w+|"
    r"CREATE\s+(UNIQUE\s+)?(TABLE|INDEX|TRIGGER|VIEW)\b|BEGIN\s+IMMEDIATE|ALTER\s+TABLE|DROP\s+(TABLE|INDEX)\b)"
)
"""What an SQL statement looks like (keywords in capitals, as every statement in the package writes them)."""


STATE_HOMES = ("db/", "relay/", "http/", "web/", "platforms/", "states.py")
"""The store and the wire, where states are their names (the DB, the relay's DB, the HTTP API's schemas); the
platform adapters, whose schedulers and transfer services have vocabularies of their own (Slurm's RUNNING, a Globus
task's FAILED) mapped to Balsam's states in a table each; and the public face of the states."""
JOB_STATE_NAMES = frozenset(s.value for s in JobState)
BATCH_STATE_NAMES = frozenset(s.value for s in BatchJobState)


def _docstrings(tree: ast.AST) -> Set[int]:
    out: Set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    # A string right after an assignment documents it (attribute docstrings).
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for prev, cur in zip(body, body[1:]):
                if isinstance(prev, (ast.Assign, ast.AnnAssign)) and isinstance(cur, ast.Expr) and isinstance(cur.value, ast.Constant):
                    out.add(id(cur.value))
    return out


def _strings(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, text) of every string constant in a module but docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def _modules(root: Path, outside: Tuple[str, ...]) -> Iterator[Tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(outside):
            yield rel, path


def sql_outside_the_store(root: Path = PACKAGE, outside: Tuple[str, ...] = SQL_HOMES) -> List[str]:
    """``file:line: what`` for every SQL statement or ``execute`` call outside the stores."""
    out: List[str] = []
    for rel, path in _modules(root, outside):
        for line, text in _strings(path):
            if SQL.search(text):
                out.append(f"{rel}:{line}: {text.strip()[:70]!r}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "execute", "executemany", "executescript"):
                out.append(f"{rel}:{node.lineno}: .{node.func.attr}(...)")
    return out


def _stands_for_a_state(node: ast.AST, parents: Dict[int, ast.AST]) -> bool:
    """True when a BatchJob state's name is used as a state: compared, assigned to a ``state``, passed as
    ``state=``, or gathered (in a tuple, list or set) into a constant."""
    child, parent = node, parents.get(id(node))
    while isinstance(parent, (ast.Tuple, ast.List, ast.Set)) or (
            isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in ("frozenset", "set", "tuple")):
        child, parent = parent, parents.get(id(parent))
    if isinstance(parent, ast.Compare):
        return True
    if isinstance(parent, ast.keyword):
        return "state" in (parent.arg or "").lower()
    if isinstance(parent, (ast.Assign, ast.AnnAssign)):
        for target in parent.targets if isinstance(parent, ast.Assign) else [parent.target]:
            name = target.attr if isinstance(target, ast.Attribute) else target.id if isinstance(target, ast.Name) else ""
            if "state" in name.lower() or (child is not node and name.isupper()):
                return True
    return False


def state_literals(root: Path = PACKAGE, outside: Tuple[str, ...] = STATE_HOMES) -> List[str]:
    """``file:line: name`` for every job state's name as a string, and every BatchJob state's name standing for a
    state, outside the store and the wire."""
    out: List[str] = []
    for rel, path in _modules(root, outside):
        tree = ast.parse(path.read_text())
        parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docs:
                continue
            if node.value in JOB_STATE_NAMES or (node.value in BATCH_STATE_NAMES and _stands_for_a_state(node, parents)):
                out.append(f"{rel}:{node.lineno}: {node.value}")
    return out


ENV_ROOTS: Dict[str, str] = {
    "cli/": "the CLI's commands are the entry points of the balsam command",
    "site/layout.py": "defines this_host(), balsam_home() and find_site_root(): the one reader of BALSAM_HOSTNAME, "
                      "BALSAM_HOME and BALSAM_SITE_PATH",
    "_api/sites.py": "the Python API's root: which site and host a user's process works with",
    "services/agent.py": "run_agent(), the site agent's entry point (reads host and environment once for its services)",
    "services/hookworker.py": "the hook worker process's initializer",
    "launcher/__init__.py": "run_launcher(), the launcher's entry point",
    "launcher/serial_worker.py": "the serial-mode node worker's entry point",
    "_zipapp.py": "the zipapp's bootstrap, before anything else runs",
}
"""Modules that are the composition root of a process (``__main__`` modules are, too)."""
ENV_KNOWN: Dict[str, str] = {
    "_api/jobs.py: os.environ": "Job.current() reads BALSAM_JOB_ID, the variable a launcher sets for the job it runs",
    "_api/models.py: this_host()": "a Session made through the API records the host, as the API's root resolves it",
    "http/serve.py: gethostname()": "the address the agent's API advertises when settings name none",
    "http/serve.py: getfqdn()": "the address the agent's API advertises when settings name none",
    "http/ui.py: gethostname()": "the login-node address 'balsam ui' prints for an SSH tunnel",
    "http/ui.py: getfqdn()": "the login-node address 'balsam ui' prints for an SSH tunnel",
    "launcher/nodes.py: gethostname()": "the names a node list may give this host; to come from run_launcher",
    "launcher/nodes.py: getfqdn()": "the names a node list may give this host; to come from run_launcher",
    "launcher/nodes.py: os.environ": "the environment jobs start from; to come from run_launcher",
    "launcher/pyrun.py: os.environ": "a Python job's environment, by default its runner's",
    "launcher/pyworker.py: os.environ": "a warm Python worker sets each job's environment in its own process",
    "launcher/serial_mode.py: gethostname()": "the master's address its node workers connect to; to come from run_launcher",
    "launcher/watchdog.py: gethostname()": "a pid record names the host its job runs on (read back by the next launcher)",
    "platforms/nodes/base.py: gethostname()": "a local node's name when the environment passed in names none",
    "platforms/runner.py: os.environ": "a command's environment when the caller passes none",
    "runtime.py: os.environ": "the environment Balsam's own subprocesses start from",
    "site/operations.py: os.environ": "init_site notes the MPI and GPUs the environment shows; to be passed by its callers",
    "site/operations.py: this_host()": "site operations default to this host; to be passed by their callers",
    "site/registry.py: balsam_home()": "the registry's folder when none is given",
    "sync.py: balsam_home()": "where the relay login is kept",
    "sync.py: gethostname()": "the label of a relay login token",
}
"""Modules that still read the host or the environment themselves, with the reason; the list only shrinks."""
_ENV_CALLS = frozenset({"this_host", "gethostname", "getfqdn", "balsam_home"})


def environment_reads(root: Path = PACKAGE) -> List[str]:
    """``module: what`` for every module (but ``__main__`` ones) that reads ``os.environ``/``os.getenv`` or asks for
    this host's name (``this_host()``, ``socket.gethostname()``, ``getfqdn()``) or ``balsam_home()``."""
    out: Set[str] = set()
    for rel, path in _modules(root, ()):
        if path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in (
                    "environ", "getenv"):
                out.add(f"{rel}: os.{node.attr}")
            elif isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id if isinstance(node.func, ast.Name) else ""
                if name in _ENV_CALLS:
                    out.add(f"{rel}: {name}()")
    return sorted(out)


def test_all_sql_lives_in_the_store() -> None:
    found = sql_outside_the_store()
    assert found == [], "SQL outside balsam/db (add a function there, one per table and operation): " + "; ".join(found)


def test_states_are_enum_members_outside_the_store_and_the_wire() -> None:
    found = state_literals()
    assert len(found) == 0, (f"{len(found)} state names as strings (use JobState / BatchJobState and the named sets of "
                             "balsam.states): " + "; ".join(found))


def test_host_and_environment_are_read_by_the_entry_points() -> None:
    reads = [r for r in environment_reads() if not r.startswith(tuple(ENV_ROOTS))]
    unexpected = [r for r in reads if r not in ENV_KNOWN]
    assert unexpected == [], "read the host or environment in the entry point and pass it down: " + "; ".join(unexpected)
    gone = sorted(set(ENV_KNOWN) - set(reads))
    assert gone == [], f"no longer read there, remove from ENV_KNOWN: {gone}"


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The scanners themselves: a statement, an execute call, state names and environment reads outside the store
    are found; the same inside it, a docstring mentioning SELECT ... FROM, and "running" as a plain word are not."""
    text = ('"""Runs SELECT x FROM y for you."""\n'
            'def f(conn, s):\n    return conn.execute(f"SELECT id FROM job WHERE state={s}")\n'
            'def g(job, bj, status):\n    return job.state == "RUN_DONE" or bj.state in ("queued",) or status["running"]\n'
            'ACTIVE = ("running", "finished")\n'
            'HOST = socket.gethostname() or os.environ["H"]\n')
    for layer in ("db", "services"):
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "m.py").write_text(text)
    assert sql_outside_the_store(tmp_path) == ["services/m.py:3: 'SELECT id FROM job WHERE state='", "services/m.py:3: .execute(...)"]
    assert sorted(state_literals(tmp_path)) == ["services/m.py:5: RUN_DONE", "services/m.py:5: queued", "services/m.py:6: finished",
                                                "services/m.py:6: running"]
    assert environment_reads(tmp_path) == ["db/m.py: gethostname()", "db/m.py: os.environ", "services/m.py: gethostname()",
                                           "services/m.py: os.environ"]
