"""``balsam site``: init (interactive and not), ls, mv, rm, rename, rename-host, sync, presets, sample-settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from balsam.site import Registry, SiteLayout
from tests.cli_helpers import fails, ok


def _site_row(root: Path) -> Any:
    import sqlite3

    conn = sqlite3.connect(str(root / ".balsam" / "site.db"))
    try:
        return conn.execute("SELECT name, path, allowed_queues FROM site").fetchone()
    finally:
        conn.close()


def test_init_without_a_terminal_uses_the_defaults(tmp_path: Path) -> None:
    out = ok("site", "init", "my-site").stdout
    assert "Created site 'my-site'" in out and "preset local" in out
    entry = Registry().lookup("my-site")
    assert entry.path == str(tmp_path / "my-site")
    assert SiteLayout(tmp_path / "my-site").preset() == "local"
    assert (tmp_path / "my-site" / "settings.yml").is_file() and (tmp_path / "my-site" / "data").is_dir()


def test_init_with_name_and_preset(tmp_path: Path) -> None:
    ok("site", "init", "dir", "-n", "polaris-site", "--preset", "polaris")
    assert Registry().lookup("polaris-site").path == str(tmp_path / "dir")
    assert SiteLayout(tmp_path / "dir").preset() == "polaris"


def test_init_asks_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.cli.site as site_cli

    monkeypatch.setattr(site_cli, "is_interactive", lambda: True)
    names = [p[0] for p in site_cli._presets()]
    result = ok("site", "init", "asked", input=f"nonsense\n{names.index('slurm') + 1}\nchosen-name\n")
    assert "Presets:" in result.stdout and "slurm" in result.stdout
    assert "Choose 1-" in result.stderr
    assert Registry().lookup("chosen-name").path == str(tmp_path / "asked")
    assert SiteLayout(tmp_path / "asked").preset() == "slurm"


def test_init_says_what_to_do_next(tmp_path: Path) -> None:
    out = ok("site", "init", "first").stdout
    assert f"Next (inside {tmp_path / 'first'} every command finds the site by itself; elsewhere add --site first)" in out
    for step in ("balsam site start", "balsam app sync apps.py", "balsam docs using balsam", "balsam job create -a APP",
                 "balsam queue submit -n 1 -t 10"):
        assert step in out
    assert "## Using Balsam" in ok("docs", "using", "balsam").stdout  # the section that next step names


def test_init_forgives_a_preset_in_capitals_and_suggests_for_a_typo(tmp_path: Path) -> None:
    ok("site", "init", "caps", "--preset", "Polaris")
    assert SiteLayout(tmp_path / "caps").preset() == "polaris"
    assert "unknown preset 'polris' (Did you mean 'polaris'?)" in fails("site", "init", "typo", "--preset", "polris", code=2)
    assert not (tmp_path / "typo").exists()


def test_init_refuses_unknown_preset_and_existing_site(site: Any) -> None:
    assert "unknown preset 'nope'" in fails("site", "init", "x", "--preset", "nope", code=2)
    assert "already a Balsam site" in fails("site", "init", str(site.path))
    assert "invalid site name" in fails("site", "init", "y", "-n", "bad name!", code=2)


KILLED_AROUND = '''
import importlib, os, signal, sys
when, dotted = sys.argv[1].split(":")
*mod, owner, name = dotted.split(".")
holder = getattr(importlib.import_module(".".join(mod)), owner)
real = getattr(holder, name)
def killed(*args, **kwargs):  # kill -9 of this process just before, or just after, the call
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
setattr(holder, name, killed)
sys.argv = ["balsam", *sys.argv[2:]]
from balsam.cli import main
main()
'''


@pytest.mark.parametrize("at", ["before:balsam.db.connection.Store.create", "after:balsam.db.connection.apply_migrations"])
def test_an_init_killed_half_way_is_finished_by_running_it_again(tmp_path: Path, at: str) -> None:
    """``balsam site init`` killed with kill -9 once it wrote the site's files but before its DB was whole (no DB yet,
    or its tables without the site's own row): running the same command again makes the site, instead of refusing
    ('already a Balsam site', with a DB no command could use, or 'not an empty directory'), and the site works."""
    import subprocess
    import sys

    from tests.cli_helpers import ROOT

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_AROUND, at, "site", "init", str(tmp_path / "half"), "-n", "half"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert (tmp_path / "half" / "settings.yml").exists()  # killed half way: the files are there
    assert "Created site 'half'" in ok("site", "init", str(tmp_path / "half"), "-n", "half").stdout
    ok("job", "ls", "--site", "half")
    assert ": ok" in ok("db", "check", "--site", str(tmp_path / "half")).stdout
    assert [e.name for e in Registry().entries()] == ["half"]


def test_ls_lists_sites_with_their_status(site: Any, tmp_path: Path) -> None:
    Registry().register("faraway", tmp_path / "elsewhere", "other-host", "u1")
    Registry().register("gone", tmp_path / "gone", "", "u2")
    out = ok("site", "ls").stdout
    assert out.splitlines()[0].split() == ["ID", "Name", "Host", "Active", "Jobs", "Status", "Path"]
    assert "test-site" in out and "ok" in out
    assert "faraway" in out and "on other-host: not reachable from here" in out
    assert "missing" in out
    rows = {r["name"]: r for r in json.loads(ok("site", "ls", "--json").stdout)}
    assert rows["test-site"]["jobs"] == 0 and rows["test-site"]["preset"] == "local"
    assert rows["faraway"]["status"].startswith("on other-host")


def test_ls_verbose_counts_jobs_by_state(site: Any, hello: Any) -> None:
    hello.submit("a", say_hello_to="x")
    out = ok("site", "ls", "-v").stdout
    assert "by state:" in out and "STAGED_IN 1" in out and "preset:" in out


def test_ls_without_sites() -> None:
    assert "No sites registered" in ok("site", "ls").stdout


def test_mv_moves_directory_registry_and_site_row(site: Any, hello: Any, tmp_path: Path) -> None:
    hello.submit("a", say_hello_to="x")
    (tmp_path / "dest").mkdir()
    out = ok("site", "mv", str(site.path), str(tmp_path / "dest")).stdout
    new = tmp_path / "dest" / "test-site"
    assert f"Moved site to {new}" in out
    assert not site.path.exists() and SiteLayout(new).is_site()
    assert Registry().lookup("test-site").path == str(new)
    assert _site_row(new)[1] == str(new)
    assert json.loads(ok("job", "ls", "--by-state", "--json", "--site", "test-site").stdout) == {"STAGED_IN": 1}


def test_mv_refuses_an_existing_target(site: Any, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "test-site").mkdir()
    assert "already exists" in fails("site", "mv", "test-site", str(tmp_path / "taken"))
    assert site.path.exists()


def test_rm_asks_then_deletes(site: Any, tmp_path: Path) -> None:
    assert "without confirmation" in fails("site", "rm", str(site.path))
    assert site.path.exists()
    assert "Deleted site" in ok("site", "rm", str(site.path), "-f").stdout
    assert not site.path.exists()
    assert Registry().entries() == []


def test_rm_refuses_while_a_launcher_holds_jobs(site: Any, hello: Any) -> None:
    from balsam.api import Session
    from tests.helpers import advance

    job = hello.submit("a", say_hello_to="x")
    advance(job, "PREPROCESSED")
    session = Session(site_name="test-site")
    session.save()
    assert session.acquire_jobs()
    err = fails("site", "rm", "test-site", "-f")
    assert "launchers hold 1 jobs" in err
    assert site.path.exists()


def test_rm_of_a_registered_but_missing_site_unregisters_it(tmp_path: Path) -> None:
    Registry().register("gone", tmp_path / "gone", "", "u")
    ok("site", "rm", str(tmp_path / "gone"), "-y")
    assert Registry().entries() == []


def test_rename(site: Any) -> None:
    assert "Renamed site 'test-site' to 'prod'" in ok("site", "rename", str(site.path), "prod").stdout
    assert Registry().lookup("prod").path == str(site.path)
    assert _site_row(site.path)[0] == "prod"
    ok("site", "init", "other")
    assert "already exists" in fails("site", "rename", "other", "prod")


def test_rename_host(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALSAM_HOSTNAME", "new-login-node")
    assert "belongs to host" in fails("job", "ls", "--site", str(site.path))
    out = ok("site", "rename-host", str(site.path)).stdout
    assert "home host is now 'new-login-node'" in out
    assert SiteLayout(site.path).home_host() == "new-login-node"
    assert Registry().lookup("test-site").host == "new-login-node"
    ok("job", "ls", "--site", "test-site")


def test_rename_host_refuses_while_the_agent_runs_on_the_old_host(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    old = SiteLayout(site.path).home_host()
    SiteLayout(site.path).agent_pid_path.write_text("4242\n")  # the agent records only its pid: it runs on the home host
    monkeypatch.setenv("BALSAM_HOSTNAME", "new-login-node")
    err = fails("site", "rename-host", str(site.path))
    assert f"pid 4242 on host {old!r}" in err and "--force" in err
    assert SiteLayout(site.path).home_host() == old
    ok("site", "rename-host", str(site.path), "--force")
    assert SiteLayout(site.path).home_host() == "new-login-node"


def test_rename_host_ignores_a_stale_pid_file_on_this_host(site: Any) -> None:
    SiteLayout(site.path).agent_pid_path.write_text(f"{os.getpid() + 99999} \n")
    ok("site", "rename-host", str(site.path))
    from balsam.site import this_host

    assert SiteLayout(site.path).home_host() == this_host()


def test_sync_refreshes_policies_from_settings(site: Any) -> None:
    settings = site.layout.settings_path
    text = settings.read_text()
    import yaml

    data = yaml.safe_load(text)
    data.setdefault("scheduler", {})["allowed_queues"] = {"debug": {"max_nodes": 2, "max_wall_time_min": 30, "max_queued_jobs": 1}}
    settings.write_text(yaml.safe_dump(data))
    out = ok("site", "sync", "--site", "test-site").stdout
    assert "queues: debug" in out
    assert json.loads(_site_row(site.path)[2]) == {"debug": {"max_nodes": 2, "max_wall_time_min": 30, "max_queued_jobs": 1}}
    assert "queue 'local' is not allowed" in fails("queue", "submit", "-n", "1", "-t", "5", "-q", "local", "--site", "test-site", code=2)


def test_sync_rejects_malformed_settings(site: Any) -> None:
    settings = site.layout.settings_path
    settings.write_text(settings.read_text() + "\nlauncher:\n  idle_ttl_s: 3\n  bogus_key: 1\n")
    err = fails("site", "sync", "--site", "test-site", code=2)
    assert "bogus_key" in err
    settings.write_text("scheduler: [unclosed\n")
    assert "not valid YAML (line" in fails("site", "sync", "--site", "test-site", code=2)


def test_presets_and_sample_settings(site: Any) -> None:
    out = ok("site", "presets").stdout
    assert out.splitlines()[0].split()[:2] == ["Preset", "Machine"]
    assert "local" in out and "polaris" in out
    rows = {r["name"]: r for r in json.loads(ok("site", "presets", "--json").stdout)}
    assert rows["polaris"]["scheduler"] == "pbs"
    written = site.layout.settings_path.read_text().splitlines(keepends=True)
    found = [line for line in written if line.strip().startswith("# at site init")]
    assert len(found) == 1 and "MPI " in found[0]  # site init notes the MPI it found above mpi_launcher: auto
    assert ok("site", "sample-settings").stdout == "".join(line for line in written if line not in found)
    assert "pbs" in ok("site", "sample-settings", "--preset", "polaris").stdout
    assert "unknown preset" in fails("site", "sample-settings", "--preset", "nope", code=2)


@pytest.mark.parametrize("section,key,value,message", [
    ("session", "expiry_s", 0, "session.expiry_s: must be between 5 and 604800 seconds, got 0"),
    ("session", "heartbeat_period_s", 200, "session.expiry_s \\(300\\) must be at least twice session.heartbeat_period_s"),
    ("launcher", "status_flush_period_s", 100000, "launcher.status_flush_period_s: must be between"),
    ("scheduler", "command_timeout_s", 0.5, "scheduler.command_timeout_s: must be between 1 and 3600 seconds"),
])
def test_timing_settings_that_cannot_work_are_refused_at_sync_and_start(site: Any, section: str, key: str, value: float,
                                                                        message: str) -> None:
    import yaml

    settings = site.layout.settings_path
    data = yaml.safe_load(settings.read_text()) or {}
    data.setdefault(section, {})[key] = value
    settings.write_text(yaml.safe_dump(data))
    import re

    assert re.search(message, fails("site", "sync", "--site", "test-site", code=2))
    assert re.search(message, fails("site", "start", "--site", str(site.path)))


def test_timing_ranges_hold_for_settings_built_in_code() -> None:
    from balsam.exceptions import ConfigError
    from balsam.settings import SessionSettings

    with pytest.raises(ConfigError, match="session.expiry_s: must be between"):
        SessionSettings(expiry_s=0)
    assert SessionSettings(heartbeat_period_s=1, expiry_s=10).expiry_s == 10


@pytest.mark.parametrize("setting,template,message", [
    ("type: pbz", None, "scheduler.type 'pbz' is not known (known: "),
    ("job_template: missing.sh", None, "no file"),
    (None, "#!/bin/bash\n{{ balsam }} launcher {% if %}\n", "line 2: Jinja syntax error"),
    (None, "#!/bin/bash\n{{ balsm }} launcher\n", "unknown name 'balsm'"),
], ids=["scheduler-type", "template-file", "jinja-syntax", "unknown-name"])
def test_sync_checks_what_settings_name(site: Any, setting: Any, template: Any, message: str) -> None:
    """``site sync`` refuses, in one line, what would otherwise fail later in the agent (defect 9)."""
    import yaml

    if setting is not None:
        data = yaml.safe_load(site.layout.settings_path.read_text())
        key, value = setting.split(": ")
        data.setdefault("scheduler", {})[key] = value
        site.layout.settings_path.write_text(yaml.safe_dump(data))
    if template is not None:
        site.layout.job_template_path.write_text(template)
    assert message in fails("site", "sync", "--site", "test-site", code=2)


def test_agent_commands_take_the_site_by_name_as_every_other_command(site: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`balsam site status --site NAME` (as the README and the CLI's own hints write it) said 'not a Balsam site'
    outside the site's parent directory: the agent's commands took --site as a path only."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.delenv("BALSAM_SITE_PATH", raising=False)
    out = ok("site", "status", "--site", "test-site").stdout
    assert out.startswith("agent: not running")
    assert f"  serial-mode launchers: {site.path}/log/serial_mode_*.log" in out  # was 'launchers:/...'
    assert ok("site", "stop", "--site", "test-site").stdout.strip() == "The site agent is not running"
    assert ok("site", "status", "--site", str(site.id)).stdout.startswith("agent: not running")
    err = fails("site", "status", "--site", "no-such-site")
    assert "no-such-site" in err and "test-site" in err, err
