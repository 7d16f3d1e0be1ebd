"""``balsam app``: sync from a Python file, ls, rm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from balsam.site import init_site
from tests.cli_helpers import fails, invoke, ok
from tests.helpers import sid

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host ("login-2") through the agent's HTTP API."""


APPS = '''
from balsam.api import ApplicationDefinition

GREETING = "Hello"


def shout(text):
    return text.upper()


class Hello(ApplicationDefinition):
    """Says hello."""

    command_template = "echo {{ greeting }}, {{ say_hello_to }}!"
    parameters = {"greeting": {"required": False, "default": GREETING, "help": "the word"}}


class Adder(ApplicationDefinition):
    def run(self, x: int, y: int = 2) -> int:
        return x + y


class Shouter(ApplicationDefinition):
    def run(self, text: str) -> str:
        return shout(text)


class Base(ApplicationDefinition):
    """Abstract: neither a template nor run(), so not synced."""
'''


def _write(path: Path, text: str = APPS) -> Path:
    path.write_text(text)
    return path


def test_sync_a_file_then_ls(site: Any) -> None:
    out = ok("app", "sync", _write(site.path / "apps.py"), "--site", "test-site").stdout
    assert f"Synced Hello (id {sid(1)}) to site test-site" in out and f"Synced Adder (id {sid(2)})" in out and "Shouter" in out
    assert "Base" not in out
    table = ok("app", "ls", "--site", "test-site").stdout
    assert table.splitlines()[0].split() == ["ID", "Name", "Site", "Kind", "Parameters", "Description"]
    assert "greeting='Hello', say_hello_to" in table or "say_hello_to, greeting='Hello'" in table
    assert "x, y=2" in table
    apps = {a["name"]: a for a in json.loads(ok("app", "ls", "--json", "--site", "test-site").stdout)}
    assert apps["Hello"]["kind"] == "shell" and apps["Adder"]["kind"] == "python"
    assert apps["Hello"]["description"] == "Says hello."
    verbose = ok("app", "ls", "-v", "--site", "test-site").stdout
    assert "param greeting: default 'Hello' - the word" in verbose and "param say_hello_to: required" in verbose


def test_synced_apps_run_their_helpers(site: Any) -> None:
    ok("app", "sync", _write(site.path / "apps.py"), "--site", "test-site")
    from balsam.api import ApplicationDefinition

    shouter = ApplicationDefinition.load_by_name("Shouter", "test-site")
    assert shouter(None).run("hi") == "HI"
    hello = ApplicationDefinition.load_by_name("Hello", "test-site")
    assert hello.render_command({"say_hello_to": "you"}) == "echo Hello, you!"


def test_sync_without_file_uses_the_sites_apps_py(site: Any, monkeypatch: Any) -> None:
    _write(site.path / "apps.py")
    monkeypatch.chdir(site.path)
    assert "Synced Hello" in ok("app", "sync").stdout
    ok("app", "sync", "--json")  # re-sync updates in place
    assert [a["id"] for a in json.loads(ok("app", "ls", "--json").stdout)] == [sid(1), sid(2), sid(3)]


def test_sync_json_and_resync_updates(site: Any) -> None:
    path = _write(site.path / "apps.py")
    first = json.loads(ok("app", "sync", path, "--site", "test-site", "--json").stdout)
    assert [(a["name"], a["id"], a["site"]) for a in first][:2] == [("Hello", sid(1), "test-site"), ("Adder", sid(2), "test-site")]
    _write(path, APPS.replace("Says hello.", "Says hi."))
    ok("app", "sync", path, "--site", "test-site")
    apps = json.loads(ok("app", "ls", "--json", "--site", "test-site").stdout)
    assert len(apps) == 3 and apps[0]["description"] == "Says hi."


def test_sync_failures(site: Any, tmp_path: Path) -> None:
    assert "no such file" in fails("app", "sync", tmp_path / "nope.py", code=2)
    bad = _write(tmp_path / "bad.py", "class Broken(:\n    pass\n")
    assert "bad.py line 1" in fails("app", "sync", bad, code=2)
    empty = _write(tmp_path / "empty.py", "X = 1\n")
    assert "defines no ApplicationDefinition" in fails("app", "sync", empty, "--site", "test-site")
    raising = _write(tmp_path / "raising.py", "raise ImportError('no numpy here')\n")
    assert "importing it failed: ImportError: no numpy here" in fails("app", "sync", raising)
    invalid = _write(tmp_path / "invalid.py", APPS + "\nclass Both(ApplicationDefinition):\n    command_template = 'x'\n"
                     "    def run(self):\n        pass\n")
    assert "define command_template or run(), not both" in fails("app", "sync", invalid)


def test_sync_outside_a_site_without_site_attribute(tmp_path: Path) -> None:
    path = _write(tmp_path / "apps.py")
    assert "not inside a site" in fails("app", "sync", code=2)
    init_site(tmp_path / "s", name="s")
    assert "set site = 'site-name'" in fails("app", "sync", path)
    assert "to site s" in ok("app", "sync", path, "--site", "s").stdout


def test_ls_across_sites(site: Any, tmp_path: Path) -> None:
    init_site(tmp_path / "second", name="second")
    path = _write(tmp_path / "apps.py")
    ok("app", "sync", path, "--site", "test-site")
    ok("app", "sync", path, "--site", "second")
    rows = json.loads(ok("app", "ls", "--site", "all", "--json").stdout)
    assert sorted({r["site"] for r in rows}) == ["second", "test-site"] and len(rows) == 6
    assert "second" in ok("app", "ls", "--site", "test-site,second").stdout
    assert "no site matches 'third'" in fails("app", "ls", "--site", "third")


def test_rm_with_jobs(site: Any, hello: Any) -> None:
    hello.submit("a", say_hello_to="x")
    hello.submit("b", say_hello_to="y")
    err = fails("app", "rm", "Hello")
    assert "not removing app Hello and its 2 jobs" in err
    assert f"Removed app Hello (id {sid(1)}) and 2 jobs" in ok("app", "rm", "Hello", "-y").stdout
    assert json.loads(ok("app", "ls", "--json").stdout) == []
    assert ok("job", "ls", "--json").stdout.strip() == "[]"
    assert "no app 'Hello'" in fails("app", "rm", "Hello", "-y")


def test_rm_by_id(site: Any, adder: Any) -> None:
    result = invoke("app", "rm", str(adder.__app_id__), "-y")
    assert result.exit_code == 0 and "Removed app Adder" in result.stdout
