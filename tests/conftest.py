"""Shared fixtures: every test gets its own BALSAM_HOME (site registry), and sites live under tmp_path.

Fixtures are named for the state they give: ``site`` is a fresh local site registered as "test-site",
``hello`` and ``adder`` are synced apps on it (a shell app and a Python run() app).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from balsam._api import sites as _sites


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Under pytest-xdist (``-n``, with ``--dist loadgroup``), tests that share one outside system run in one worker,
    one after another, as they would without it: the batch systems (one Slurm, one Grid Engine, a few slots each)
    and the one PostgreSQL database the relay tests reset; the zipapp's tests share one build of it (~10-25 s each).
    The rest spread over the workers."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if item.get_closest_marker("slurm") or item.get_closest_marker("sge"):
            item.add_marker(pytest.mark.xdist_group("batch-systems"))
        elif item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.xdist_group("postgres"))
        elif "pyz" in getattr(item, "fixturenames", ()):  # one zipapp build (tests/test_zipapp.py), not one per worker
            item.add_marker(pytest.mark.xdist_group("zipapp"))


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (``timeout``, a CI job cancelled) stops the run as Ctrl-C does, so fixtures and ``finally`` blocks still stop
    the agents, launchers and servers the running tests started (killed outright, pytest left them running)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(autouse=True)
def no_process_left_behind(balsam_home: Path, tmp_path: Path) -> Iterator[None]:
    """Fail the test (at teardown, naming it) when an agent, launcher, worker or server it started still runs after
    it ended and its fixtures stopped what they started; those processes are then killed."""
    from tests import leaks

    before = leaks.pids()
    yield
    found = leaks.left_behind(before, balsam_home, tmp_path)
    if found:
        pytest.fail("this test left processes running:\n" + "\n".join(leaks.describe(found)), pytrace=False)


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


def _tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mnt`` with ``options`` (CI runs as root); skipped where mounting is not permitted."""
    import subprocess

    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs (CI runs as root); skipped where mounting is not permitted."""
    yield from _tmpfs(tmp_path / "small", "size=8m")


@pytest.fixture
def few_inodes_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for 64 files (a disk whose inodes run out: creating a file, a folder or a link fails with
    ENOSPC, 'No space left on device'); skipped where mounting is not permitted."""
    yield from _tmpfs(tmp_path / "few-inodes", "size=8m,nr_inodes=64")


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    """Where the ``site`` fixture puts its site."""
    return tmp_path / "test-site"


FOREIGN_HOST = "login-2"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test module with ``BACKENDS = ("local", "http")`` runs each test that uses a site twice: on the site's home
    host (SQLite), and from another host through the site agent's HTTP API (one suite, two fixtures)."""
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "site" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """How the test reaches its site: "local" (the home host) or "http" (a foreign host, through the agent)."""
    return str(getattr(request, "param", "local"))


@dataclass(frozen=True)
class HomeSiteRef(_sites.SiteRef):
    """The site as the test sees it from a foreign host: API calls go through the agent, but ``store`` (for the
    test's own assertions) opens SQLite as the home host would."""

    @property
    def store(self) -> Any:
        from balsam.db import open_store

        return _home_stores.setdefault(self.path, open_store(self.path, self.host))


_home_stores: Dict[Path, Any] = {}
_running_servers: Dict[Path, Any] = {}
"""The agent API server of each ``site`` fixture on the "http" backend (a test may restart it)."""


@pytest.fixture
def site(site_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh local site named "test-site"; returns its SiteRef. With the "http" backend, the site's API server runs
    (as its agent would) and this process is on another host (BALSAM_HOSTNAME), so the API and CLI use HTTP."""
    from balsam.site import init_site

    init_site(site_path, name="test-site")
    ref = _sites.resolve("test-site")
    if backend != "http":
        yield ref
        return
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    _running_servers[ref.path] = start_api_server(ref.path, ref.store, ApiSettings(bind="127.0.0.1"), host=ref.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    _sites.reset()
    assert _sites.resolve("test-site").backend.kind == "http"
    try:
        yield HomeSiteRef(ref.id, ref.name, ref.path, ref.host)
    finally:
        _sites.reset()
        _running_servers.pop(ref.path).stop()
        for store in _home_stores.values():
            store.close()
        _home_stores.clear()


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


@pytest.fixture
def sleeper(site: Any) -> Any:
    """A shell app that records its pid in ``pid`` and sleeps (launcher lifecycle and fault tests)."""
    from balsam.api import ApplicationDefinition

    class Sleeper(ApplicationDefinition):
        site = "test-site"
        command_template = "echo $$ > pid; exec sleep {{ seconds }}"

    Sleeper.sync()
    return Sleeper


@pytest.fixture
def pids() -> Iterator[List[int]]:
    """Job pids to kill at the end, whatever happened."""
    from tests.launcher_support import kill_quietly

    out: List[int] = []
    yield out
    for pid in out:
        kill_quietly(pid)


@pytest.fixture
def home(site: Any) -> Iterator[Any]:
    """The site's store as its home host opens it (this test's own look at the DB, whichever host it plays)."""
    from balsam.db import open_store

    store = open_store(site.path, site.host)
    try:
        yield store
    finally:
        store.close()
