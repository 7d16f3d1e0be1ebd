"""``balsam job create --from FILE``: YAML, CSV, JSON Lines and JSON records; errors name the line; all or nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from balsam.api import Job
from tests.cli_helpers import fails, ok
from tests.helpers import sid

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host ("login-2") through the agent's HTTP API."""


YAML = """\
# two jobs
- workdir: y/1
  app: Hello
  parameters: {say_hello_to: one}
  tags: {exp: yaml}
  num_nodes: 2
- workdir: y/2
  app: Adder
  parameters:
    x: 3
    y: 4
  t: 10
  rpn: 8
"""


def test_yaml(site: Any, hello: Any, adder: Any, tmp_path: Path) -> None:
    (tmp_path / "jobs.yml").write_text(YAML)
    out = ok("job", "create", "--from", tmp_path / "jobs.yml").stdout
    assert out.strip() == f"Created 2 jobs at site test-site (ids {sid(1)}-{sid(2)})"
    one, two = Job.objects.order_by("id")
    assert one.parameters == {"say_hello_to": "one"} and one.tags == {"exp": "yaml"} and one.num_nodes == 2
    assert two.parameters == {"x": 3, "y": 4} and two.wall_time_min == 10 and two.ranks_per_node == 8


def test_csv_with_prefixed_columns_and_defaults_from_flags(site: Any, adder: Any, tmp_path: Path) -> None:
    parents = [adder.submit(f"parent/{i}", x=i) for i in range(2)]
    (tmp_path / "jobs.csv").write_text(
        "workdir,param.x,tag.exp,num_nodes,parent_ids\n"
        "c/1,1,csv,,\n"
        '"c/2",2,csv,3,1\n'
        "\n"
        "c/3,\"[1, 2]\",other,,1;2\n"
    )
    data = json.loads(ok("job", "create", "--from", tmp_path / "jobs.csv", "-a", "Adder", "--tag", "src=file", "-p", "y=10",
                         "--json").stdout)
    assert data == {"site": "test-site", "created": 3, "first_id": sid(3), "last_id": sid(5)}
    jobs = [j for j in Job.objects.order_by("id") if j not in parents]
    assert [j.parameters for j in jobs] == [{"x": 1, "y": 10}, {"x": 2, "y": 10}, {"x": [1, 2], "y": 10}]  # typed for a Python app
    assert [j.tags for j in jobs] == [{"src": "file", "exp": "csv"}, {"src": "file", "exp": "csv"}, {"src": "file", "exp": "other"}]
    assert [j.num_nodes for j in jobs] == [1, 3, 1]
    assert [j.parent_ids for j in jobs] == [[], [sid(1)], [sid(1), sid(2)]]
    assert [str(j.state) for j in jobs] == ["STAGED_IN", "AWAITING_PARENTS", "AWAITING_PARENTS"]


def test_jsonl_and_json(site: Any, hello: Any, tmp_path: Path) -> None:
    lines = [json.dumps({"workdir": f"j/{i}", "app": "Hello", "params": {"say_hello_to": str(i)}, "tags": {"i": i}}) for i in range(3)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(["# comment", *lines, ""]))
    ok("job", "create", "--from", tmp_path / "jobs.jsonl")
    (tmp_path / "more.json").write_text(json.dumps([{"workdir": "k/0", "a": "Hello", "p": {"say_hello_to": "k"}}]))
    ok("job", "create", "--from", tmp_path / "more.json")
    assert Job.objects.count() == 4
    assert Job.objects.get(workdir="j/2").tags == {"i": "2"}


def test_stdin_with_format(site: Any, hello: Any) -> None:
    text = "workdir,say_hello_to\n"
    assert "unknown field 'say_hello_to'" in fails("job", "create", "--from", "-", "--format", "csv", "-a", "Hello", input=text + "a,b\n",
                                                   code=2)
    ok("job", "create", "--from", "-", "--format", "csv", "-a", "Hello", input="workdir,p.say_hello_to\na,b\n")
    assert Job.objects.get(workdir="a").parameters == {"say_hello_to": "b"}


def test_many_jobs(site: Any, hello: Any, tmp_path: Path) -> None:
    n = 5000
    path = tmp_path / "many.csv"
    path.write_text("workdir,p.say_hello_to,tag.batch\n" + "".join(f"m/{i},n{i},{i // 1000}\n" for i in range(n)))
    assert f"Created {n} jobs" in ok("job", "create", "--from", path, "-a", "Hello").stdout
    assert json.loads(ok("job", "ls", "--by-state", "--json", "--tag", "batch=4").stdout) == {"STAGED_IN": 1000}


@pytest.mark.parametrize("name, text, message", [
    ("bad.yml", YAML + "- workdir: y/3\n  app: Hello\n  nodes: 3\n", "bad.yml line 14: unknown field 'nodes'"),
    ("bad.yml", "- workdir: a\n  app: [unclosed\n", "bad.yml line 3: not valid YAML"),
    ("bad.yml", "workdir: a\n", "bad.yml line 1: expected a list of jobs"),
    ("bad.yml", YAML + "- just a string\n", "bad.yml line 14: expected a mapping"),
    ("bad.yml", YAML.replace("num_nodes: 2", "num_nodes: two"), "bad.yml line 2: num_nodes: expected an integer, got 'two'"),
    ("bad.csv", "workdir,p.say_hello_to\na,1\nb\n", "bad.csv line 3: 1 cells, but the header has 2"),
    ("bad.csv", "workdir,p.say_hello_to,n\na,1,1\nb,2,x\n", "bad.csv line 3: num_nodes: expected an integer, got 'x'"),
    ("bad.csv", "workdir,p.say_hello_to\na,1\nb,2\na,3\n", "bad.csv line 4: workdir 'a' is already used by the job on line 2"),
    ("bad.jsonl", '{"workdir": "a", "p": {"say_hello_to": 1}}\n{"workdir": "b", \n', "bad.jsonl line 2: not valid JSON"),
    ("bad.jsonl", '{"workdir": "a", "p": {"say_hello_to": 1}}\n[1]\n', "bad.jsonl line 2: expected a JSON object"),
    ("bad.jsonl", '{"workdir": "a", "p": {"say_hello_to": 1}}\n{"workdir": "b", "app": "Nope"}\n', "bad.jsonl line 2: no app 'Nope'"),
    ("bad.jsonl", '{"workdir": "a", "p": {"say_hello_to": 1}}\n{"p": {"say_hello_to": 1}}\n', "bad.jsonl line 2: no workdir field"),
    ("bad.jsonl", '{"workdir": "a", "p": {"say_hello_to": 1}}\n{"workdir": "/abs", "p": {"say_hello_to": 1}}\n',
     "bad.jsonl line 2: workdir '/abs' is absolute"),
    ("bad.json", '[{"workdir": "a", "p": {"say_hello_to": 1}}, 3]', "bad.json record 2: expected a JSON object"),
    ("bad.txt", "", "cannot tell the format"),
])
def test_errors_name_the_line(site: Any, hello: Any, adder: Any, tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    err = fails("job", "create", "--from", tmp_path / name, "-a", "Hello", code=2)
    assert message in err
    assert Job.objects.count() == 0


def test_errors_found_while_inserting_name_the_line_and_write_nothing(site: Any, hello: Any, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.cli.job as job_cli

    monkeypatch.setattr(job_cli, "BULK_CHUNK", 2)  # the bad record is in the third chunk: earlier chunks must roll back
    ok("job", "create", "-a", "Hello", "-w", "taken", "-p", "say_hello_to=x")
    records = [{"workdir": f"w/{i}", "p": {"say_hello_to": i}} for i in range(5)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*records, {"workdir": "w/5"}]))
    assert "jobs.jsonl line 6: job 'w/5': app Hello needs parameter 'say_hello_to'" in fails(
        "job", "create", "--from", path, "-a", "Hello", code=2)
    path.write_text("\n".join(json.dumps(r) for r in [*records, {"workdir": "taken", "p": {"say_hello_to": 1}}]))
    assert f"jobs.jsonl line 6: workdir 'taken' is already used by job {sid(1)}" in fails("job", "create", "--from", path, "-a", "Hello", code=2)
    path.write_text("\n".join(json.dumps(r) for r in [*records, {"workdir": "w/9", "p": {"say_hello_to": 1}, "parent_ids": [77]}]))
    assert f"jobs.jsonl line 6: parent job {sid(77)} does not exist" in fails("job", "create", "--from", path, "-a", "Hello", code=2)
    assert Job.objects.count() == 1


def test_from_and_workdir_conflict(site: Any, hello: Any, tmp_path: Path) -> None:
    (tmp_path / "j.yml").write_text(YAML)
    assert "--from and -w/--workdir" in fails("job", "create", "--from", tmp_path / "j.yml", "-w", "x", code=2)
    assert "no such file" in fails("job", "create", "--from", tmp_path / "none.yml", code=2)
    (tmp_path / "empty.csv").write_text("")
    assert "no job records" in fails("job", "create", "--from", tmp_path / "empty.csv", code=2)


def test_yaml_alias_bombs_are_refused_quickly(site: Any, hello: Any, tmp_path: Path) -> None:
    """Nested aliases ("billion laughs") are refused before anything expands them (defect 9)."""
    import time

    lines = ['    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghi", "bcdefghij"):
        lines.append(f"    {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("- workdir: w0\n  app: Hello\n  parameters: {say_hello_to: x}\n  data:\n" + "\n".join(lines) + "\n")
    started = time.monotonic()
    err = fails("job", "create", "--from", path, "-y", code=2)
    assert "aliases" in err and time.monotonic() - started < 30
    assert Job.objects.count() == 0


def test_a_nul_in_a_shell_apps_parameter_is_refused_when_the_job_is_made(site: Any, hello: Any, adder: Any, tmp_path: Path) -> None:
    """A shell app's command line cannot carry a NUL: a job whose parameter has one is refused with one line when it is
    created or changed (from the API, the CLI, and from another host over HTTP), not left to fail when it runs."""
    from balsam.exceptions import ValidationError

    said = "job 'n/1': parameter 'say_hello_to' contains a NUL character, which no command line can carry (app Hello runs a shell command)"
    with pytest.raises(ValidationError) as refused:
        Job("n/1", app_id="Hello", parameters={"say_hello_to": "a\x00b"}).save()
    assert str(refused.value) == said
    with pytest.raises(ValidationError, match="parameter 'say_hello_to' contains a NUL character"):
        Job.objects.bulk_create([Job(f"ok/{i}", app_id="Hello", parameters={"say_hello_to": str(i)}) for i in range(3)]
                                + [Job("n/2", app_id="Hello", parameters={"say_hello_to": "\x00"})])
    assert Job.objects.count() == 0  # all or nothing: the good jobs of the batch were not made either

    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"workdir": "c/1", "p": {"say_hello_to": "x"}}) + "\n"
                    + json.dumps({"workdir": "c/2", "p": {"say_hello_to": "x\u0000y"}}) + "\n")
    err = fails("job", "create", "--from", path, "-a", "Hello", code=2)
    assert "jobs.jsonl line 2: job 'c/2': parameter 'say_hello_to' contains a NUL character" in err
    assert Job.objects.count() == 0

    job = Job("n/3", app_id="Hello", parameters={"say_hello_to": "world"})
    job.save()
    job.parameters = {"say_hello_to": "sneaky\x00"}
    with pytest.raises(ValidationError, match=f"job {job.id}: parameter 'say_hello_to' contains a NUL character"):
        job.save()
    assert Job.objects.get(id=job.id).parameters == {"say_hello_to": "world"}

    text = Job("py/1", app_id="Adder", parameters={"x": "a\x00b"})  # a run() app gets the value itself, NUL and all
    text.save()
    assert Job.objects.get(id=text.id).parameters == {"x": "a\x00b"}


def test_one_record_and_a_stopped_agent_are_said_plainly(site: Any, hello: Any, tmp_path: Path, backend: str) -> None:
    """'Created 1 jobs ... (ids 7-7)', and nothing said when no agent runs to prepare them (they wait in STAGED_IN
    for ever while a launcher idles): a first job made before 'balsam site start' now says what it waits for."""
    (tmp_path / "one.jsonl").write_text('{"workdir": "j/1", "app": "Hello", "parameters": {"say_hello_to": "x"}}\n')
    result = ok("job", "create", "--from", tmp_path / "one.jsonl")
    assert result.stdout.strip() == f"Created 1 job at site test-site (id {sid(1)})"
    single = ok("job", "create", "-a", "Hello", "-w", "j/2", "-p", "say_hello_to=y", "-y")
    if backend == "local":  # on the home host, where the agent is not running; through the agent, it runs
        assert "Note: the site agent of test-site is not running, so they wait" in result.stderr
        assert "so it waits in STAGED_IN" in single.stderr and "balsam site start --site test-site" in single.stderr
    else:
        assert result.stderr == "" and single.stderr == ""


KILLED_AT_CHUNK = '''
import os, signal, sys
from balsam._api.jobs import JobManager
real, calls = JobManager.bulk_create, []
def bulk_create(self, jobs):  # kill -9 once the first chunk is written, inside the command's one transaction
    calls.append(len(jobs))
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, jobs)
JobManager.bulk_create = bulk_create
sys.argv = ["balsam", *sys.argv[1:]]
from balsam.cli import main
main()
'''


@pytest.mark.slow
def test_a_create_from_a_file_killed_between_chunks_creates_none_and_its_rerun_creates_each_once(site_path: Path,
                                                                                                 tmp_path: Path) -> None:
    """``balsam job create --from`` of more jobs than one chunk, on the home host, killed with kill -9 after its first
    chunk was written: no job exists (one transaction), and the same command run again creates every job once."""
    import os
    import subprocess
    import sys

    from balsam.api import ApplicationDefinition
    from balsam.cli.job import BULK_CHUNK
    from balsam.site import init_site
    from tests.cli_helpers import ROOT

    init_site(site_path, name="test-site")

    class Hello(ApplicationDefinition):
        site = "test-site"
        command_template = "echo Hello, {{ say_hello_to }}!"

    Hello.sync()
    n = BULK_CHUNK + 10
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("workdir,param.say_hello_to\n" + "".join(f"w/{i},{i}\n" for i in range(n)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["job", "create", "--from", str(jobs), "-a", "Hello", "--site", "test-site"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_CHUNK, *args], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert Job.objects.count() == 0
    assert f"Created {n} jobs" in ok(*args).stdout
    assert Job.objects.count() == n and len({j.workdir for j in Job.objects.all()}) == n
