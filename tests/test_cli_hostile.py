"""Hostile input found by a red-team sweep of every command (see also test_db_fuzz.py): each case below crashed
the CLI (a segmentation fault, or an "unexpected ...Error" instead of a one-line error) before it was fixed.
Each must now end with one ``Error:`` line and a non-zero exit, write nothing, and leave the site usable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest

from balsam.api import BatchJob, Job
from tests.cli_helpers import ROOT, fails, invoke, ok


def _balsam(args: List[bytes], cwd: Path, timeout: float = 120) -> "subprocess.CompletedProcess[bytes]":
    """``python -m balsam ARGS`` as a real process, arguments as raw bytes (a terminal that is not UTF-8)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), COLUMNS="120")
    return subprocess.run([sys.executable.encode(), b"-m", b"balsam", *args], cwd=str(cwd), env=env, capture_output=True,
                          timeout=timeout)


def _one_error_line(done: "subprocess.CompletedProcess[bytes]", code: int) -> str:
    err = done.stderr.decode(errors="replace").strip()
    assert done.returncode == code, f"exit {done.returncode} (wanted {code}): {err[-800:]}"
    assert err.startswith("Error: ") and "\n" not in err and "unexpected" not in err, err[-800:]
    return err


@pytest.mark.parametrize("name, text", [
    ("flow.yaml", "- " + "[" * 100_000 + "]" * 100_000 + "\n"),
    ("block.yaml", "- " * 100_000 + "x\n"),
    ("param.yaml", "- {app: Hello, workdir: a, parameters: {say_hello_to: " + "[" * 3000 + "]" * 3000 + "}}\n"),
], ids=["flow", "block", "param"])
def test_deeply_nested_yaml_job_files_are_refused_not_a_crash(site: Any, hello: Any, tmp_path: Path, name: str, text: str) -> None:
    """libyaml's composer recursed in C without a bound: these files ended the process with SIGSEGV (exit 139)."""
    (tmp_path / name).write_text(text)
    err = _one_error_line(_balsam([b"job", b"create", b"--from", name.encode(), b"--site", b"test-site", b"-y"], tmp_path), 2)
    assert f"{name} line 1: nested more than 64 levels deep" in err
    assert Job.objects.count() == 0


@pytest.mark.parametrize("yaml_kind", ["libyaml", "pure-python"])
def test_yaml_job_files_keep_their_meaning_read_one_record_at_a_time(site: Any, hello: Any, tmp_path: Path, yaml_kind: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded reader still takes a leading '---' and aliases, finds nothing in an empty file, and names the
    line of a second document; with PyYAML's pure-Python loader too (the zipapp's: no libyaml), which the bounded
    reader once could not be made from."""
    if yaml_kind == "pure-python":
        import yaml

        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    path = tmp_path / "jobs.yaml"
    path.write_text("---\n- {app: Hello, workdir: a/1, parameters: &p {say_hello_to: x}}\n- {app: Hello, workdir: a/2, parameters: *p}\n")
    ok("job", "create", "--from", path, "-y")
    assert sorted((j.workdir, j.parameters["say_hello_to"]) for j in Job.objects.all()) == [("a/1", "x"), ("a/2", "x")]
    path.write_text("")
    assert "no job records" in fails("job", "create", "--from", path, "-y", code=2)
    path.write_text("- {app: Hello, workdir: b/1, parameters: {say_hello_to: x}}\n---\n- {}\n")
    assert "jobs.yaml line 2: expected one list of jobs, found another document" in fails("job", "create", "--from", path, "-y", code=2)
    assert Job.objects.count() == 2


@pytest.mark.parametrize("name, text", [
    ("deep.json", "[" * 100_000 + "]" * 100_000),
    ("deep.jsonl", '{"app": "Hello", "workdir": "a", "data": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
    ("param.jsonl", json.dumps({"app": "Hello", "workdir": "a", "parameters": {"say_hello_to": json.loads("[" * 900 + "]" * 900)}}) + "\n"),
], ids=["json", "jsonl", "param"])
def test_deeply_nested_json_job_files_are_one_line_errors(site: Any, hello: Any, tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    err = fails("job", "create", "--from", tmp_path / name, "-y", code=2)
    assert "nested" in err and name in err
    assert Job.objects.count() == 0


def test_a_parameter_nested_past_64_levels_is_refused_by_every_door(site: Any, adder: Any) -> None:
    from balsam.exceptions import ValidationError

    deep: Any = 1
    for _ in range(900):
        deep = [deep]
    with pytest.raises(ValidationError, match="nested more than 64 levels"):
        adder.submit("deep", x=deep)
    assert "nested more than 64 levels" in fails("job", "create", "-a", "Adder", "-w", "d", "-p", "x=" + json.dumps(deep), "-y", code=2)
    assert Job.objects.count() == 0
    shallow: Any = 1
    for _ in range(60):
        shallow = [shallow]
    assert adder.submit("shallow", x=shallow).parameters["x"] == shallow


@pytest.mark.parametrize("args", [
    [b"-w", b"\xff", b"-p", b"say_hello_to=x"],
    [b"-w", b"ok", b"-p", b"say_hello_to=caf\xe9"],
    [b"-w", b"ok", b"-p", b"say_hello_to=x", b"--tag", b"k=\xff\xfe"],
    [b"-w", b"ok", b"-p", b"say_hello_to=x", b"-lp", b"k=\xff"],
])
def test_arguments_that_are_not_utf8_are_refused_in_one_line(site: Any, hello: Any, tmp_path: Path, args: List[bytes]) -> None:
    """A Latin-1 terminal's bytes reach Python as lone surrogates, which SQLite cannot store (UnicodeEncodeError)."""
    err = _one_error_line(_balsam([b"job", b"create", b"-a", b"Hello", *args, b"--site", b"test-site", b"-y"], tmp_path), 2)
    assert "not valid Unicode text" in err
    assert Job.objects.count() == 0
    err = _one_error_line(_balsam([b"job", b"ls", b"--tag", b"k=\xff", b"--site", b"test-site"], tmp_path), 2)
    assert "not valid Unicode text" in err


@pytest.mark.parametrize("text", ['{"sites": {"s": 5}}', '{"sites": {"s": {}}}', '{"sites": {"s": {"id": "x", "path": "/p"}}}',
                                  '{"sites": {"s": {"id": 1, "path": null}}}', "[" * 100_000 + "]" * 100_000],
                         ids=["int", "empty", "str-id", "null-path", "deep"])
def test_a_damaged_site_registry_is_named_in_one_line(site: Any, balsam_home: Path, text: str) -> None:
    (balsam_home / "sites.json").write_text(text)
    for args in (["site", "ls"], ["job", "ls"], ["job", "ls", "--site", "test-site"]):
        err = fails(*args, code=1)
        assert "sites.json" in err and "fix or remove it" in err


@pytest.mark.parametrize("content", [b"\xff\xfe\x00 not text", ("a: " + "[" * 5000 + "]" * 5000 + "\n").encode()], ids=["binary", "deep"])
def test_a_damaged_settings_file_is_named_not_a_crash(site: Any, content: bytes) -> None:
    """``site status`` and ``which`` still report (with a warning naming the file) instead of "unexpected ...Error"."""
    (site.path / "settings.yml").write_bytes(content)
    for args in (["site", "status", "--site", "test-site"], ["which", "--site", "test-site"]):
        result = invoke(*args)
        said = result.stdout + result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "settings.yml" in said and ("not UTF-8" in said or "nested too deeply" in said), said
        assert "unexpected" not in said and "Traceback" not in said


def test_integers_past_64_bits_are_refused_or_clamped_not_an_overflow(site: Any, hello: Any) -> None:
    from balsam.exceptions import ValidationError

    job = hello.submit("x", say_hello_to="x")
    assert str(job.id) in ok("job", "ls", "--limit", str(2**63)).stdout
    assert "out of range" in fails("queue", "ls", "--scheduler-id", str(2**64), code=2)
    assert "No jobs match" in ok("job", "ls", "-i", str(10**30)).stdout
    assert list(Job.objects.filter(id=10**30)) == []  # an id no site can have
    with pytest.raises(ValidationError, match="out of range"):
        list(Job.objects.filter(return_code=2**70))
    with pytest.raises(ValidationError, match="out of range"):
        BatchJob.objects.filter(scheduler_id=-(2**63) - 1).count()
    assert [j.id for j in Job.objects.all()[: 10**30]] == [job.id]


@pytest.mark.parametrize("fields, message", [
    ({"queue": ["local"]}, "queue must be a string"),
    ({"project": {"a": 1}}, "project must be a string"),
    ({"queue": "local\n"}, "control characters"),
    ({"optional_params": 5}, "optional_params must be a dict"),
    ({"filter_tags": "x"}, "filter_tags must be a dict"),
    ({"partitions": 3}, "partitions must be a list"),
    ({"partitions": [7]}, "a partition must be"),
    ({"partitions": [{"job_mode": "mpi", "num_nodes": "x"}]}, "partition num_nodes must be an integer"),
])
def test_batch_jobs_of_the_wrong_types_are_refused_by_name(site: Any, fields: Any, message: str) -> None:
    from balsam.exceptions import ValidationError

    base = {"num_nodes": 1, "wall_time_min": 5, "job_mode": "mpi", "queue": "local", "project": "local"}
    with pytest.raises(ValidationError, match=message):
        BatchJob.objects.create(**dict(base, **fields))
    assert BatchJob.objects.count() == 0
    assert invoke("queue", "ls").exit_code == 0


@pytest.mark.parametrize("free_kb", [0, 64, 160, 320])
def test_site_init_on_a_full_disk_says_so_and_leaves_nothing_behind(balsam_home: Path, small_disk: Path, free_kb: int) -> None:
    """SQLite ends its transaction itself when the disk fills: the ROLLBACK that followed failed and hid the reason
    ("site database error: cannot rollback - no transaction is active")."""
    from tests.helpers import fill

    fill(small_disk / "filler")
    with open(small_disk / "filler", "r+b") as f:
        f.truncate(max(0, f.seek(0, 2) - free_kb * 1024))
    result = invoke("site", "init", small_disk / "new-site", "-n", "new-site")
    if result.exit_code != 0:
        err = result.stderr.strip()
        assert err.startswith("Error: ") and "\n" not in err and "rollback" not in err and "unexpected" not in err, err
        assert "full" in err or "No space left" in err, err
        assert not (small_disk / "new-site").exists()
    (small_disk / "filler").unlink()
    if result.exit_code != 0:
        ok("site", "init", small_disk / "new-site", "-n", "new-site")  # nothing half made, and the name was not left taken
    assert ok("job", "ls", "--site", "new-site").stdout.strip() == "No jobs at new-site."


def test_when_every_site_is_unreadable_the_error_says_so(site: Any, tmp_path: Path) -> None:
    (site.path / ".balsam" / "site.db").write_bytes(b"garbage" * 1000)
    result = invoke("job", "ls")
    assert result.exit_code == 1 and "warning: skipped site 'test-site'" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: no readable Balsam site: test-site skipped (see the warning above)"


def test_a_deeply_nested_dag_file_is_refused_quickly(site: Any, tmp_path: Path) -> None:
    """PyYAML's scanner is quadratic in the nesting depth: a 20,000-deep DAG file took minutes (a hang)."""
    import time

    path = tmp_path / "dag.yml"
    path.write_text("name: d\nnodes: " + "[" * 20_000 + "]" * 20_000 + "\n")
    started = time.monotonic()
    assert "dag.yml line 2: nested more than 64 levels deep" in fails("dag", "create", path, code=2)
    assert time.monotonic() - started < 30


def test_a_device_is_not_read_as_a_job_file(site: Any, hello: Any) -> None:
    """``--from /dev/zero`` read forever."""
    assert "/dev/zero: a device, not a file of jobs" in fails("job", "create", "--from", "/dev/zero", "--format", "jsonl", "-y", code=2)
    assert "not a regular file" in fails("dag", "create", "/dev/zero", code=2)


def test_commands_on_a_full_disk_say_the_disk_is_full_and_work_again_when_space_is_back(balsam_home: Path,
                                                                                       small_disk: Path) -> None:
    """A process opening the site DB when its disk is full (SQLite cannot size the WAL index, a 'disk I/O error')
    was told the DB was 'not a Balsam site DB, or corrupt'; nothing was wrong with it but the space."""
    from tests.cli_helpers import run_process
    from tests.helpers import fill

    root = small_disk / "s"
    ok("site", "init", root, "-n", "s")
    (root / "app.py").write_text("from balsam.api import ApplicationDefinition\n\n\nclass Echo(ApplicationDefinition):\n"
                                 "    site = 's'\n    command_template = 'echo {{ x }}'\n")
    assert run_process("app", "sync", "app.py", cwd=root).returncode == 0
    assert run_process("job", "create", "-a", "Echo", "-w", "a/1", "--param", "x=1", cwd=root).returncode == 0
    fill(small_disk / "filler")
    for args in (["job", "create", "-a", "Echo", "-w", "a/2", "--param", "x=2"], ["job", "ls"]):
        done = run_process(*args, cwd=root)
        err = done.stderr.strip()
        assert done.returncode == 1 and err.startswith("Error: ") and "\n" not in err, err
        assert "the disk holding it is full" in err and "corrupt" not in err, err
    (small_disk / "filler").unlink()
    assert run_process("job", "create", "-a", "Echo", "-w", "a/3", "--param", "x=3", cwd=root).returncode == 0
    listing = run_process("job", "ls", cwd=root).stdout
    assert "a/1" in listing and "a/3" in listing and "a/2" not in listing
    check = run_process("db", "check", cwd=root)
    assert check.returncode == 0 and "ok" in check.stdout


def test_a_tag_filter_that_is_not_utf8_is_refused_where_the_state_is_filtered_too(site: Any, hello: Any, tmp_path: Path) -> None:
    """``job kill`` and ``job reset`` filter on states as well: the tag index was probed with the text before it was
    checked, and the user got "unexpected UnicodeEncodeError"."""
    Job(workdir="w/1", app_id="Hello", parameters={"say_hello_to": "x"}, tags={"workflow": "w"}).save()
    for command in (b"kill", b"reset"):
        err = _one_error_line(_balsam([b"job", command, b"--workflow", b"\xff", b"--site", b"test-site", b"-y"], tmp_path), 2)
        assert err == "Error: tags: '\\udcff' is not valid Unicode text"
    assert [j.state.value for j in Job.objects.all()] == ["STAGED_IN"]


def test_relay_user_commands_with_a_name_that_is_not_utf8_say_there_is_no_such_user(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy", reason="the relay needs its extra (balsam[relay])")
    db = f"sqlite:///{tmp_path / 'relay.db'}".encode()
    for args in ([b"token", b"ls", b"\xff"], [b"token", b"revoke", b"\xff", b"1"]):
        err = _one_error_line(_balsam([b"relay", *args, b"--db", db], tmp_path), 1)
        assert err == "Error: no user '\\udcff'"
    done = subprocess.run([sys.executable, "-m", "balsam", "relay", "user", "passwd", b"\xff".decode(errors="surrogateescape"),
                           "--password-stdin", "--db", db.decode()], input=b"a-long-password\n", capture_output=True, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert _one_error_line(done, 1) == "Error: no user '\\udcff'"


def _bash(script: str, cwd: Path) -> "subprocess.CompletedProcess[str]":
    """``script`` under bash, with ``$BALSAM`` running this checkout's ``python -m balsam``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), BALSAM=f"{sys.executable} -m balsam")
    return subprocess.run(["bash", "-c", script], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=120)


def test_a_command_run_with_stdout_or_stderr_closed_ends_without_a_traceback(site: Any, hello: Any, tmp_path: Path) -> None:
    """``balsam job ls >&-``: Python has no sys.stdout there, and the final flush raised AttributeError with a traceback."""
    Job(workdir="w/1", app_id="Hello", parameters={"say_hello_to": "x"}).save()
    done = _bash("$BALSAM job ls --site test-site >&-", tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = _bash("$BALSAM job ls --site nowhere >&-", tmp_path)
    assert done.returncode == 1 and done.stderr == "Error: no site matches 'nowhere' by name, id or path (known sites: test-site)\n"
    done = _bash("$BALSAM job create -a Hello -w w/2 -p say_hello_to=y --site test-site >&- 2>&-", tmp_path)
    assert done.returncode == 0 and Job.objects.count() == 2


def test_a_working_directory_that_was_removed_is_inside_no_site(site: Any, hello: Any, tmp_path: Path) -> None:
    """A shell left in a removed directory: 'job ls' said "Error: No such file or directory" and nothing else."""
    Job(workdir="w/1", app_id="Hello", parameters={"say_hello_to": "x"}).save()
    (tmp_path / "gone").mkdir()
    done = _bash("cd gone && rmdir ../gone && exec $BALSAM job ls", tmp_path)
    assert done.returncode == 0 and "w/1" in done.stdout, done.stderr
    (tmp_path / "gone").mkdir()
    done = _bash("cd gone && rmdir ../gone && exec $BALSAM site init new-site", tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == (
        "Error: the working directory no longer exists: cd to one that does, or give absolute paths"), done.stderr


@pytest.mark.parametrize("name, text, message", [
    ("dup.yaml", "- {app: Hello, workdir: a, workdir: b, parameters: {say_hello_to: x}}\n",
     "dup.yaml line 1: not valid YAML: the key 'workdir' is given twice"),
    ("param.yaml", "- app: Hello\n  workdir: a\n  parameters:\n    say_hello_to: x\n    say_hello_to: y\n",
     "param.yaml line 5: not valid YAML: the key 'say_hello_to' is given twice"),
    ("alias.yaml", "- {app: Hello, w: a, workdir: b, parameters: {say_hello_to: x}}\n",
     "alias.yaml line 1: 'workdir' gives workdir again (after 'w')"),
    ("dup.jsonl", '{"app": "Hello", "workdir": "a", "workdir": "b", "parameters": {"say_hello_to": "x"}}\n',
     "dup.jsonl line 1: not valid JSON: the key 'workdir' is given twice"),
    ("dup.json", '[{"app": "Hello", "workdir": "a", "parameters": {"say_hello_to": "x", "say_hello_to": "y"}}]',
     "dup.json: not valid JSON: the key 'say_hello_to' is given twice"),
    ("dup.csv", "app,workdir,workdir,param.say_hello_to\nHello,a,b,x\n", "dup.csv line 1: the column 'workdir' is given twice"),
    ("column.csv", "app,workdir,param.say_hello_to,parameters\nHello,a,x,say_hello_to=y\n",
     "column.csv line 2: 'parameters' gives parameters entry 'say_hello_to' again (after 'param.say_hello_to')"),
    ("cell.csv", 'app,workdir,param.say_hello_to,tags\nHello,a,x,"k=1;k=2"\n', "cell.csv line 2: tags: the key 'k' is given twice"),
    ("text.yaml", "- {app: Hello, workdir: a, parameters: {say_hello_to: x}, tags: {1: a, '1': b}}\n",
     "text.yaml line 1: tags entry '1' is given twice in 'tags'"),
    ("super.csv", "app,workdir,param.say_hello_to,num_nodes\nHello,a,x,\u00b2\n", "super.csv line 2: num_nodes: expected an integer, got '\u00b2'"),
], ids=["yaml", "yaml-param", "alias", "jsonl", "json-param", "csv-header", "csv-column", "csv-cell", "as-text", "superscript"])
def test_a_job_file_that_gives_a_field_twice_or_a_bad_count_is_refused_by_line(site: Any, hello: Any, tmp_path: Path, name: str, text: str,
                                                                   message: str) -> None:
    """Every reader kept the last of two values silently (one job in 'b' where the user wrote 'a' too); YAML and JSON
    objects require unique keys, and a careless merge of two columns must not pick one for the user."""
    (tmp_path / name).write_text(text)
    assert message in fails("job", "create", "--from", tmp_path / name, "-y", code=2)
    assert Job.objects.count() == 0


def test_a_yaml_merge_key_may_still_be_overridden(site: Any, hello: Any, tmp_path: Path) -> None:
    """``<<: *base`` then the key again is YAML's way to override a shared default, not a key given twice."""
    path = tmp_path / "merge.yaml"
    path.write_text("- &base {app: Hello, workdir: m/1, parameters: {say_hello_to: x}}\n- {<<: *base, workdir: m/2}\n")
    ok("job", "create", "--from", path, "-y")
    assert sorted(j.workdir for j in Job.objects.all()) == ["m/1", "m/2"]


def test_a_key_given_twice_with_two_values_on_the_command_line_is_refused(site: Any, hello: Any) -> None:
    """``-p x=1 -p x=2`` kept the last value silently (a job with x=2, or a filter on one of two tags); the same
    value twice is no contradiction."""
    err = fails("job", "create", "-a", "Hello", "-w", "kv/1", "-p", "say_hello_to=a", "-p", "say_hello_to=b", "-y", code=2)
    assert "'say_hello_to' is given twice (say_hello_to=a and say_hello_to=b)" in err
    assert "'k' is given twice (k=1 and k=2)" in fails("job", "ls", "--tag", "k=1", "--tag", "k=2", code=2)
    assert Job.objects.count() == 0
    ok("job", "create", "-a", "Hello", "-w", "kv/1", "-p", "say_hello_to=a", "-p", "say_hello_to=a", "-y")
    assert [j.parameters for j in Job.objects.all()] == [{"say_hello_to": "a"}]


def test_text_a_job_wrote_is_shown_not_obeyed_by_the_terminal(site: Any, hello: Any) -> None:
    """An error message holds what the job printed or raised: its escape sequences (a window title, a cleared screen,
    OSC 52 setting the clipboard) went to the terminal as they were in 'balsam job show' (Why:, History:)."""
    from balsam.cli._common import render_table
    from balsam.db.jobs import StateChange, apply_state_changes

    job = hello.submit("esc/1", say_hello_to="x")
    hostile = "boom \x1b]0;owned\x07 \x1b[2J \x1b]52;c;ZWNobyBoaQ==\x07 \x9b31m done"
    with site.store.write() as conn:
        apply_state_changes(conn, [StateChange(job.id, "FAILED", data={"message": hostile})])
    out = ok("job", "show", job.id).stdout
    assert not set(out) & {"\x1b", "\x07", "\x9b"}, repr(out)
    assert "boom \\x1b]0;owned\\x07 \\x1b[2J \\x1b]52;c;ZWNobyBoaQ==\\x07 \\x9b31m done" in out
    table = render_table(["ID", "Note"], [[1, hostile + "\nsecond line"]], width=400)
    assert "\x1b" not in table and "\\x1b]0;owned" in table and "done second line" in table


@pytest.mark.parametrize("name, text", [
    ("excel.csv", "app,workdir,param.say_hello_to\r\nHello,bom/1,x\r\n"),
    ("notepad.json", '[{"app": "Hello", "workdir": "bom/1", "parameters": {"say_hello_to": "x"}}]'),
    ("notepad.jsonl", '{"app": "Hello", "workdir": "bom/1", "parameters": {"say_hello_to": "x"}}\n'),
], ids=["csv", "json", "jsonl"])
def test_a_job_file_that_starts_with_a_byte_order_mark_is_read(site: Any, hello: Any, tmp_path: Path, name: str, text: str) -> None:
    """Excel's "CSV UTF-8" and Notepad start the file with a byte order mark: the first column was an unknown field
    '\\ufeffapp', and JSON was "Unexpected UTF-8 BOM"."""
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    ok("job", "create", "--from", tmp_path / name, "-y")
    assert [(j.workdir, j.parameters) for j in Job.objects.all()] == [("bom/1", {"say_hello_to": "x"})]


def test_a_huge_value_refused_by_name_is_shown_in_a_few_characters(site: Any, hello: Any, tmp_path: Path) -> None:
    """A list of 200,000 numbers given for num_nodes was written out whole in the error: a 2 MB "one line"."""
    path = tmp_path / "big.yaml"
    path.write_text("- {app: Hello, workdir: a, parameters: {say_hello_to: x}, num_nodes: [" + ",".join(["123456789"] * 200_000) + "]}\n")
    err = fails("job", "create", "--from", path, "-y", code=2)
    assert err.startswith(f"Error: {path} line 1: num_nodes: expected an integer, got [123456789, ") and len(err) < 300, err[:400]
