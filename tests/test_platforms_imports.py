"""The platforms package is the bottom layer: it imports nothing of Balsam's but balsam.exceptions, and its
public names are what it says they are."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import balsam.platforms as platforms

PACKAGE = Path(platforms.__file__).parent


def test_platforms_imports_only_exceptions_from_balsam():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("balsam") and not (name.startswith("balsam.platforms") or name == "balsam.exceptions"):
                    offenders.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert offenders == []


def test_public_names_exist_and_are_listed():
    assert sorted(platforms.__all__) == sorted(set(platforms.__all__))
    for name in platforms.__all__:
        assert hasattr(platforms, name), name


def test_importing_starts_no_process_and_loads_no_jinja():
    code = (
        "import subprocess, sys\n"
        "def boom(*a, **k): raise SystemExit('a subprocess was started at import')\n"
        "subprocess.Popen = boom\n"
        "import balsam.platforms\n"
        "from balsam.platforms import get_scheduler, get_transfer\n"
        "for n in ('local', 'slurm', 'pbs', 'cobalt', 'lsf', 'sge'): get_scheduler(n)\n"
        "get_transfer('rsync')\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_functions_and_classes_have_docstrings():
    missing = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") and not ast.get_docstring(node):
                missing.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert missing == []
