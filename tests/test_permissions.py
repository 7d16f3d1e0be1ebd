"""Another user of the same machine (a login node is shared) cannot read a site's DB, its API secret, its jobs' inputs
and outputs or its owner's tokens, cannot drive the site's agent over HTTP, and cannot read a relay's database.

The tests run real commands as an unprivileged user, ``balsamtest`` (CI creates it: .ci/users.sh). They need root
(to run commands as that user) and are skipped without it, or where the user does not exist and cannot be made.
The sites live in a folder every user may enter (as a home or project folder is), not under pytest's own 0700 one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.launcher_support import REPO, run, runnable, states

USER = "balsamtest"

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="runs commands as another user (needs root)")


def _user_exists() -> bool:
    import pwd

    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def other_user() -> str:
    """The unprivileged user (made here if missing, as .ci/users.sh does)."""
    if shutil.which("runuser") is None:
        pytest.skip("runuser is not installed")
    if not _user_exists():
        subprocess.run(["useradd", "-m", USER], capture_output=True)
        if not _user_exists():
            pytest.skip(f"cannot create the user {USER}")
    return USER


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder every user may enter and list (mode 0755), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="balsam-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_other(argv: List[str], **kw: object) -> "subprocess.CompletedProcess[str]":
    """``argv`` run as the other user, in a clean environment of its own (its home, our code on PYTHONPATH)."""
    env = f"HOME=/home/{USER} PATH={os.environ.get('PATH', '/usr/bin:/bin')} PYTHONPATH={REPO} BALSAM_HOME=/home/{USER}/.balsam"
    return subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *env.split(), *argv], capture_output=True, text=True,
                          timeout=120, cwd="/", **kw)  # type: ignore[call-overload]


def _pythons() -> "tuple[str, bool]":
    """A Python the other user can run (this one, else the system's), and whether Balsam's CLI runs in it."""
    for python in (sys.executable, "/usr/bin/python3"):
        if as_other([python, "-c", "import click, yaml"]).returncode == 0:
            return python, True
    for python in (sys.executable, "/usr/bin/python3"):
        if as_other([python, "-c", "pass"]).returncode == 0:
            return python, False
    pytest.skip(f"no Python that {USER} may run")


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def _balsam(*args: str) -> "subprocess.CompletedProcess[str]":
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_another_user_reads_nothing_of_a_site_and_cannot_use_its_agent(other_user: str, shared: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`balsam site init` makes the site 0700 (its state folder 0700, the API secret 0600, as the README says). A job
    runs and the agent serves; the other user can read none of the DB, the secret, the job's output, or the owner's
    registry, and the agent refuses its requests, unsigned or signed with a guessed secret."""
    from balsam._api import sites as _sites
    from balsam.api import ApplicationDefinition
    from balsam.services.agent import start_agent, stop_agent

    home = shared / "owner-home"
    monkeypatch.setenv("BALSAM_HOME", str(home))
    _sites.reset()
    root = shared / "site"
    made = _balsam("site", "init", str(root), "-n", "perm-site", "--preset", "local")
    assert made.returncode == 0, made.stderr
    assert _mode(root) == "0o700" and _mode(root / ".balsam") == "0o700" and _mode(home) == "0o700"

    class Secretive(ApplicationDefinition):
        site = "perm-site"
        command_template = "echo the secret result"

    Secretive.sync()
    ref = _sites.resolve("perm-site")
    (job,) = runnable(ref.store, [Secretive.submit("private/0")])
    assert run(ref, "mpi") == 0 and states(ref.store, [job])[job] in ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")
    out = root / "data" / "private" / "0" / "job.out"
    assert "the secret result" in out.read_text()
    start_agent(root)
    try:
        secret = root / ".balsam" / "api.secret"
        assert _mode(secret) == "0o600"
        address = json.loads((root / ".balsam" / "api.json").read_text())
        port = int(address["port"])
        for path in (secret, root / ".balsam" / "site.db", out, root / "settings.yml", home / "sites.json"):
            read = as_other(["cat", str(path)])
            assert read.returncode != 0 and "Permission denied" in read.stderr, (path, read.stdout, read.stderr)
        assert as_other(["ls", str(root)]).returncode != 0
        python, with_cli = _pythons()
        if with_cli:  # the CLI as the other user, told where the site is: one line, no traceback, nothing shown
            ls = as_other([python, "-m", "balsam", "job", "ls", "--site", str(root)])
            assert ls.returncode != 0 and "Traceback" not in ls.stderr and "private/0" not in ls.stdout, ls.stdout + ls.stderr
        # Straight at the agent's port (the other user can find it with ss): unsigned, and signed with a guessed secret.
        probe = f"""
import http.client, json, sys
from balsam.http.auth import sign_request
answers = []
for method, path, body in (("GET", "/v1/jobs", b""), ("POST", "/v1/sessions", b'{{"host": "x", "pid": 1}}'),
                           ("PATCH", "/v1/jobs/{job}", b'{{"state": "RESTART_READY"}}')):
    for headers in ({{}}, sign_request(b"0" * 32, method, path, body)):
        c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=30)
        c.request(method, path, body=body, headers=dict(headers, **{{"Content-Type": "application/json"}}))
        r = c.getresponse()
        answers.append([method, path, r.status, r.read(300).decode(errors="replace")])
print(json.dumps(answers))
"""
        tried = as_other([python, "-c", probe])
        assert tried.returncode == 0, tried.stderr
        answers = json.loads(tried.stdout)
        assert answers and all(status == 401 for _, _, status, _ in answers), answers
        assert all("secret result" not in text and "private/0" not in text for *_, text in answers), answers
    finally:
        stop_agent(root)
    assert states(ref.store, [job])[job] in ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")  # unchanged by the other user


def test_another_user_cannot_read_a_relays_database_or_the_users_token(other_user: str, shared: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's SQLite database (users' password and token hashes) is made 0600, in its default folder (0700) and at
    a path given with --db; a user's relay login token is 0600 in its 0700 BALSAM_HOME."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from tests.test_relay_sync import Relay

    home = shared / "relay-home"
    monkeypatch.setenv("BALSAM_HOME", str(home))
    add = subprocess.run([sys.executable, "-m", "balsam", "relay", "user", "add", "alice", "--password-stdin"],
                         input="alice-password\n", capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert add.returncode == 0, add.stderr
    default_db = home / "relay" / "relay.db"
    assert _mode(home / "relay") == "0o700" and _mode(default_db) == "0o600"
    given = shared / "elsewhere.db"
    add2 = subprocess.run([sys.executable, "-m", "balsam", "relay", "user", "add", "bob", "--password-stdin", "--db",
                           f"sqlite:///{given}"], input="bob-password\n", capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert add2.returncode == 0, add2.stderr
    assert _mode(given) == "0o600"
    for extra in (shared / "elsewhere.db-wal", shared / "elsewhere.db-shm"):
        assert not extra.exists() or _mode(extra) == "0o600", extra
    from balsam.relay.store import RelayStore

    store = RelayStore(f"sqlite:///{given}")
    relay = Relay(store).start()
    try:
        login = subprocess.run([sys.executable, "-m", "balsam", "login", relay.url, "-u", "bob", "--password-stdin"],
                               input="bob-password\n", capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert login.returncode == 0, login.stderr
    finally:
        relay.stop()
        store.close()
    token = home / "relay-login.json"
    assert _mode(token) == "0o600" and _mode(home) == "0o700"
    for path in (default_db, given, token):
        read = as_other(["cat", str(path)])
        assert read.returncode != 0 and "Permission denied" in read.stderr, (path, read.stdout, read.stderr)
