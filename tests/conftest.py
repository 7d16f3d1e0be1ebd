"""Shared fixtures: every test gets its own BALSAM_HOME (site registry), and sites live under tmp_path.

Fixtures are named for the state they give: ``site`` is a fresh local site registered as "test-site",
``hello`` and ``adder`` are synced apps on it (a shell app and a Python run() app).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from balsam._api import sites as _sites


@pytest.fixture(autouse=True)
def balsam_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty per-test site registry; no current site from the environment."""
    home = tmp_path / "balsam-home"
    monkeypatch.setenv("BALSAM_HOME", str(home))
    monkeypatch.delenv("BALSAM_SITE_PATH", raising=False)
    monkeypatch.delenv("BALSAM_HOSTNAME", raising=False)
    monkeypatch.chdir(tmp_path)
    _sites.reset()
    from balsam._api.jobs import invalidate_app_cache

    invalidate_app_cache()
    yield home
    _sites.reset()


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    """Where the ``site`` fixture puts its site."""
    return tmp_path / "test-site"


@pytest.fixture
def site(site_path: Path) -> Any:
    """A fresh local site named "test-site"; returns its SiteRef."""
    from balsam.site import init_site

    init_site(site_path, name="test-site")
    return _sites.resolve("test-site")


@pytest.fixture
def store(site: Any) -> Any:
    """The Store of the ``site`` fixture."""
    return site.store


@pytest.fixture
def hello(site: Any) -> Any:
    """A synced shell app: ``echo Hello, {{ say_hello_to }}!``."""
    from balsam.api import ApplicationDefinition

    class Hello(ApplicationDefinition):
        """Says hello."""

        site = "test-site"
        command_template = "echo Hello, {{ say_hello_to }}!"

    Hello.sync()
    return Hello


@pytest.fixture
def adder(site: Any) -> Any:
    """A synced Python app: ``run(x, y=2) -> x + y``."""
    from balsam.api import ApplicationDefinition

    class Adder(ApplicationDefinition):
        site = "test-site"

        def run(self, x: int, y: int = 2) -> int:
            return x + y

    Adder.sync()
    return Adder



@pytest.fixture(scope="session")
def sshd_rsh() -> str:
    """The ssh command (for rsync -e) that reaches the test sshd that ``.ci/sshd.sh`` starts on 127.0.0.1;
    the test is skipped when it is not up."""
    import os
    import shutil
    import subprocess

    folder = Path(os.environ.get("BALSAM_CI_SSHD_DIR", "/tmp/balsam-ci-sshd"))
    port_file = folder / "port"
    if not port_file.exists() or not shutil.which("rsync") or not shutil.which("ssh"):
        pytest.skip("no test sshd (start it with: bash .ci/sshd.sh start)")
    rsh = (f"ssh -p {port_file.read_text().strip()} -i {folder / 'client_key'} -o IdentitiesOnly=yes -o BatchMode=yes "
           f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={folder / 'known_hosts'}")
    probe = subprocess.run([*rsh.split(), "-o", "ConnectTimeout=10", "127.0.0.1", "true"], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"the test sshd does not answer (bash .ci/sshd.sh start): {probe.stderr.decode(errors='replace').strip()}")
    return rsh
