"""``balsam job``: create, ls (filters, --by-state, --json, limits), show, log, modify, reset, kill, rm, dep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest

from balsam.api import EventLog, Job
from balsam.site import init_site
from tests.cli_helpers import fails, invoke, ok
from tests.helpers import advance, sid

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host ("login-2") through the agent's HTTP API."""


def _jobs() -> List[Dict[str, Any]]:
    return json.loads(ok("job", "ls", "--json", "-n", "0").stdout)  # type: ignore[no-any-return]


def _state(job_id: int) -> str:
    return str(Job.objects.get(id=job_id).state)


# ------------------------------------------------------------------------------------------- create
def test_create_a_job(site: Any, hello: Any) -> None:
    out = ok("job", "create", "-a", "Hello", "-w", "demo/hello", "-p", "say_hello_to=world", "--tag", "exp=a", "--workflow", "w1",
             "-n", "2", "-rpn", "4", "-tpr", "2", "-tpc", "2", "-g", "0.5", "-npc", "3", "-t", "15", "-lp", "cpu-bind=depth").stdout
    assert out.strip() == f"Created job {sid(1)} (STAGED_IN) at site test-site: Hello in demo/hello"
    job = Job.objects.get(id=1)
    assert job.parameters == {"say_hello_to": "world"} and job.tags == {"exp": "a", "workflow": "w1"}
    assert (job.num_nodes, job.ranks_per_node, job.threads_per_rank, job.threads_per_core, job.gpus_per_rank, job.node_packing_count,
            job.wall_time_min) == (2, 4, 2, 2, 0.5, 3, 15)
    assert job.launch_params == {"cpu-bind": "depth"}


def test_create_json_and_python_parameter_types(site: Any, adder: Any, hello: Any) -> None:
    data = json.loads(ok("job", "create", "-a", "Adder", "-w", "add", "-p", "x=3", "-p", "y=[1, 2]", "--json").stdout)
    assert data["app"] == "Adder" and data["state"] == "STAGED_IN" and data["parameters"] == {"x": 3, "y": [1, 2]}
    ok("job", "create", "-a", "Hello", "-w", "h", "-p", "say_hello_to=007")
    assert Job.objects.get(workdir="h").parameters == {"say_hello_to": "007"}  # shell apps get text


def test_create_with_parent_waits(site: Any, hello: Any) -> None:
    ok("job", "create", "-a", "Hello", "-w", "p", "-p", "say_hello_to=x")
    ok("job", "create", "-a", str(hello.__app_id__), "-w", "c", "-p", "say_hello_to=x", "-pid", "1")
    assert _state(2) == "AWAITING_PARENTS"


def test_create_failures_write_nothing(site: Any, hello: Any) -> None:
    assert "no app 'Nope' here (apps: Hello)" in fails("job", "create", "-a", "Nope", "-w", "x")
    assert "no app 'Helo' here (Did you mean 'Hello'?) (apps: Hello)" in fails("job", "create", "-a", "Helo", "-w", "x")
    assert "'oops' is not KEY=VALUE" in fails("job", "create", "-a", "Hello", "-w", "x", "-p", "oops", code=2)
    assert "needs parameter 'say_hello_to'" in fails("job", "create", "-a", "Hello", "-w", "x", code=2)
    assert "has no parameter 'nope'" in fails("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", "-p", "nope=1", code=2)
    assert "is absolute" in fails("job", "create", "-a", "Hello", "-w", "/abs", "-p", "say_hello_to=a", code=2)
    assert "num_nodes must be an integer from 1 to" in fails("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", "-n", "0",
                                                        code=2)
    assert "give -w/--workdir and -a/--app" in fails("job", "create", "-a", "Hello", code=2)
    assert f"parent job {sid(99)} does not exist" in fails("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", "-pid", "99",
                                                   code=2)
    ok("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a")
    assert f"already used by job {sid(1)}" in fails("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", code=2)
    assert Job.objects.count() == 1


def test_create_needs_one_site(site: Any, hello: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_site(tmp_path / "b", name="b")
    monkeypatch.chdir(tmp_path)  # outside both sites: both are in scope
    err = fails("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", code=2)
    assert "needs one site, and 2 are in scope" in err and "--site" in err
    ok("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", "--site", "test-site")


def test_create_shows_and_confirms_on_a_terminal(site: Any, hello: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import balsam.cli.job as job_cli

    monkeypatch.setattr(job_cli, "is_interactive", lambda: True)
    result = invoke("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", input="n\n")
    assert result.exit_code == 1 and "New job at site test-site" in result.stdout and "say_hello_to" in result.stdout
    assert Job.objects.count() == 0
    ok("job", "create", "-a", "Hello", "-w", "x", "-p", "say_hello_to=a", input="y\n")
    ok("job", "create", "-a", "Hello", "-w", "y", "-p", "say_hello_to=a", "-y")  # -y: no question asked
    assert Job.objects.count() == 2


# ------------------------------------------------------------------------------------------- ls
@pytest.fixture
def many(site: Any, hello: Any, adder: Any) -> List[Any]:
    jobs = [hello.submit(f"run/{i}", say_hello_to=str(i), tags={"exp": "a" if i < 3 else "b", "workflow": "w"}) for i in range(5)]
    jobs.append(adder.submit("add/0", x=1, tags={"exp": "c"}))
    advance(jobs[0], "PREPROCESSED")
    advance(jobs[1], "FAILED")
    return jobs


def test_ls_table(many: Any) -> None:
    lines = ok("job", "ls").stdout.splitlines()
    assert lines[0].split() == ["ID", "App", "Workdir", "State", "Tags"]
    assert lines[1].split()[:4] == [str(sid(1)), "Hello", "run/0", "PREPROCESSED"]
    assert "exp=a workflow=w" in lines[1]
    assert len(lines) == 7


@pytest.mark.parametrize("args, ids", [
    (["--tag", "exp=a"], [1, 2, 3]),
    (["-t", "exp=b", "--workflow", "w"], [4, 5]),
    (["-s", "FAILED"], [2]),
    (["-s", "failed", "-s", "preprocessed"], [1, 2]),
    (["-ns", "STAGED_IN"], [1, 2]),
    (["--id", "3", "-i", "6"], [3, 6]),
    (["-w", "add"], [6]),
    (["-a", "Adder"], [6]),
    (["-a", "1", "--tag", "exp=b"], [4, 5]),
    (["--workflow", "none"], []),
])
def test_ls_filters(many: Any, args: List[str], ids: List[int]) -> None:
    assert [j["id"] for j in json.loads(ok("job", "ls", *args, "--json").stdout)] == [sid(i) for i in ids]


def test_ls_of_a_mistyped_app_says_there_is_no_such_app(site: Any, hello: Any) -> None:
    """'job ls -a Helo' said only "No jobs match." (as if Hello had no jobs)."""
    ok("job", "create", "-a", "Hello", "-w", "a", "-p", "say_hello_to=x", "-y")
    out = ok("job", "ls", "-a", "Helo").stdout
    assert out.strip() == "No jobs match: no app 'Helo' at test-site (apps: Hello) (Did you mean 'Hello'?)."
    assert ok("job", "ls", "-a", "Hello", "-s", "FAILED").stdout.strip() == "No jobs match."  # the app exists
    assert "demo" not in ok("job", "ls", "-a", "Hello").stdout and "Hello" in ok("job", "ls", "-a", "Hello").stdout


def test_ls_limit_says_how_many_more(many: Any) -> None:
    out = ok("job", "ls", "-n", "2").stdout
    assert len(out.splitlines()) == 4 and "... 4 more" in out
    assert "more" not in ok("job", "ls", "-n", "0").stdout


def test_ls_json_fields(many: Any) -> None:
    job = json.loads(ok("job", "ls", "--json", "-i", "6").stdout)[0]
    assert job["app"] == "Adder" and job["site"] == "test-site" and job["parameters"] == {"x": 1}
    assert job["state"] == "STAGED_IN" and job["created"].endswith("+00:00")


def test_ls_by_state(many: Any) -> None:
    assert json.loads(ok("job", "ls", "--by-state", "--json").stdout) == {"STAGED_IN": 4, "PREPROCESSED": 1, "FAILED": 1}
    lines = ok("job", "ls", "--by-state", "--tag", "exp=a").stdout.splitlines()
    assert [line.split() for line in lines] == [["State", "Jobs"], ["STAGED_IN", "1"], ["PREPROCESSED", "1"], ["FAILED", "1"],
                                                ["total", "3"]]


def test_ls_verbose(many: Any) -> None:
    out = ok("job", "ls", "-v", "-i", "1").stdout
    assert out.startswith(f"Job {sid(1)}\n") and "parameters:" in out and "say_hello_to" in out and "num_nodes:" in out


def test_ls_empty_and_errors(site: Any) -> None:
    assert "No jobs at test-site." in ok("job", "ls").stdout
    assert "No jobs match." in ok("job", "ls", "-s", "RUNNING").stdout
    assert "no site matches 'elsewhere'" in fails("job", "ls", "--site", "elsewhere")
    assert "unknown job state 'SLEEPING'" in fails("job", "ls", "-s", "SLEEPING", code=2)
    assert "'exp' is not KEY=VALUE" in fails("job", "ls", "--tag", "exp", code=2)


def test_ls_across_sites(many: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_site(tmp_path / "b", name="b")
    monkeypatch.chdir(tmp_path)
    out = ok("job", "ls", "--site", "all").stdout
    assert out.splitlines()[0].split() == ["ID", "Site", "App", "Workdir", "State", "Tags"]
    assert json.loads(ok("job", "ls", "--by-state", "--json", "--site", "b").stdout) == {}
    assert sum(json.loads(ok("job", "ls", "--by-state", "--json", "--site", "all").stdout).values()) == 6
    monkeypatch.chdir(tmp_path / "b")
    assert "No jobs at b." in ok("job", "ls", "--site", "this").stdout


# ------------------------------------------------------------------------------------------- show, log
def test_show_fields_and_history(many: Any) -> None:
    out = ok("job", "show", "2").stdout
    assert out.startswith(f"Job {sid(2)}\n") and "workdir_path:" in out
    assert "Why: FAILED" in out and f"'balsam job reset {sid(2)}'" in out  # the id, not the word ID
    assert "History:" in out and "CREATED -> STAGED_IN" in out and "STAGED_IN -> FAILED" in out
    data = json.loads(ok("job", "show", "2", "--json").stdout)
    assert [(e["from_state"], e["to_state"]) for e in data["events"]] == [("CREATED", "STAGED_IN"), ("STAGED_IN", "FAILED")]
    assert "the site agent is not running" in json.loads(ok("job", "show", "3", "--json").stdout)["why"][0]
    assert "no job 99 at site test-site" in fails("job", "show", "99")


def test_log(many: Any) -> None:
    job = many[0]
    assert "has no output yet" in fails("job", "log", str(job.id))
    out = job.workdir_path / "job.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"line {i}\n" for i in range(100)))
    assert ok("job", "log", str(job.id)).stdout.count("\n") == 100
    assert ok("job", "log", str(job.id), "--tail", "3").stdout == "line 97\nline 98\nline 99\n"
    advance(job, "RUNNING", "RUN_DONE", "POSTPROCESSED")  # -> JOB_FINISHED: -f ends after the last output
    assert _state(job.id) == "JOB_FINISHED"
    assert ok("job", "log", str(job.id), "--tail", "1", "-f").stdout == "line 99\n"


# ------------------------------------------------------------------------------------------- state changes
def test_modify_goes_through_the_state_machine(many: Any) -> None:
    assert "Set 1 job to RESTART_READY" in ok("job", "modify", "2", "-s", "RESTART_READY").stdout
    assert _state(2) == "RESTART_READY"
    err = fails("job", "modify", "-i", "3", "-i", "2", "-s", "RUN_DONE", code=2)
    assert "cannot move from" in err
    assert _state(2) == "RESTART_READY" and _state(3) == "STAGED_IN"  # nothing changed
    assert "say which jobs" in fails("job", "modify", "-s", "FAILED", code=2)
    assert "give the new state" in fails("job", "modify", "3", code=2)
    ok("job", "modify", "--tag", "exp=b", "--from-state", "STAGED_IN", "-s", "PREPROCESSED", "-y")
    assert _state(4) == _state(5) == "PREPROCESSED"


def test_modify_by_filter_asks_first(many: Any) -> None:
    """Filters beyond Balsam 0.7's ids and tags ask first (tags alone do not: test_compat_07_cli)."""
    assert "not changing 2 jobs without confirmation" in fails("job", "modify", "--tag", "exp=b", "--from-state", "STAGED_IN",
                                                              "-s", "PREPROCESSED")
    assert "not changing 5 jobs without confirmation" in fails("job", "modify", "-w", "run/", "-s", "PREPROCESSED")
    assert _state(4) == "STAGED_IN"


def test_reset(many: Any) -> None:
    assert "Reset 1 job to RESTART_READY" in ok("job", "reset", "2").stdout
    assert _state(2) == "RESTART_READY"
    messages = [e.data.get("message") for e in EventLog.objects.filter(job_id=2).order_by("id")]
    assert messages[-1] == "reset by the user (balsam job reset)"
    assert "cannot move from PREPROCESSED to RESTART_READY" in fails("job", "reset", "1", code=2)


def test_reset_by_filters_takes_only_failed_jobs(many: Any) -> None:
    advance(many[2], "PREPROCESSED", "RUNNING", "RUN_ERROR")
    advance(many[0], "RUNNING", "RUN_DONE", "POSTPROCESSED")
    ok("job", "reset", "--tag", "exp=a", "--stage-in", "-y")  # FAILED and RUN_ERROR, not JOB_FINISHED
    assert _state(2) == _state(3) == "STAGED_IN"  # READY, and on at once: no stage-in pending
    assert _state(1) == "JOB_FINISHED"
    assert "no jobs match" in fails("job", "reset", "--tag", "exp=a")


def test_kill_fails_children(many: Any, hello: Any) -> None:
    child = hello.submit("child", say_hello_to="c", parent_ids=[3])
    assert child.state == "AWAITING_PARENTS"
    out = ok("job", "kill", "3").stdout
    assert out.strip() == "Killed 1 job; 1 job waiting on them failed"
    assert _state(3) == "USER_KILLED" and _state(child.id) == "FAILED"
    assert "cannot move from USER_KILLED" in fails("job", "kill", "3", code=2)


def test_kill_by_filters_leaves_ended_jobs_alone(many: Any) -> None:
    ok("job", "kill", "--workflow", "w", "-y")
    assert [j["state"] for j in _jobs()] == ["USER_KILLED", "FAILED", "USER_KILLED", "USER_KILLED", "USER_KILLED", "STAGED_IN"]


def test_rm(many: Any) -> None:
    assert "not deleting 2 jobs without confirmation" in fails("job", "rm", "1", "2")
    assert "not deleting 1 job without confirmation" in fails("job", "rm", "3")  # was '1 jobs'
    assert "Deleted 2 jobs" in ok("job", "rm", "1", "2", "-y").stdout
    assert "Deleted 2 jobs" in ok("job", "rm", "--tag", "exp=b", "--force").stdout
    assert "say which jobs to delete" in fails("job", "rm", "-y", code=2)
    assert "No jobs match." in ok("job", "rm", "-s", "RUNNING", "-y").stdout
    assert "Deleted 2 jobs" in ok("job", "rm", "--all", "-y").stdout
    assert _jobs() == []


def test_rm_refuses_jobs_a_launcher_holds(many: Any) -> None:
    from balsam.api import Session

    session = Session(site_name="test-site")
    session.save()
    assert [j.id for j in session.acquire_jobs()] == [sid(1)]
    assert "held by a running launcher" in fails("job", "rm", "1", "-y")
    assert len(_jobs()) == 6


def test_dep(many: Any) -> None:
    out = ok("job", "dep", "3", "4").stdout
    assert "Job 4 now depends on job 3" in out and f"(parents: {sid(3)})" in out and "AWAITING_PARENTS" in out
    assert Job.objects.get(id=4).parent_ids == [sid(3)]
    assert "would create a cycle" in fails("job", "dep", "4", "3", code=2)
    assert "only a job that has not started" in fails("job", "dep", "3", "2", code=2)
    assert "no job 99" in fails("job", "dep", "99", "5")
