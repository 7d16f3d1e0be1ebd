"""Imports point one way (DESIGN.md section 1), checked for every layer from the source (imports inside functions
included):

- ``platforms`` imports nothing of Balsam's but ``balsam.exceptions`` (tests/test_platforms_imports.py);
- ``db`` (the store) imports only itself, ``exceptions``, ``runtime`` and ``yamlsafe`` (bounded YAML reading); ``docs`` (the README shipped inside)
  nothing of Balsam's;
- ``launcher`` never imports ``services`` or ``cli``;
- ``services`` use ``db`` and ``platforms``; of the API only site references (``_api.sites``), and the API's app
  and Job in the modules that run an app's hooks (processing, file cleaning); never ``cli`` or ``launcher``;
- ``cli`` imports the API and its own helpers; the commands that *are* another process's entry point (``balsam
  launcher``, ``balsam service run``) import that process's package;
- ``site`` (layout, registry, settings policies, and what the agent, the launcher and the API share: the job
  diagnosis, the batch script's rendering, the node's MPI and GPUs, the agent's status file) uses ``db``,
  ``platforms`` and ``settings``, never the API, the CLI, the HTTP layer, the launcher or the agent;
- the API (``api``, ``_api``) never imports ``cli`` or the relay's server, nor the agent's or the launcher's code:
  what it answers for them on the home host comes from ``site`` (``API_AGENT_VIEW`` lists exceptions; none left).

``__main__`` modules are entry points (composition roots), outside the rules. An exception that remains is listed
by name with the reason and the issue that removes it; the test fails when a listed exception is gone too, so the
list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import balsam

PACKAGE = Path(balsam.__file__).parent

ALLOWED: Dict[str, Set[str]] = {
    "db": {"db", "exceptions", "runtime", "yamlsafe"},
    "platforms": {"platforms", "exceptions"},
    "docs": {"docs"},
}
FORBIDDEN: Dict[str, Set[str]] = {
    "launcher": {"services", "cli"},
    "services": {"cli", "launcher"},
    "db": {"_api", "api", "cli", "launcher", "services", "site", "settings", "platforms"},
    "_api": {"cli", "relay"},
    "api": {"cli", "relay", "services", "launcher"},
    "site": {"_api", "api", "cli", "http", "launcher", "relay", "services"},
}
API_AGENT_VIEW: Dict[Tuple[str, str], str] = {}
"""The API modules that answer for the agent or the launcher on the home host (elsewhere they ask the agent); none
left: job.why(), batch_job.preview_submission() and balsam which use the site layer's diagnosis, submission and
hardware modules, which the agent and the launcher use too."""
CLI_ALLOWED = {"api", "_api", "cli", "exceptions", "runtime", "site", "settings", "settings_aliases", "pidfile", "states", "docs", "yamlsafe"}
"""The API, the CLI's own helpers, the states and their named sets, the site layout/registry and settings files
the CLI edits, and the documentation shipped in the package (``balsam docs``; it imports nothing of Balsam's)."""
ENTRY_POINTS = {
    ("cli/launcher.py", "launcher"): "balsam launcher starts the launcher process",
    ("cli/service.py", "services"): "balsam service run/start/stop run the site agent process",
    ("cli/relay.py", "relay"): "balsam relay serve runs the relay process",
    ("cli/relay.py", "http"): "balsam relay serve runs the relay process",
    ("cli/ui.py", "http"): "balsam ui runs the dashboard's server process",
}
SERVICES_API = {"_api.sites"}
HOOK_RUNNERS = {"services/processing.py", "services/file_cleaner.py", "services/hookworker.py"}
"""Modules that run an app's hooks, which use the API's ApplicationDefinition and Job."""

KNOWN: Dict[str, str] = {}
"""Exceptions that remain, ``"path -> module": "reason and the issue that removes it"`` (none left: the CLI reaches
internals only through the API, balsam.site and the entry points above)."""


def _imports(path: Path) -> Iterator[str]:
    """``balsam.X...`` module names a file imports (at any depth), without the ``balsam.`` prefix."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("balsam.") and not name.startswith("balsam.__"):  # not balsam.__version__
                yield name[len("balsam."):]


def _modules() -> Iterator[Tuple[str, str, Path]]:
    """(layer, path relative to the package, path) for every module but entry points."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__main__.py":
            continue
        layer = rel.split("/")[0] if "/" in rel else rel[: -len(".py")]
        yield layer, rel, path


def _violations() -> List[str]:
    out: List[str] = []
    for layer, rel, path in _modules():
        for name in set(_imports(path)):
            top = name.split(".")[0]
            short = ".".join(name.split(".")[:2])
            if top == layer:
                continue
            bad = False
            if layer in ALLOWED and top not in ALLOWED[layer]:
                bad = True
            if top in FORBIDDEN.get(layer, set()):
                bad = True
            if layer == "services" and top == "_api" and short not in SERVICES_API and rel not in HOOK_RUNNERS:
                bad = True
            if layer == "cli" and top not in CLI_ALLOWED and (rel, top) not in ENTRY_POINTS:
                bad = True
            if layer == "_api" and top in ("services", "launcher") and (rel, top) not in API_AGENT_VIEW:
                bad = True
            if bad:
                out.append(f"{rel} -> {short}")
    return sorted(set(out))


def test_every_layer_imports_one_way() -> None:
    unexpected = [v for v in _violations() if v not in KNOWN]
    assert unexpected == [], "imports against the layer rules (DESIGN.md section 1): " + "; ".join(unexpected)


def test_the_list_of_known_exceptions_only_shrinks() -> None:
    gone = sorted(set(KNOWN) - set(_violations()))
    assert gone == [], f"no longer imported, remove from KNOWN: {gone}"


def test_every_named_api_exception_is_still_needed() -> None:
    """An API_AGENT_VIEW entry whose module no longer imports that layer goes (the list only shrinks)."""
    used = {(rel, name.split(".")[0]) for layer, rel, path in _modules() if layer == "_api" for name in _imports(path)}
    assert sorted(set(API_AGENT_VIEW) - used) == []


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: a launcher module importing the CLI is found."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from balsam.cli import cli\n    import balsam.services.agent\n")
    assert sorted(_imports(module)) == ["cli.cli", "services.agent"]
