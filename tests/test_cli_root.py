"""The ``balsam`` command as a whole: help everywhere, lazy start-up, errors and exit codes, aliases, completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import click
import pytest

from balsam import __version__
from balsam.cli import COMMANDS, cli
from tests.cli_helpers import ROOT, fails, invoke, ok, run_process


def _walk(group: click.Group, path: List[str]) -> Iterator[Tuple[List[str], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if cmd.hidden:
            continue  # internal (what other commands spawn), not for users
        yield [*path, name], cmd
        if isinstance(cmd, click.Group):
            yield from _walk(cmd, [*path, name])


def test_every_command_has_help_with_an_example() -> None:
    seen = []
    for path, cmd in _walk(cli, []):
        result = ok(*path, "--help")
        assert "Example" in result.stdout, f"'balsam {' '.join(path)} --help' shows no example"
        assert cmd.help and len(cmd.help.split("\n")[0]) > 10, path
        seen.append(" ".join(path))
    for expected in ("site init", "site ls", "site mv", "site rm", "site rename", "site rename-host", "site sync", "site presets",
                     "site sample-settings", "app ls", "app rm", "app sync", "job create", "job ls", "job modify", "job rm",
                     "job reset", "job kill", "job dep", "job show", "job log", "queue submit", "queue ls", "queue rm", "queue term",
                     "db check", "db backup", "db vacuum", "db migrate", "which", "submit-launch", "site start", "site stop",
                     "site status", "service start"):
        assert expected in seen


def test_top_level_help_lists_commands_and_completion() -> None:
    out = ok("--help").stdout
    for name in ("site", "app", "job", "queue", "db", "which", "service", "submit-launch"):
        assert f"  {name} " in out
    assert "Create, list, modify, reset, kill and remove jobs." in out
    assert "_BALSAM_COMPLETE=bash_source balsam" in out
    assert "BALSAM_DEBUG=1" in out


def test_version() -> None:
    assert ok("--version").stdout.strip() == f"balsam, version {__version__}"


def test_unknown_command_is_a_one_line_usage_error() -> None:
    err = fails("frobnicate", code=2)
    assert "No such command 'frobnicate'" in err and "balsam --help" in err


def test_bad_option_value_is_a_one_line_usage_error(site: Any) -> None:
    err = fails("job", "ls", "-n", "many", code=2)
    assert "'many' is not a valid integer" in err


def test_balsam_error_is_one_line_with_its_exit_code() -> None:
    err = fails("job", "ls", code=1)
    assert "no Balsam site found" in err


def test_balsam_debug_shows_the_exception() -> None:
    result = invoke("job", "ls", env={"BALSAM_DEBUG": "1"})
    assert result.exit_code == 1
    from balsam.exceptions import SiteNotFound

    assert isinstance(result.exception, SiteNotFound)


def test_unexpected_error_is_one_line_with_a_hint(site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.cli.job as job_module

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(job_module, "_count_by_state", boom)
    err = fails("job", "ls", "--by-state", code=1)
    assert "unexpected RuntimeError: kaboom" in err and "BALSAM_DEBUG=1" in err


def test_optional_entries_are_hidden_until_their_module_exists() -> None:
    names = cli.list_commands(click.Context(cli))
    launcher_exists = (ROOT / "balsam" / "cli" / "launcher.py").exists()
    assert ("launcher" in names) == launcher_exists
    assert COMMANDS["launcher"].optional


def test_aliases_of_balsam_0x(site: Any, hello: Any) -> None:
    ok("job", "create", "-a", "Hello", "-w", "a", "-p", "say_hello_to=x", "-y")
    assert "Hello" in ok("ls").stdout
    assert "pending_submission" in ok("submit-launch", "-n", "1", "-t", "5").stdout
    assert "Killed 1 job" in ok("killjob", "1").stdout


def test_shell_completion_script() -> None:
    result = invoke(env={"_BALSAM_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_balsam_completion" in result.stdout


def test_table_truncates_wide_columns_with_an_ellipsis() -> None:
    from balsam.cli._common import render_table

    text = render_table(["ID", "Workdir", "State"], [[1, "a/very/long/workdir/" * 5, "RUNNING"]], flex=["Workdir"], width=40)
    lines = text.splitlines()
    assert all(len(line) <= 40 for line in lines)
    assert "…" in lines[1] and lines[1].endswith("RUNNING")


# ------------------------------------------------------------------------------------------- real processes
def _imported(args: List[str], cwd: Path) -> List[str]:
    code = (
        "import sys\n"
        "from balsam.cli import main\n"
        f"sys.argv = ['balsam', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(cwd), capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    line = [x for x in proc.stderr.splitlines() if x.startswith("MODULES ")][-1]
    return line.split()[1:]


def test_help_imports_no_command_module(tmp_path: Path) -> None:
    modules = _imported(["--help"], tmp_path)
    assert "balsam.cli" in modules
    for heavy in ("balsam.cli.job", "balsam.cli.site", "balsam.api", "balsam.db", "yaml", "jinja2", "psutil", "sqlite3"):
        assert heavy not in modules, heavy


def test_job_ls_imports_only_what_it_needs(site: Any, tmp_path: Path) -> None:
    for args in (["job", "ls"], ["job", "ls", "--by-state"]):
        modules = _imported(args, site.path)
        assert "balsam.cli.job" in modules
        for heavy in ("yaml", "jinja2", "psutil", "balsam._api.app", "balsam.cli.site", "balsam.cli.queue"):
            assert heavy not in modules, (args, heavy)


def test_real_process_error_has_no_traceback(tmp_path: Path) -> None:
    proc = run_process("job", "ls", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: no Balsam site found") and "Traceback" not in proc.stderr


def test_real_process_round_trip(tmp_path: Path) -> None:
    assert run_process("site", "init", "s", cwd=tmp_path).returncode == 0
    (tmp_path / "s" / "apps.py").write_text(
        "from balsam.api import ApplicationDefinition\n\n"
        "class Hello(ApplicationDefinition):\n    command_template = 'echo hi {{ who }}'\n"
    )
    site_dir = tmp_path / "s"
    assert run_process("app", "sync", cwd=site_dir).returncode == 0
    created = run_process("job", "create", "-a", "Hello", "-w", "x", "-p", "who=me", "--json", cwd=site_dir)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["state"] == "STAGED_IN"
    listed = run_process("job", "ls", "--by-state", "--json", cwd=site_dir)
    assert json.loads(listed.stdout) == {"STAGED_IN": 1}
    piped = subprocess.run(f"{sys.executable} -m balsam job ls | head -c 1", shell=True, cwd=str(site_dir), capture_output=True, text=True,
                           env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert "Error" not in piped.stderr and "Traceback" not in piped.stderr


def _has_open(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a file called ``name`` open."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/" + name) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_ctrl_c_exits_130_quietly(site: Any, hello: Any) -> None:
    import os
    import signal
    import time

    hello.submit("waiting", say_hello_to="x")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "job", "log", "1", "-f"], cwd=str(site.path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a terminal's Ctrl-C, even when pytest runs in the background (SIGINT ignored)
    deadline = time.monotonic() + 60
    while not _has_open(proc.pid, "site.db") and time.monotonic() < deadline:  # started and following (slow start-up under load)
        time.sleep(0.05)
    time.sleep(0.5)  # following: job.out does not exist yet and the job is not done
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert err.strip() == "" and out == ""


def test_a_mistyped_command_names_the_closest_ones() -> None:
    assert "No such command 'jbo'. (Did you mean 'job'?)" in fails("jbo", "ls", code=2)
    assert "(Did you mean 'ls'?)" in fails("job", "lss", code=2)
    err = fails("site", "strat", code=2)
    assert "(Did you mean one of: 'start', 'status'?)" in err and "balsam site --help" in err
    assert "(Did you mean one of: 'rename', 'rename-host'?)" in fails("site", "renam", code=2)
    assert "(Did you mean 'submit'?)" in fails("queue", "sumbit", code=2)
    assert "Did you mean" not in fails("frobnicate", code=2)


def test_a_command_given_to_the_wrong_group_names_the_group_that_has_it() -> None:
    """``balsam site migrate`` and ``balsam job submit`` said only "No such command": the user had to search every
    group's help for the command they remembered."""
    assert "No such command 'submit'. (Did you mean 'balsam queue submit'?)" in fails("job", "submit", code=2)
    assert "(Did you mean 'balsam db backup'?)" in fails("job", "backup", code=2)
    assert "'balsam db migrate'" in fails("site", "migrate", code=2)
    assert "Did you mean" not in fails("site", "frobnicate", code=2)


def test_a_balsam_07_command_with_no_counterpart_says_what_replaced_it() -> None:
    err = fails("register", code=2)
    assert "no server to register with" in err and "balsam relay user add" in err
    assert "'balsam relay serve'" in fails("server", "up", code=2)


def test_output_cut_short_by_a_closed_pipe_ends_quietly(site: Any, hello: Any, tmp_path: Path) -> None:
    """'balsam job ls -v | head' printed 'Error: Broken pipe' (the closed pipe was taken for a command's error)."""
    import os

    from balsam.api import Job

    Job.objects.bulk_create([Job(f"p/{i}", app_id="Hello", parameters={"say_hello_to": "x" * 50}) for i in range(400)])
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120")
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "job", "ls", "-v", "-n", "0"], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"Job ")
    proc.stdout.close()  # like head -1: what is left to print (far more than a pipe holds) meets a closed pipe
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == "", err


def test_ctrl_c_while_the_command_starts_exits_130_quietly(tmp_path: Any) -> None:
    """Ctrl-C while the CLI is still importing (a slow start on a loaded login node): exit 130 and nothing on
    stderr, as later; no traceback. The interrupt is sent when the CLI's import of click begins."""
    import signal

    code = ("import importlib.abc, os, signal, sys\n"
            "class Interrupt(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name == 'click':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['balsam', 'job', 'ls']\n"
            "from balsam.__main__ import run\n"
            "run()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal, even when pytest runs in the background
    assert out.returncode == 130 and out.stderr == "" and out.stdout == "", (out.returncode, out.stderr)
