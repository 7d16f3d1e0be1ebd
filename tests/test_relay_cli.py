"""The relay's commands as a user runs them: 'balsam relay serve' (refuses plain HTTP off this host), 'balsam login'
(token file 0600; a wrong password is one line, exit 1), 'balsam site init --relay', 'balsam site ls' with the
relay's sites, and 'balsam logout' revoking the token at the relay."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

ROOT = Path(__file__).resolve().parents[1]


def balsam(env: Dict[str, str], *args: str, stdin: str = "", cwd: Any = None) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", "balsam", *args], input=stdin, capture_output=True, text=True, env=env, timeout=120,
                          cwd=cwd)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), BALSAM_HOME=str(tmp_path / "relay-home"))
    added = balsam(env, "relay", "user", "add", "carol", "--password-stdin", stdin="carol-password\n")
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "relay", "serve", "--bind", "127.0.0.1:0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"serves (http://127\.0\.0\.1:\d+)", line)
    assert match, line
    try:
        yield {"url": match.group(1), "env": env}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_serve_login_init_link_ls_logout(served: Dict[str, Any], tmp_path: Path) -> None:
    url = served["url"]
    user = dict(os.environ, PYTHONPATH=str(ROOT), BALSAM_HOME=str(tmp_path / "user-home"))
    wrong = balsam(user, "login", url, "-u", "carol", "--password-stdin", stdin="nope-nope-nope\n")
    assert wrong.returncode == 1 and "wrong user name or password" in wrong.stderr and "Traceback" not in wrong.stderr
    ok = balsam(user, "login", url, "-u", "carol", "--password-stdin", stdin="carol-password\n")
    assert ok.returncode == 0 and "Logged in" in ok.stdout, ok.stderr
    token_file = tmp_path / "user-home" / "relay-login.json"
    assert token_file.stat().st_mode & 0o777 == 0o600
    made = balsam(user, "site", "init", str(tmp_path / "s1"), "-n", "s1", "--preset", "local", "--relay", url)
    assert made.returncode == 0 and "Linked to" in made.stdout, made.stderr
    assert (tmp_path / "s1" / ".balsam" / "relay.json").stat().st_mode & 0o777 == 0o600
    listing = balsam(user, "site", "ls")
    assert listing.returncode == 0 and f"linked to {url}" in listing.stdout, listing.stdout
    assert len([line for line in listing.stdout.splitlines() if " s1 " in line]) == 1, listing.stdout  # one site, one row
    tokens = balsam(dict(served["env"], COLUMNS="200"), "relay", "token", "ls", "carol").stdout  # labels in full
    assert "login" in tokens and "agent of s1" in tokens
    out = balsam(user, "logout")
    assert out.returncode == 0 and f"Logged out of {url}" in out.stdout and not token_file.exists()
    import json

    stored = json.loads(balsam(served["env"], "relay", "token", "ls", "carol", "--json").stdout)
    assert [(t["kind"], bool(t["revoked"])) for t in stored] == [("user", True), ("site", False)]  # the agent keeps its token
    no = balsam(user, "site", "init", str(tmp_path / "s2"), "--preset", "local", "-n", "s2", "--relay", url)
    assert no.returncode == 2 and "log in to the relay first" in no.stderr
    laptop = dict(user, BALSAM_HOME=str(tmp_path / "laptop-home"))  # no site here: 'which' said nothing of the relay
    assert balsam(laptop, "which").stdout.rstrip().endswith("Relay:      not logged in (optional: balsam login URL -u USER)")
    assert balsam(laptop, "login", url, "-u", "carol", "--password-stdin", stdin="carol-password\n").returncode == 0
    assert f"Relay:      logged in to {url} as carol" in balsam(laptop, "which").stdout
    there = balsam(laptop, "which", "--site", "s1", cwd=tmp_path / "laptop-home")  # not beside the site's directory
    assert there.returncode == 0 and f"Site:       --site s1: not on this host; reached through the relay at {url}" in there.stdout, there


def test_serve_refuses_plain_http_off_this_host(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), BALSAM_HOME=str(tmp_path / "relay-home"))
    out = balsam(env, "relay", "serve", "--bind", "0.0.0.0:0")
    assert out.returncode == 1 and "in the clear" in out.stderr and "Traceback" not in out.stderr
