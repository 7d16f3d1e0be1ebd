"""Balsam 0.7's documented CLI: the quickstart (`balsam site init ./my-site`, `cd my-site && balsam site start`,
`balsam job create ... --param say_hello_to="world2"` answered at its prompt, `balsam queue submit -q local -A local
-n 1 -t 10 -j mpi`, `balsam queue ls`, `balsam job ls`), the ALCF workshop's commands, the CLI guide's site
selector (`--site=all`, `this`, `active`, comma lists of ids and path fragments), `job modify/rm`, the site guide's
`-x` optional template parameters, `site mv/rm`, and 0.7's spellings `queue ls --scheduler_id`, `queue term SCHED_ID`,
`app ls -s`, `app rm -n NAME` and `app rm --all`.

What differed and is now fixed: those spellings were refused; a bare `balsam login` (the quickstart's first step)
failed for want of a relay URL; with no site selected
(`--site=active` while no agent runs) `job ls` printed "No jobs at ." (and `app ls` "No apps at .").
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from balsam.api import ApplicationDefinition, BatchJob, Job
from balsam.site import init_site
from tests.cli_helpers import fails, invoke, ok, run_process
from tests.launcher_support import runnable


def test_the_workshop_commands_and_the_site_selector(site: Any, hello: Any, tmp_path: Path) -> None:
    # 1_create_job.sh, verbatim but for the site name.
    out = ok("job", "create", "--site", "test-site", "--app", "Hello", "--workdir=demo/hello", "--param", "say_hello_to=world",
             "--tag", "workflow=hello", "--yes").stdout
    assert "Created job" in out and "demo/hello" in out
    ok("job", "create", "--site=test-site", "--app", "Hello", "--workdir", "demo/hello2", "--param", "say_hello_to=world2", "-y")
    listed = ok("job", "ls", "--tag", "workflow=hello").stdout.splitlines()
    assert listed[0].split() == ["ID", "App", "Workdir", "State", "Tags"]
    assert [line.split()[2:4] for line in listed[1:]] == [["demo/hello", "STAGED_IN"]]
    job = Job.objects.get(workdir="demo/hello")
    assert job.get_parameters() == {"say_hello_to": "world"} and job.tags == {"workflow": "hello"}

    # 2_submit_batchjob.sh: queue submit with --site, --tag and --job-mode; queue ls (all sites too).
    submitted = ok("queue", "submit", "-n", "1", "-t", "10", "-q", "local", "-A", "local", "--site", "test-site", "--tag",
                   "workflow=hello", "--job-mode", "mpi").stdout
    assert "Submitted BatchJob" in submitted
    (bj,) = BatchJob.objects.all()
    assert (bj.filter_tags, bj.job_mode, bj.state) == ({"workflow": "hello"}, "mpi", "pending_submission")
    for args in ([], ["--site=all"]):
        rows = ok("queue", "ls", *args).stdout.splitlines()
        assert str(bj.id) in rows[1] and "pending_submission" in rows[1]
    assert "No BatchJobs" in ok("queue", "ls", "--scheduler_id", "5").stdout  # Balsam 0.7's spelling of --scheduler-id

    # The CLI guide's site selector, with a second site.
    other = init_site(tmp_path / "elsewhere" / "siteY", name="other")
    assert "demo/hello2" in ok("job", "ls", "--site=all").stdout
    ids = ok("job", "ls", f"--site={site.id},{other.id}", "--json").stdout
    assert {j["site"] for j in json.loads(ids)} == {"test-site"}
    fragments = ok("job", "ls", "--site=elsewhere/siteY,test-site", "--json").stdout
    assert len(json.loads(fragments)) == 2
    assert ok("job", "ls", "--site=active").stdout.startswith("No jobs: no site is selected")
    assert ok("app", "ls", "--site", "active").stdout.startswith("No apps: no site is selected")
    assert "not inside a site" in fails("job", "ls", "--site=this")
    apps = ok("app", "ls", "--site=all").stdout.splitlines()
    assert apps[0].split()[:3] == ["ID", "Name", "Site"] and apps[1].split()[1:3] == ["Hello", "test-site"]
    assert ok("app", "ls", "-s", "test-site").stdout == ok("app", "ls", "--site", "test-site").stdout

    # job modify and job rm as 0.7 spells them.
    assert "1 job" in ok("job", "modify", "-i", job.id, "-s", "FAILED", "-y").stdout
    assert [line.split()[2] for line in ok("job", "ls", "-s", "FAILED", "--site", "test-site").stdout.splitlines()[1:]] == ["demo/hello"]
    ok("job", "modify", "--id", job.id, "--state", "RESTART_READY", "-y")
    assert str(Job.objects.get(id=job.id).state) == "RESTART_READY"
    assert "Deleted 1 job" in ok("job", "rm", "-t", "workflow=hello", "-y").stdout
    assert "Deleted 1 job" in ok("job", "rm", "--all", "--site", "test-site", "-y").stdout
    assert Job.objects.count() == 0


def test_site_mv_rm_and_optional_template_params(site: Any, tmp_path: Path) -> None:
    # settings.yml's optional_batch_job_params + a job-template.sh using optional_params, as the site guide shows.
    settings = yaml.safe_load((site.path / "settings.yml").read_text())
    settings["scheduler"]["optional_batch_job_params"] = {"singularity_prime_cache": "no"}
    (site.path / "settings.yml").write_text(yaml.safe_dump(settings))
    with (site.path / "job-template.sh").open("a") as fp:
        fp.write('\n{% if optional_params.get("singularity_prime_cache") == \'yes\' %}\n'
                 "  echo PRIME-LDAP-CACHE\n{% endif %}\n")
    ok("site", "sync", "--site", "test-site")
    primed = ok("queue", "submit", "-n", "1", "-t", "10", "-q", "local", "-A", "local", "-x", "singularity_prime_cache=yes",
                "--site", "test-site", "--dry-run").stdout
    plain = ok("queue", "submit", "-n", "1", "-t", "10", "-q", "local", "-A", "local", "--site", "test-site", "--dry-run").stdout
    assert "PRIME-LDAP-CACHE" in primed and "PRIME-LDAP-CACHE" not in plain
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local",
                                 optional_params={"singularity_prime_cache": "yes"})
    assert bj.optional_params == {"singularity_prime_cache": "yes"}
    assert "mig_count" in fails("queue", "submit", "-n", "1", "-t", "10", "-q", "local", "-A", "local", "-x", "mig_count=3",
                                "--site", "test-site", code=2)

    # balsam site mv SITE-PATH DESTINATION; balsam site rm SITE-PATH.
    dest = tmp_path / "moved-site"
    ok("site", "mv", site.path, dest)
    assert ok("site", "ls").stdout.split()[:4] == ["ID", "Name", "Host", "Active"]
    assert [(r["name"], r["path"]) for r in json.loads(ok("site", "ls", "--json").stdout)] == [("test-site", str(dest))]
    assert BatchJob.objects.get(id=bj.id).optional_params == {"singularity_prime_cache": "yes"}
    ok("site", "rm", dest, "-y")
    assert not dest.exists() and json.loads(ok("site", "ls", "--json").stdout) == []


class Hello(ApplicationDefinition):
    site = "my-site"
    command_template = "echo Hello, {{ say_hello_to }}!"


def balsam(*args: str, cwd: Path, input: Any = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "balsam", *args], capture_output=True, text=True, timeout=120, cwd=str(cwd),
                          input=input)


def test_the_quickstart_on_the_command_line(tmp_path: Path) -> None:
    logged = balsam("login", cwd=tmp_path)  # the quickstart's first step: nothing to log in to, and it says so
    assert logged.returncode == 0 and "No login is needed" in logged.stdout
    assert balsam("site", "init", "./my-site", cwd=tmp_path).returncode == 0
    site = tmp_path / "my-site"
    listed = balsam("site", "ls", cwd=tmp_path).stdout.splitlines()
    assert listed[1].split()[1] == "my-site" and listed[1].split()[3] == "no"
    started = balsam("site", "start", cwd=site)
    assert started.returncode == 0, started.stderr
    try:
        Hello.sync()
        asked = balsam("job", "create", "--site=my-site", "--app", "Hello", "--workdir", "demo/hello2", "--param",
                       "say_hello_to=world2", cwd=tmp_path, input="y\n")
        assert asked.returncode == 0 and "Created job" in asked.stdout, asked.stderr
        assert balsam("queue", "submit", "-q", "local", "-A", "local", "-n", "1", "-t", "10", "-j", "mpi", cwd=site).returncode == 0
        queue = balsam("queue", "ls", cwd=site).stdout.splitlines()
        assert any(state in queue[1].split() for state in ("pending_submission", "queued", "running", "finished"))
        deadline = time.monotonic() + 120
        while "JOB_FINISHED" not in (jobs := balsam("job", "ls", cwd=site).stdout):
            assert time.monotonic() < deadline, jobs
            time.sleep(0.5)
        assert jobs.splitlines()[0].split() == ["ID", "App", "Workdir", "State", "Tags"]
        assert (site / "data" / "demo" / "hello2" / "job.out").read_text() == "Hello, world2!\n"
        assert balsam("site", "ls", cwd=tmp_path).stdout.splitlines()[1].split()[3] == "yes"
        history = balsam("queue", "ls", "--history", cwd=site).stdout
        assert "local" in history.splitlines()[1]
    finally:
        balsam("site", "stop", cwd=site)
    assert invoke("site", "ls").exit_code == 0


def test_queue_term_by_scheduler_id_and_app_rm_as_07_spells_them(site: Any, hello: Any, adder: Any) -> None:
    bj = BatchJob.objects.create(num_nodes=1, wall_time_min=10, job_mode="mpi", queue="local", project="local")
    BatchJob.objects.filter(id=[bj.id]).update(scheduler_id=424242, state="queued")  # as the agent records a submission
    out = ok("queue", "term", "424242").stdout  # 0.7: balsam queue term SCHED_ID
    assert f"BatchJob {bj.id} marked for deletion" in out and BatchJob.objects.get(id=bj.id).state == "pending_deletion"
    assert "no BatchJob 999" in fails("queue", "term", "999")

    hello.submit(workdir="h", say_hello_to="x")
    adder.submit(workdir="a", x=1)
    assert "Removed app Hello" in ok("app", "rm", "-n", "Hello", "-s", "test-site", "-y").stdout
    assert "give the app to remove" in fails("app", "rm", code=2)
    assert "Removed 1 apps and 1 jobs" in ok("app", "rm", "--all", "--site", "test-site", "-y").stdout
    assert Job.objects.count() == 0 and ok("app", "ls").stdout.startswith("No apps at test-site")


def test_app_sync_reads_the_sites_apps_folder(site: Any) -> None:
    # Balsam 0.7's app guide: ApplicationDefinitions in <site>/apps/*.py, then `balsam app sync` and `balsam app ls`.
    (site.path / "apps").mkdir()
    (site.path / "apps" / "test.py").write_text(
        "from balsam.api import ApplicationDefinition\n\n\n"
        "class Sleeper(ApplicationDefinition):\n"
        '    """\n    Application description\n    """\n'
        "    command_template = 'sleep {{ sleeptime }} && echo goodbye'\n")
    assert "Synced Sleeper" in ok("app", "sync", "--site", "test-site").stdout
    rows = ok("app", "ls", "--site", "test-site").stdout.splitlines()
    assert rows[1].split()[1:5] == ["Sleeper", "test-site", "shell", "sleeptime"] and rows[1].endswith("Application description")
    assert Job.objects.create(workdir="s", app_id="test.Sleeper", parameters={"sleeptime": 0}).state == "STAGED_IN"


def test_site_ls_verbose_shows_queues_and_backfill_windows(site: Any) -> None:
    # The site guide: "much more detailed Site information (such as a listing of currently idle backfill windows at
    # each Site) by including the -v/--verbose flag": balsam site ls -v.
    from balsam.db.site_row import update_site_row

    with site.store.write() as conn:  # what the agent's scheduler service records from the batch system each cycle
        update_site_row(conn, {"backfill_windows": {"debug": [{"num_nodes": 4, "wall_time_min": 30}]},
                               "queued_jobs": {"4242": {"state": "queued", "queue": "local", "num_nodes": 1}}})
    out = ok("site", "ls", "-v").stdout
    assert "backfill:       debug: 4 nodes x 30 min" in out
    assert "queue:          local (max_nodes 1, " in out and "projects:       local" in out
    assert "queued job:     4242 (state queued, queue local, num_nodes 1)" in out
    listed = json.loads(ok("site", "ls", "-v", "--json").stdout)
    assert listed[0]["backfill_windows"] == {"debug": [{"num_nodes": 4, "wall_time_min": 30}]}


def test_the_single_dash_tag_flag_of_07s_job_create_queue_submit_and_launcher(site: Any, hello: Any) -> None:
    """Balsam 0.7 spelled --tag also ``-tag`` on ``job create``, ``queue submit`` and its launcher; here click read it as
    ``-t ag`` (the wall time): "Invalid value for '-t' / '--wall-time-min': 'ag' is not a valid integer"."""
    ok("job", "create", "-w", "h2o/1", "-a", "Hello", "-p", "say_hello_to=H2O", "-tag", "system=H2O", "-tag", "scale=4", "-t", "5", "-y")
    (job,) = Job.objects.filter(tags={"system": "H2O"})
    assert job.tags == {"system": "H2O", "scale": "4"} and job.wall_time_min == 5
    # 0.7's own job ls help: "balsam job ls --state JOB_FINISHED --tag system=H2O", and its -t spelling.
    assert ok("job", "ls", "--state", "STAGED_IN", "--tag", "system=H2O").stdout == ok("job", "ls", "-t", "system=H2O").stdout

    ok("queue", "submit", "-n", "1", "-t", "10", "-q", "local", "-A", "local", "-j", "mpi", "-tag", "system=H2O")
    (bj,) = BatchJob.objects.all()
    assert bj.filter_tags == {"system": "H2O"} and bj.wall_time_min == 10

    # The launcher as a 0.7 job template starts it: -tag selects what it runs (here: the H2O job, not the other one).
    other = hello.submit(workdir="other/1", say_hello_to="other")
    runnable(site.store, [job, other])  # what the agent's preprocessing does
    ran = run_process("launcher", "-j", "mpi", "-t", "10", "-tag", "system=H2O", "--idle-ttl", "1", "--site", str(site.path), cwd=site.path)
    assert ran.returncode == 0, ran.stderr
    assert Job.objects.get(id=job.id).state == "JOB_FINISHED" and Job.objects.get(id=other.id).state == "PREPROCESSED"
