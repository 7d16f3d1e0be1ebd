"""The README's commands on a stock machine: scripts/demo and scripts/test make and use the project's virtual
environment (scripts/venv.sh), never pip-installing into a system Python that PEP 668 marks externally managed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")

FAKE_PYTHON_WITHOUT_VENV = """#!/bin/bash
# Debian's python3 without the python3-venv package: "-m venv" fails as Debian's does (after making a stub dir)
if [ "$1" = -m ] && [ "$2" = venv ]; then
  echo "The virtual environment was not created successfully because ensurepip is not available." >&2
  mkdir -p "$3/bin"; exit 1
fi
if [ "$1" = -m ] && [ "$2" = pip ]; then echo "error: externally-managed-environment" >&2; exit 1; fi
exec {real} "$@"
"""


def fake_python_dir(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    exe = bin_dir / "python3"
    exe.write_text(FAKE_PYTHON_WITHOUT_VENV.format(real=sys.executable))
    exe.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("script", ["demo", "test"])
def test_missing_venv_module_is_one_line_naming_the_package(tmp_path: Path, script: str) -> None:
    bin_dir = fake_python_dir(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BALSAM_VENV": str(tmp_path / "venv"),
           "BALSAM_DEMO_SITE": str(tmp_path / "demo-site")}
    env.pop("PYTHON", None)
    proc = subprocess.run([str(REPO / "scripts" / script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: 'python3 -m venv' does not work here: install Python's venv module (Debian/Ubuntu: apt install python3-venv)"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "venv").exists()  # no half-made venv left behind
    assert not (tmp_path / "demo-site").exists()


def _interpreters() -> list:  # type: ignore[type-arg]
    out = [pytest.param(sys.executable, id="this-python")]
    if SYSTEM_PYTHON.exists():
        out.append(pytest.param(str(SYSTEM_PYTHON), id="system-python"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("base", _interpreters())
def test_venv_is_made_from_the_chosen_python_and_runs_balsam(tmp_path: Path, base: str) -> None:
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": base, "BALSAM_VENV": str(venv)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(REPO / "scripts" / "venv.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    py = proc.stdout.strip().splitlines()[-1]
    assert py == str(venv / "bin" / "python")
    base_version = subprocess.run([base, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True).stdout
    assert subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True).stdout == base_version
    # The venv's balsam runs from this checkout; a second call reuses the venv without reinstalling.
    out = subprocess.run([py, "-m", "balsam", "which", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(REPO / "balsam") in out.stdout
    (venv / "bin" / "pip").rename(venv / "bin" / "pip-moved")  # would break a reinstall... and so marks a broken venv
    again = subprocess.run([str(REPO / "scripts" / "venv.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "Remaking" in again.stderr  # a venv without pip is made again rather than half-used
    if base == str(SYSTEM_PYTHON):  # the system Python itself was never touched
        sysproc = subprocess.run([base, "-c", "import balsam"], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert sysproc.returncode != 0
