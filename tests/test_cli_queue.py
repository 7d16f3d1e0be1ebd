"""``balsam queue``: submit (checked against the site's policies), ls, term, rm; ``submit-launch``."""

from __future__ import annotations

import json
from typing import Any

from balsam.api import BatchJob
from tests.cli_helpers import fails, ok
from tests.helpers import sid

BACKENDS = ("local", "http")
"""Every test here runs on the home host and from another host ("login-2") through the agent's HTTP API."""


def test_submit(site: Any) -> None:
    out = ok("queue", "submit", "-n", "1", "-t", "10", "-q", "local", "-A", "local", "-j", "serial", "--tag", "workflow=w",
             "--tag", "role=any").stdout
    assert f"Submitted BatchJob {sid(1)} at site test-site: 1 node, 10 min, serial mode, queue local, project local" in out
    bj = BatchJob.objects.get(id=1)
    assert (bj.state, bj.job_mode, bj.filter_tags) == ("pending_submission", "serial", {"workflow": "w", "role": "any"})


def test_submit_defaults_and_json(site: Any) -> None:
    data = json.loads(ok("queue", "submit", "-n", "1", "-t", "5", "--json").stdout)
    assert (data["queue"], data["project"], data["job_mode"], data["state"]) == ("local", "local", "mpi", "pending_submission")


def test_submit_refused_by_the_sites_policies(site: Any) -> None:
    assert "queue 'local' allows at most 1 nodes, asked for 4" in fails("queue", "submit", "-n", "4", "-t", "5", code=2)
    assert "queue 'debug' is not allowed at site test-site" in fails("queue", "submit", "-n", "1", "-t", "5", "-q", "debug", code=2)
    assert "project 'Other' is not allowed" in fails("queue", "submit", "-n", "1", "-t", "5", "-A", "Other", code=2)
    assert "unknown optional parameter 'k'" in fails("queue", "submit", "-n", "1", "-t", "5", "-x", "k=v", code=2)
    assert "'bad' is not KEY=VALUE" in fails("queue", "submit", "-n", "1", "-t", "5", "--tag", "bad", code=2)
    assert "Missing option '-t'" in fails("queue", "submit", "-n", "1", code=2)
    assert "partition 'mpi'" in fails("queue", "submit", "-n", "1", "-t", "5", "-p", "mpi", code=2)
    assert "partitions add up to 2 nodes" in fails("queue", "submit", "-n", "1", "-t", "5", "-p", "mpi:1", "-p", "serial:1", code=2)
    assert BatchJob.objects.count() == 0


def test_partitions_and_the_0x_alias(site: Any) -> None:
    ok("submit-launch", "-n", "1", "-t", "5", "-p", "serial:1:role=worker,size=s")
    assert BatchJob.objects.get(id=1).partitions == [{"job_mode": "serial", "num_nodes": 1, "filter_tags": {"role": "worker", "size": "s"}}]


def test_ls_term_rm(site: Any) -> None:
    ok("queue", "submit", "-n", "1", "-t", "5")
    ok("queue", "submit", "-n", "1", "-t", "6")
    lines = ok("queue", "ls").stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "Sched", "ID"] and [line.split()[0] for line in lines[1:]] == [str(sid(2)), str(sid(1))]
    assert "marked for deletion" in ok("queue", "term", "1").stdout
    assert "already marked" in ok("queue", "rm", "1").stdout
    bj = BatchJob.objects.get(id=1)
    bj.state = "finished"
    bj.save()
    assert [b["id"] for b in json.loads(ok("queue", "ls", "--json").stdout)] == [sid(2)]
    assert [b["id"] for b in json.loads(ok("queue", "ls", "-h", "--json").stdout)] == [sid(2), sid(1)]
    assert len(json.loads(ok("queue", "ls", "--history", "-n", "1", "--json").stdout)) == 1
    assert f"BatchJob {sid(1)} is finished: nothing to cancel" in fails("queue", "term", "1")
    assert f"Deleted the record of BatchJob {sid(1)}" in ok("queue", "rm", "1").stdout
    assert "no BatchJob 1 at test-site" in fails("queue", "rm", "1")
    assert f"BatchJob {sid(2)}\n" in ok("queue", "ls", "-v").stdout


def test_ls_empty(site: Any) -> None:
    assert "No BatchJobs active (see --history)." in ok("queue", "ls").stdout


def test_dry_run_prints_the_script_and_command_and_submits_nothing(site: Any, backend: str) -> None:
    """On the home host and from another one (``backend == "http"``: the agent renders it, POST /v1/batch-jobs/preview)
    alike: the script and command line of the id the BatchJob would get, nothing created or written."""
    out = ok("queue", "submit", "-n", "1", "-t", "7", "-j", "serial", "--tag", "exp=a b", "--dry-run").stdout
    data = json.loads(ok("queue", "submit", "-n", "1", "-t", "7", "--dry-run", "--json").stdout)
    new_id = data["batch_job_id"]
    lines = out.splitlines()
    assert lines[0] == f"# Dry run: nothing was submitted. BatchJob {new_id} at site test-site would be submitted as:"
    assert lines[1] == f"# bash {site.path / 'qsubmit' / f'qlaunch{new_id}.sh'}"
    assert f"launcher --batch-job-id {new_id} -j serial -t 7 --tag 'exp=a b'" in out
    assert BatchJob.objects.count() == 0 and not list((site.path / "qsubmit").glob("*.sh"))
    assert data["command"] == ["bash", str(site.path / "qsubmit" / f"qlaunch{new_id}.sh")] and data["script"].startswith("#!/bin/bash")
    assert json.loads(ok("queue", "submit", "-n", "1", "-t", "7", "--json").stdout)["id"] == new_id  # the id it said
    assert "allows at most 1 nodes" in fails("queue", "submit", "-n", "2", "-t", "5", "--dry-run", code=2)


def test_dry_run_shows_the_real_schedulers_command_line(site: Any, backend: str) -> None:
    settings = site.path / "settings.yml"
    text = settings.read_text().replace("type: local ", "type: slurm ").replace("local: {max_nodes: 1", "debug: {max_nodes: 8")
    settings.write_text(text.replace("allowed_projects: [local]", "allowed_projects: [MyProj]"))
    out = ok("queue", "submit", "-n", "4", "-t", "30", "-q", "debug", "-A", "MyProj", "--dry-run").stdout.splitlines()
    assert out[1].startswith("# sbatch --parsable -o ") and "-A MyProj -p debug -N 4 -t 30" in out[1]
    assert BatchJob.objects.count() == 0


def test_show_prints_the_submitted_script(site: Any) -> None:
    from balsam.services.scheduler import SchedulerService
    from balsam.settings import load_settings
    from balsam.site.submission import scheduler_for

    bid = str(json.loads(ok("queue", "submit", "-n", "1", "-t", "5", "--json").stdout)["id"])
    before = ok("queue", "show", bid).stdout
    assert before.startswith(f"# BatchJob {bid} (pending_submission) is not submitted yet; it would be submitted as:")
    sched = load_settings(site.path / "settings.yml").scheduler
    service = SchedulerService(site, sched, scheduler_for(site.layout, sched))
    service.run_cycle()  # the agent's submission: renders qsubmit/qlaunch1.sh and starts it
    try:
        out = ok("queue", "show", bid).stdout
        script = site.path / "qsubmit" / f"qlaunch{bid}.sh"
        assert out.splitlines()[0].startswith(f"# BatchJob {bid} (") and f"was submitted with {script}:" in out
        assert out.split("\n", 1)[1] == script.read_text()
        assert json.loads(ok("queue", "show", bid, "--json").stdout)["script"] == script.read_text()
        assert "no BatchJob 9" in fails("queue", "show", "9", code=1)
    finally:
        BatchJob.objects.get(id=int(bid)).delete()
        for _ in range(100):
            service.run_cycle()
            if BatchJob.objects.count() == 0:
                break


def test_submit_says_when_no_agent_will_pick_it_up(site: Any, backend: str) -> None:
    """A first BatchJob with the agent stopped sat in pending_submission with nothing saying why."""
    result = ok("queue", "submit", "-n", "1", "-t", "5")
    if backend == "local":
        assert "Note: the site agent of test-site is not running, so it waits in pending_submission" in result.stderr
        assert "balsam site start --site test-site" in result.stderr
    else:  # reached through the running agent's API
        assert "Note:" not in result.stderr
    assert "Note:" not in ok("queue", "submit", "-n", "1", "-t", "5", "--json").stderr  # scripts read stdout; stay quiet


def test_the_presets_optional_params_are_defaults_a_submission_can_override(tmp_path: Any) -> None:
    """A Polaris site's BatchJob went to qsub without the '-l filesystems=home:eagle' its settings.yml names (PBS
    there refuses a job that names none): optional_batch_job_params were only allowed names, not defaults as in 0.7."""
    ok("site", "init", str(tmp_path / "pol"), "--preset", "polaris", "-n", "pol")
    preview = json.loads(ok("queue", "submit", "-n", "2", "-t", "30", "-q", "debug", "-A", "P", "--dry-run", "--json",
                            "--site", "pol").stdout)
    assert "#PBS -l filesystems=home:eagle\n" in preview["script"], preview["script"]
    out = ok("queue", "submit", "-n", "2", "-t", "30", "-q", "debug", "-A", "P", "-x", "filesystems=home:grand", "--dry-run",
             "--site", "pol").stdout
    assert "#PBS -l filesystems=home:grand\n" in out and "eagle" not in out
    data = json.loads(ok("queue", "submit", "-n", "2", "-t", "30", "-q", "debug", "-A", "P", "--json", "--site", "pol").stdout)
    assert data["optional_params"] == {}  # the default is the site's, applied when the script is rendered
    ok("site", "init", str(tmp_path / "old"), "--preset", "polaris", "-n", "old")
    settings = tmp_path / "old" / "settings.yml"  # a Balsam 0.7 site's switch of its own job template's
    settings.write_text(settings.read_text().replace("{filesystems: \"home:eagle\"}", "{mig_count: \"0\"}"))
    argv = json.loads(ok("queue", "submit", "-n", "2", "-t", "30", "-q", "debug", "-A", "P", "--dry-run", "--json",
                         "--site", "old").stdout)["command"]
    assert not any("mig_count" in a for a in argv), argv  # qsub refuses a resource it does not know
    ok("queue", "submit", "-n", "2", "-t", "30", "-q", "debug-scaling", "-A", "P", "-x", "filesystems=home:grand", "--site", "pol")
    assert "  optional_params: {'filesystems': 'home:grand'}\n" in ok("queue", "ls", "-v", "--site", "pol").stdout
