"""The zipapp: reproducible, self-contained, and working in an isolated interpreter with an empty HOME."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "balsam.pyz"
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(out)], check=True, capture_output=True)
    return out


def isolated(pyz: Path, home: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Run the zipapp as a user would on a login node: -I (no site-packages, no PYTHON* variables), empty HOME."""
    env: Dict[str, str] = {"HOME": str(home), "PATH": "/usr/bin:/bin", "BALSAM_HOME": str(home / ".balsam")}
    return subprocess.run([sys.executable, "-I", str(pyz), *args], env=env, capture_output=True, text=True, **kwargs)


def test_build_is_reproducible(pyz: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.pyz"
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(again)], check=True, capture_output=True)
    assert again.read_bytes() == pyz.read_bytes()


def test_contents_and_build_info(pyz: Path) -> None:
    with zipfile.ZipFile(pyz) as zf:
        names = set(zf.namelist())
        info = json.loads(zf.read("_balsam_build.json"))
    assert "__main__.py" in names and "balsam/api.py" in names and "click/__init__.py" in names
    assert "balsam/platforms/presets/local/settings.yml" in names
    assert "balsam/platforms/presets/optional-services.yml" in names  # every new site's settings.yml ends with it
    assert "balsam/web/index.html" in names and any(n.startswith("balsam/web/assets/") and n.endswith(".js") for n in names)
    assert not any(n.endswith(".so") and not n.startswith("_balsam_native/") for n in names)
    assert "balsam/api.pyc" in names  # byte-code for the building Python: zipimport cannot cache it
    assert any(n.startswith("_balsam_native/psutil/") and ".so" in n for n in names)
    assert not any("mpi4py" in n for n in names)
    assert set(info["dependencies"]) == {"balsam", "click", "jinja2", "markupsafe", "pyyaml", "psutil", "starlette", "uvicorn", "h11",
                                         "wsproto", "anyio", "idna", "sniffio", "typing_extensions", "exceptiongroup", "cloudpickle"}
    assert info["dependencies"]["click"] == "8.1.8"  # pinned in zipapp-requirements.txt, supports Python 3.9


def test_runs_isolated_and_unpacks_psutil_once(pyz: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = isolated(pyz, home, "--version")
    assert out.returncode == 0 and "balsam, version" in out.stdout, out.stderr
    cached = list((home / ".cache" / "balsam").glob("native-*/psutil/__init__.py"))
    assert len(cached) == 1
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from balsam._zipapp import install_native; install_native(); "
             "import psutil, os; print(psutil.Process(os.getpid()).pid == os.getpid())")
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(pyz)], env=env, capture_output=True, text=True)
    assert res.stdout.strip() == "True", res.stderr


def test_subprocesses_are_started_from_the_archive(pyz: Path, tmp_path: Path) -> None:
    probe = "import sys; sys.path.insert(0, sys.argv[1]); from balsam.runtime import balsam_argv; print(balsam_argv()[1:])"
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(pyz)], capture_output=True, text=True, env={"HOME": str(tmp_path)})
    assert res.stdout.strip() == repr([str(pyz.resolve())])


APPS = """
from balsam.api import ApplicationDefinition

class Hello(ApplicationDefinition):
    site = "zip-site"
    command_template = "echo Hello from the zipapp, {{ who }}!"
"""


def test_zipapp_runs_a_job_end_to_end_in_an_isolated_interpreter(pyz: Path, tmp_path: Path) -> None:
    import time

    home = tmp_path / "home"
    home.mkdir()
    site = tmp_path / "zip-site"

    def run(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        res = isolated(pyz, home, *args, cwd=str(tmp_path), timeout=120)
        assert res.returncode == 0, f"{args}: {res.stderr}"
        return res

    run("site", "init", str(site), "-n", "zip-site", "--preset", "local")
    (tmp_path / "apps.py").write_text(APPS)
    run("app", "sync", str(tmp_path / "apps.py"), "--site", "zip-site")
    run("job", "create", "--site", "zip-site", "-a", "Hello", "-w", "demo/hello", "-p", "who=world", "-y")
    run("site", "start", "--site", str(site))
    try:
        run("queue", "submit", "--site", "zip-site", "-n", "1", "-t", "5", "-q", "local", "-A", "local", "-j", "mpi")
        deadline = time.monotonic() + 90
        while True:
            jobs = json.loads(run("job", "ls", "--site", "zip-site", "--json").stdout)
            if jobs and jobs[0]["state"] == "JOB_FINISHED":
                break
            assert time.monotonic() < deadline, jobs
            time.sleep(0.3)
    finally:
        isolated(pyz, home, "site", "stop", "--site", str(site), timeout=120)
    assert (site / "data" / "demo" / "hello" / "job.out").read_text().strip() == "Hello from the zipapp, world!"
    script = next((site / "qsubmit").glob("qlaunch*.sh")).read_text()
    assert str(pyz.resolve()) in script  # the batch script starts the launcher from the zipapp
    which = run("which").stdout
    assert "zipapp" in which and str(pyz.resolve()) in which and "Depends on:" in which and "click 8.1.8" in which and "uvicorn 0.34.3" in which


def test_the_docs_read_from_the_archive_alone(pyz: Path, tmp_path: Path) -> None:
    lone = tmp_path / "empty"
    lone.mkdir()
    copy = lone / "balsam.pyz"
    copy.write_bytes(pyz.read_bytes())
    res = isolated(copy, tmp_path, "docs", "one", "file", cwd=str(lone))
    assert res.returncode == 0 and res.stdout.startswith("### One file for login nodes") and "build_zipapp.py" in res.stdout, res.stderr


def python39() -> str:
    """The real Python 3.9 interpreter, or '' (pyenv's shim refuses a version that is not selected)."""
    import os
    import shutil

    if shutil.which("python3.9") is None:
        return ""
    candidates = [{}]
    if shutil.which("pyenv"):
        bare = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout.split()
        candidates += [{"PYENV_VERSION": v} for v in bare if v.startswith("3.9")]
    for extra in candidates:
        res = subprocess.run(["python3.9", "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                             env={**os.environ, **extra})
        if res.returncode == 0:
            return res.stdout.strip()
    return ""


def test_the_oldest_supported_python_runs_it(pyz: Path, tmp_path: Path) -> None:
    old = python39()
    if not old:
        pytest.skip("no Python 3.9 here")
    res = subprocess.run([old, "-I", str(pyz), "site", "presets"], capture_output=True, text=True,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and "polaris" in res.stdout, res.stderr


def test_every_package_directory_is_a_regular_package() -> None:
    # Namespace packages are skipped by setuptools' package discovery and by Python 3.9's zipimport.
    missing = [str(d.relative_to(ROOT)) for d in (ROOT / "balsam").rglob("*")
               if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert missing == []


def test_the_wheel_carries_every_package_and_the_presets(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("balsam-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("balsam/services/agent.py", "balsam/launcher/__init__.py", "balsam/cli/job.py", "balsam/db/schema.py",
                 "balsam/platforms/presets/polaris/settings.yml", "balsam/platforms/presets/local/job-template.sh",
                 "balsam/platforms/presets/optional-services.yml",
                 "balsam/web/__init__.py", "balsam/web/index.html", "balsam/docs/README.md"):
        assert must in names
    assert any(n.startswith("balsam/web/assets/") and n.endswith(".css") for n in names)  # the dashboard, built
